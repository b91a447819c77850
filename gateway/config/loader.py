"""Load the YAML config once into typed objects, or explain every problem.

Errors name the YAML path and line of what is wrong
(`models.digits.route.backends[1] (line 31): unknown backend 'x'`), so
`gateway check` output can be acted on without reading the schema.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union

import yaml
from pydantic import Field, ValidationError, create_model

from gateway.backends.registry import backend_types
from gateway.config.schema import NAME_PATTERN, GatewayConfig, ModelConfig, Path_
from gateway.config.tls import check_tls
from gateway.policies.registry import policy_types

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(NAME_PATTERN)


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists each one with its YAML path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def report(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config with where it came from (relative paths resolve against it)."""

    config: GatewayConfig
    source: Path | None
    sha256: str
    lines: dict[Path_, int] = field(default_factory=dict, repr=False)
    # The file as written: ${VAR} references unexpanded, so showing it reveals no secret.
    text: str = field(default="", repr=False)

    def where(self, path: Path_) -> str:
        """A YAML path for messages, with its line when known."""
        line = _nearest_line(self.lines, path)
        return format_path(path) + (f" (line {line})" if line else "")

    def resolve_path(self, path: str) -> Path:
        """A file named in the config: absolute, or relative to the working directory,
        the config's directory, or that directory's parent (the project root for
        `config/gateway.yaml`), whichever exists first."""
        candidate = Path(path)
        if candidate.is_absolute():
            return candidate
        bases = [Path.cwd()]
        if self.source is not None:
            bases += [self.source.parent, self.source.parent.parent]
        for base in bases:
            if (base / candidate).exists():
                return (base / candidate).resolve()
        return (bases[0] / candidate).resolve()


def format_path(path: Path_) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _one_of(configs: tuple[type[Any], ...]) -> Any:
    """The config models of a registry, told apart by their `type` key (so
    errors speak of the named type's keys only)."""
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007 - built at run time


def document_model() -> type[GatewayConfig]:
    """The whole document's model: GatewayConfig with each entry of `backends`
    and of a model's `policies` validated as the registered type it names
    (built again only when a type was registered since)."""
    return _document_model(
        tuple(t.config for t in backend_types().values()),
        tuple(t.config for t in policy_types().values()),
    )


@functools.cache
def _document_model(
    backend_configs: tuple[type[Any], ...], policy_configs: tuple[type[Any], ...]
) -> type[GatewayConfig]:
    policies: Any = _one_of(policy_configs)
    model = create_model(
        "ModelConfig", __base__=ModelConfig, policies=(list[policies], Field(default_factory=list))
    )
    backends: Any = _one_of(backend_configs)
    return create_model(
        "GatewayConfig",
        __base__=GatewayConfig,
        backends=(dict[str, backends], Field(min_length=1)),
        models=(dict[str, model], Field(min_length=1)),
    )


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> LoadedConfig:
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(source), [f"cannot read config: {exc.strerror or exc}"]) from None
    return parse_config(text, source=source, env=env)


def parse_config(
    text: str, *, source: Path | None = None, env: dict[str, str] | None = None
) -> LoadedConfig:
    name = str(source) if source else "<config>"
    try:
        raw = yaml.safe_load(text)
        lines = _line_index(yaml.compose(text))
    except yaml.YAMLError as exc:
        raise ConfigError(name, [f"invalid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(name, ["the config must be a YAML mapping at the top level"])

    problems: list[str] = []

    def where(path: Path_) -> str:
        line = _nearest_line(lines, path)
        return format_path(path) + (f" (line {line})" if line else "")

    expanded = _expand_env(raw, (), os.environ if env is None else env, problems, where)
    if problems:
        raise ConfigError(name, problems)
    try:
        config = document_model().model_validate(expanded)
    except ValidationError as exc:
        for error in exc.errors():
            path = _clean_loc(error["loc"], expanded)
            # A value that came from ${VAR} may be a secret: name the reference, not the value.
            written = _value_at(raw, path)
            from_env = isinstance(written, str) and "${" in written
            message = _message(error, show_value=not from_env)
            if from_env:
                message += f" (the value of {written})"
            problems.append(f"{where(path)}: {message}")
        raise ConfigError(name, problems) from None
    for path, message in _cross_check(config):
        problems.append(f"{where(path)}: {message}")
    if problems:
        raise ConfigError(name, problems)
    digest = hashlib.sha256(text.encode()).hexdigest()
    loaded = LoadedConfig(
        config=config,
        source=source.resolve() if source else None,
        sha256=digest,
        lines=lines,
        text=text,
    )
    # Files the config names that only the servers read: checked now, by key.
    problems = [
        f"{loaded.where(path)}: {message}"
        for path, message in check_tls(config.server.tls, loaded.resolve_path)
    ]
    if problems:
        raise ConfigError(name, problems)
    return loaded


def _expand_env(
    value: Any,
    path: Path_,
    env: Mapping[str, str],
    problems: list[str],
    where: Callable[[Path_], str],
) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, (*path, k), env, problems, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*path, i), env, problems, where) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        found = env.get(var)
        if found is not None and (found != "" or default is None):
            return found
        if default is not None:
            return default
        problems.append(
            f"{where(path)}: environment variable {var} is not set (and has no default)"
        )
        return ""

    return _ENV_REF.sub(substitute, value)


