"""The documentation stays true to the code: every metric the gateway registers
is in docs/contracts.md#metrics, every config key in docs/configuration.md,
every relative link and cited anchor resolves, and nothing cites a document
outside the repository.

In-process and offline: it imports the gateway's modules and reads files.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import shutil
import subprocess
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel

import gateway
from gateway.config.loader import document_model
from gateway.observe import metrics

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONTRACTS = DOCS / "contracts.md"
CONFIGURATION = DOCS / "configuration.md"
MARKDOWN = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

# Linked before they exist because someone else is writing them; a link to
# one of these is accepted while the file is missing. Remove an entry once
# its file is in the repository.
PENDING_PAGES: set[Path] = set()

# The design document that used to hold the contracts lived outside the
# repository; nothing may cite it. (Spelt in two parts so that this file
# does not cite it either.)
OUTSIDE_DOC = "design" + ".md"

METRIC_CONSTRUCTORS = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}


# -- markdown helpers ------------------------------------------------------------------


def _headings(text: str) -> Iterator[tuple[int, str]]:
    """(level, title) of each ATX heading outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match and not fenced:
            yield len(match.group(1)), match.group(2)


def _slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for _, title in _headings(path.read_text(encoding="utf-8")):
        slug = _slug(title)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of each section, a section ending at the next heading."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            sections.append((heading.group(1), []))
        else:
            sections[-1][1].append(line)
    return [(title, "\n".join(body)) for title, body in sections]


def _backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", text))


# -- metrics ---------------------------------------------------------------------------


def _import_gateway() -> list[types.ModuleType]:
    """Every module of the package, so that every metric is defined and registered
    (metrics live in observe/metrics.py, observe/slo.py, routing/ratelimit.py,
    redis_client.py...). `__main__` is left out: importing it runs the CLI."""
    modules = [gateway]
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def _exposed_name(name: str, kind: str) -> str:
    # prometheus-client strips `_total` from a counter's name (and collect()
    # reports it so); the exposition, and everyone reading it, sees `_total`.
    return name + "_total" if kind == "counter" else name


def _registered_metrics() -> set[str]:
    _import_gateway()
    return {_exposed_name(m.name, m.type) for m in metrics.REGISTRY.collect()}


def _defined_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (type, label names) of every metric object held by a gateway module."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for module in _import_gateway():
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                kind = value._type
                found[_exposed_name(value._name, kind)] = (kind, tuple(value._labelnames))
    return found


def _metric_names_in_source() -> set[str]:
    """The first argument of every Counter(...), Gauge(...), Histogram(...) call in
    gateway/: independent of GATEWAY_METRICS, which turns some of them into no-ops."""
    names: set[str] = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            first = node.args[0]
            if called in METRIC_CONSTRUCTORS and isinstance(first, ast.Constant):
                name = str(first.value)
                if called == "Counter" and not name.endswith("_total"):
                    name += "_total"
                names.add(name)
    return names


def _metrics_section() -> str:
    for title, body in _sections(CONTRACTS.read_text(encoding="utf-8")):
        if _slug(title) == "metrics":
            return body
    raise AssertionError("docs/contracts.md has no '## Metrics' section")


def test_every_registered_metric_is_in_the_contract() -> None:
    if not metrics.METRICS_ON:
        pytest.skip(
            f"{metrics.METRICS_ENV}=off leaves observe/metrics.py's metrics unregistered; "
            "test_every_metric_in_the_source_is_in_the_contract still checks them"
        )
    registered = _registered_metrics()
    assert "gateway_requests_total" in registered  # the walk found the registry's metrics
    documented = _backticked(_metrics_section())
    missing = sorted(registered - documented)
    assert not missing, f"metrics missing from docs/contracts.md#metrics: {missing}"


def test_every_metric_in_the_source_is_in_the_contract() -> None:
    in_source = _metric_names_in_source()
    assert "gateway_redis_up" in in_source
    documented = _backticked(_metrics_section())
    missing = sorted(in_source - documented)
    assert not missing, f"metrics missing from docs/contracts.md#metrics: {missing}"


def test_the_contract_gives_each_metric_its_type_and_labels() -> None:
    rows = {}
    for line in _metrics_section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`gateway_\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    wrong = []
    for name, (kind, labels) in sorted(_defined_metrics().items()):
        cells = rows.get(name)
        if cells is None:
            wrong.append(f"{name}: no table row")
            continue
        if cells[1] != kind:
            wrong.append(f"{name}: type is {kind}, the row says {cells[1]!r}")
        documented = _backticked(cells[2])
        if set(labels) != documented:
            wrong.append(f"{name}: labels are {list(labels)}, the row says {sorted(documented)}")
    assert not wrong, "docs/contracts.md#metrics is out of date:\n" + "\n".join(wrong)


# -- config keys -----------------------------------------------------------------------


def _models_in(annotation: object) -> Iterator[tuple[str, type[BaseModel]]]:
    """(path suffix, model) of each pydantic model inside a field's type: `[]` for
    a list item, `.<name>` for a mapping value, through unions and Annotated."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        # Types that tests register (tests/backends/test_registry.py) ship with nothing.
        if annotation.__module__.partition(".")[0] != "tests":
            yield "", annotation
    elif origin is typing.Annotated:
        yield from _models_in(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)
    elif origin in (list, tuple, set, frozenset):
        for arg in typing.get_args(annotation):
            for suffix, model in _models_in(arg):
                yield "[]" + suffix, model
    elif origin is dict:
        for suffix, model in _models_in(typing.get_args(annotation)[1]):
            yield ".<name>" + suffix, model


def _config_keys(model: type[BaseModel] | None = None, path: str = "") -> Iterator[tuple[str, str]]:
    """(path of the section, key) of every key of the config, every backend type
    included: ("", "server"), ("server.grpc", "engine"), ("tenants[].rate_limit",
    "requests_per_minute"), ("backends.<name>", "path"), ..."""
    if model is None:
        model = document_model()  # every registered backend type's keys too
    for key, field in model.model_fields.items():
        yield path, key
        for suffix, inner in _models_in(field.annotation):
            yield from _config_keys(inner, f"{path}.{key}{suffix}" if path else key + suffix)


def _documented(path: str, key: str, sections: dict[str, set[str]]) -> bool:
    """Whether `key` of the section at `path` is documented: as `key` in a section
    headed by `path` in backticks, or as `rest.key` in a section headed by a
    prefix of `path` (`rate_limit.requests_per_minute` under `tenants[]`)."""
    if not path:  # the top-level keys: anywhere
        return any(key in names for names in sections.values())
    for heading, names in sections.items():
        if heading == path and key in names:
            return True
        for sep in (".", "["):
            if path.startswith(heading + sep):
                rest = path[len(heading) :].lstrip(".")
                if f"{rest}.{key}" in names:
                    return True
    return False


def _configuration_sections() -> dict[str, set[str]]:
    """The backticked words of each section, by the first backticked word of its
    heading (`server.grpc`, `backends.<name>`...); sections sharing it are merged."""
    sections: dict[str, set[str]] = {}
    for title, body in _sections(CONFIGURATION.read_text(encoding="utf-8")):
        named = re.search(r"`([^`]+)`", title)
        heading = named.group(1) if named else ""
        sections.setdefault(heading, set()).update(_backticked(title + "\n" + body))
    return sections


def test_the_key_walk_sees_every_backend_type() -> None:
    keys = set(_config_keys())
    for expected in [
        ("server.grpc", "engine"),
        ("tenants[].rate_limit", "tokens_per_minute"),
        ("backends.<name>", "tokenizer"),  # onnx
        ("backends.<name>.batching", "preferred_batch_sizes"),
        ("backends.<name>", "auth_header"),  # openai
        ("backends.<name>", "anthropic_version"),  # anthropic
        ("backends.<name>.circuit_breaker", "cooldown_ms"),
        ("models.<name>.signature.inputs[]", "datatype"),
        ("models.<name>.route.backends[]", "weight"),
        ("models.<name>.route.shadow", "atol"),
    ]:
        assert expected in keys


def test_every_config_key_is_in_the_configuration_page() -> None:
    sections = _configuration_sections()
    missing = sorted(
        f"{path}.{key}" if path else key
        for path, key in set(_config_keys())
        if not _documented(path, key, sections)
    )
    assert not missing, (
        "config keys missing from docs/configuration.md (a key goes in backticks in "
        f"the section whose heading names its path): {missing}"
    )


# -- links and citations -----------------------------------------------------------------


def _links(path: Path) -> Iterator[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    yield from re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in MARKDOWN:
        for target in _links(page):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            file = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(ROOT)}: {target}"
            if not file.exists():
                if file not in PENDING_PAGES:
                    broken.append(f"{where} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{where} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def _repository_files() -> list[Path]:
    """Files git tracks, and new ones it does not ignore."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        [git, "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [ROOT / name for name in sorted(set(listed.split("\0"))) if name]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # deleted in the work tree, or binary
        return None


def test_nothing_cites_a_document_outside_the_repository() -> None:
    citing = [
        str(path.relative_to(ROOT))
        for path in _repository_files()
        if OUTSIDE_DOC in (_text(path) or "")
    ]
    assert not citing, f"cite docs/ (or README.md) instead of {OUTSIDE_DOC}: {citing}"


def test_cited_docs_sections_exist() -> None:
    """Code and config comments cite `docs/<page>.md#<section>`: both must exist."""
    broken = []
    for path in _repository_files():
        text = _text(path)
        if not text or path.suffix == ".md":  # markdown links are checked above
            continue
        for page, anchor in re.findall(r"\bdocs/([\w-]+\.md)(?:#([\w-]+))?", text):
            target = DOCS / page
            where = f"{path.relative_to(ROOT)}: docs/{page}" + (f"#{anchor}" if anchor else "")
            if not target.exists():
                if target not in PENDING_PAGES:
                    broken.append(f"{where} (no such file)")
            elif anchor and anchor not in _anchors(target):
                broken.append(f"{where} (no such heading)")
    assert not broken, "broken citations:\n" + "\n".join(broken)