def _cross_check(config: GatewayConfig) -> list[tuple[Path_, str]]:
    found: list[tuple[Path_, str]] = []
    for section, names in (("backends", config.backends), ("models", config.models)):
        for key in names:
            if not _NAME.match(key):
                found.append(((section, key), "names may use letters, digits, '_', '.', '-'"))
    for model_name, model in config.models.items():
        route = model.route
        for i, backend in enumerate(route.backend_names()):
            if backend not in config.backends:
                found.append(
                    (
                        ("models", model_name, "route", "backends", i),
                        f"unknown backend '{backend}' (defined: {sorted(config.backends)})",
                    )
                )
        if route.strategy == "weighted" and any(isinstance(b, str) for b in route.backends):
            found.append(
                (
                    ("models", model_name, "route", "backends"),
                    "strategy 'weighted' needs entries of the form {name: ..., weight: ...}",
                )
            )
        if route.sticky and route.strategy != "weighted":
            found.append(
                (
                    ("models", model_name, "route", "sticky"),
                    "only a weighted route picks a variant to stick to",
                )
            )
        if route.hedge and len(route.backends) < 2:
            found.append(
                (
                    ("models", model_name, "route", "hedge"),
                    "hedging needs a second backend in the route",
                )
            )
        if route.shadow and route.shadow.backend not in config.backends:
            found.append(
                (
                    ("models", model_name, "route", "shadow", "backend"),
                    f"unknown backend '{route.shadow.backend}'",
                )
            )
    for i, tenant in enumerate(config.tenants):
        for j, model_name in enumerate(tenant.models or []):
            if model_name not in config.models:
                found.append((("tenants", i, "models", j), f"unknown model '{model_name}'"))
    if config.tenants and not config.server.admin_key_env:
        # Fail closed: a gateway that asks callers for keys must not leave reload,
        # roll-back and the kill switch open to anyone who reaches its port.
        found.append(
            (
                ("server", "admin_key_env"),
                "required when tenants are configured: name the environment variable "
                "that holds the admin key (the /admin endpoints need it)",
            )
        )
    return found


def _clean_loc(loc: tuple[Any, ...], data: Any) -> Path_:
    """Drop pydantic's union-member tags (`onnx`, `str`, `function-after[...]`) from a location."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and not _looks_like_tag(part):
            # A key that is missing or not allowed: still part of the path.
            path.append(part)
            node = None
    return tuple(path)


def _looks_like_tag(part: str) -> bool:
    return (
        part in backend_types()
        or part in policy_types()
        or part in {"str", "WeightedBackend"}
        or "[" in part
    )


def _key_of_another_type(loc: tuple[Any, ...]) -> str | None:
    """Why a key refused in a backend belongs to another backend type, if it does."""
    # pydantic's location of a key in a backend: ("backends", name, type tag, key)
    types = backend_types()
    if len(loc) != 4 or loc[0] != "backends" or loc[2] not in types:
        return None
    reason = types[loc[2]].config.keys_of_other_types.get(loc[3])
    return None if reason is None else f"{loc[2]} backends do not take it: {reason}"


def _value_at(data: Any, path: Path_) -> Any:
    for part in path:
        if isinstance(data, dict) and part in data:  # noqa: SIM114 - apart, mypy narrows `part` per branch
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _message(error: Mapping[str, Any], show_value: bool = True) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return _key_of_another_type(error["loc"]) or "unknown key (check the spelling)"
    if kind == "missing":
        return "required key is missing"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if show_value and "input" in error and kind not in ("model_type", "dict_type", "list_type"):
        value = error["input"]
        if not isinstance(value, (dict, list)):
            message += f" (got {value!r})"
    return message


def _line_index(node: yaml.Node | None) -> dict[Path_, int]:
    index: dict[Path_, int] = {}

    def walk(current: yaml.Node, path: Path_) -> None:
        index[path] = current.start_mark.line + 1
        if isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                child = (*path, key.value)
                index[child] = key.start_mark.line + 1
                walk(value, child)
                index[child] = key.start_mark.line + 1
        elif isinstance(current, yaml.SequenceNode):
            for i, item in enumerate(current.value):
                walk(item, (*path, i))

    if node is not None:
        walk(node, ())
    return index


def _nearest_line(index: dict[Path_, int], path: Path_) -> int | None:
    while path:
        if path in index:
            return index[path]
        path = path[:-1]
    return None
