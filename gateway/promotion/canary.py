"""The canary's config, the watched candidate backend, and the config edit
that makes a promotion last.

The canary is the running config plus one backend, `<backend>.v<version>`
(the serving backend's settings, the candidate's files), on the model's route
as a weighted variant with `canary_weight` of the traffic; the route's other
backends share the rest in their proportions (a fallback route's backends
after the first get a negligible weight: they stay fallbacks). It is applied
like a reload, and the candidate's attempt on the route is wrapped in a
`WatchedBackend`: each answer's latency and failure go to the `CanaryWatch`,
and the serving backend answers the same request in the background so the
two answers can be compared (the canary's shadow comparison, with the
candidate's agreement rule).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gateway.config.loader import LoadedConfig, parse_config
from gateway.config.schema import Path_
from gateway.core.errors import BackendFailed, DeadlineExceeded, GatewayError, Overloaded
from gateway.core.signature import TensorSpec
from gateway.promotion.candidate import Plan
from gateway.promotion.gate import CanaryWatch
from gateway.promotion.golden import disagreements
from gateway.routing.router import Attempt
from gateway.runtime import Runtime

log = logging.getLogger("gateway.promotion")

# A fallback route's backends after the first, in the weighted canary route.
_FALLBACK_WEIGHT = 1e-9
# Failures the candidate is blamed for (invalid input would fail on any version).
_CANDIDATE_FAILURES = (BackendFailed, Overloaded, DeadlineExceeded)
# Values written without quotes when the original was (paths, versions).
_PLAIN = re.compile(r"[A-Za-z0-9_./-]+")


def canary_backend_name(loaded: LoadedConfig, plan: Plan) -> str:
    base = f"{plan.backends[0]}.v{plan.version}"
    name, n = base, 1
    while name in loaded.config.backends:
        n += 1
        name = f"{base}-{n}"
    return name


def canary_config(loaded: LoadedConfig, plan: Plan, weight: float, canary: str) -> LoadedConfig:
    """The running config with the candidate as a weighted variant of the route,
    validated like any config (`${VAR}` references expand as in the file)."""
    raw: dict[str, Any] = yaml.safe_load(loaded.text)
    serving = plan.backends[0]
    backend = dict(raw["backends"][serving])
    backend["path"] = plan.rewrites[("backends", serving, "path")]
    tokenizer_path = plan.rewrites.get(("backends", serving, "tokenizer", "path"))
    if tokenizer_path is not None:
        backend["tokenizer"] = {**backend["tokenizer"], "path": tokenizer_path}
    raw["backends"][canary] = backend
    model = raw["models"][plan.model]
    route = dict(model["route"])
    entries = route["backends"]
    if route.get("strategy", "fallback") == "weighted":
        total = sum(float(e["weight"]) for e in entries)
        variants = [
            {"name": e["name"], "weight": float(e["weight"]) * (1.0 - weight) / total}
            for e in entries
        ]
    else:
        variants = [
            {"name": name, "weight": (1.0 - weight) if i == 0 else _FALLBACK_WEIGHT}
            for i, name in enumerate(entries)
        ]
    variants.insert(1, {"name": canary, "weight": weight})
    route["strategy"] = "weighted"
    route["backends"] = variants
    model["route"] = route
    text = (
        f"# canary of {plan.model} version {plan.version} (the promotion gate); "
        f"the file is unchanged\n" + yaml.safe_dump(raw, sort_keys=False)
    )
    return parse_config(text, source=loaded.source)


class WatchedBackend:
    """The candidate on the canary route: answers as the candidate does, and
    reports each answer to the watch."""

    def __init__(
        self,
        candidate: Any,
        reference: Attempt,
        watch: CanaryWatch,
        output: TensorSpec,
        rule: str,
        min_cosine: float,
        on_sample: Callable[[], None],
    ) -> None:
        self.candidate = candidate
        self.name: str = candidate.name
        self._reference = reference
        self._watch = watch
        self._output = output.name
        self._rule = rule
        self._min_cosine = min_cosine
        self._on_sample = on_sample
        self._comparisons: set[asyncio.Task[None]] = set()
        self.closed = False  # the canary ended: answers are no longer counted

    def io_specs(self) -> Any:
        return self.candidate.io_specs()

    def ready(self) -> bool:
        return bool(self.candidate.ready())

    def busy(self) -> bool:
        return bool(self.candidate.busy())

    async def close(self) -> None:
        await self.candidate.close()

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            answer: dict[str, np.ndarray] = await self.candidate.infer(inputs, outputs, deadline)
        except _CANDIDATE_FAILURES:
            self._record(time.perf_counter() - started, failed=True)
            raise
        latency_s = time.perf_counter() - started
        if self._output in answer and not self.closed:
            task = asyncio.get_running_loop().create_task(
                self._compare(inputs, outputs, answer[self._output], latency_s)
            )
            self._comparisons.add(task)
            task.add_done_callback(self._comparisons.discard)
        else:
            self._record(latency_s, failed=False)
        return answer

    async def _compare(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        candidate: np.ndarray,
        latency_s: float,
    ) -> None:
        """The serving version's answer to the same request, compared; the sample
        is recorded once it is known (or once the serving version failed)."""
        rows = disagreeing = 0
        try:
            served = await self._reference.backend.infer(
                inputs, outputs, time.monotonic() + self._reference.timeout_s
            )
            rows, disagreeing = disagreements(
                self._rule, np.asarray(served[self._output]), candidate, self._min_cosine
            )
        except GatewayError as exc:
            log.info("canary: the serving version failed on a compared request: %s", exc.message)
        finally:
            self._record(latency_s, failed=False, rows=rows, disagreeing=disagreeing)

    def _record(self, latency_s: float, failed: bool, rows: int = 0, disagreeing: int = 0) -> None:
        if self.closed:
            return
        self._watch.record(latency_s, failed, rows, disagreeing)
        self._on_sample()


def watch_candidate(
    runtime: Runtime,
    plan: Plan,
    canary: str,
    watch: CanaryWatch,
    on_sample: Callable[[], None],
) -> WatchedBackend:
    """Wrap the candidate's attempt on the model's route of the freshly built
    canary runtime (before it serves: nothing else holds the route yet)."""
    entry = runtime.service.models[plan.model]
    route = entry.route
    assert entry.signature is not None and plan.spec is not None
    reference = next(a for a in route.attempts if a.backend.name == plan.backends[0])
    watched: WatchedBackend | None = None
    attempts = []
    for attempt in route.attempts:
        if attempt.backend.name == canary:
            watched = WatchedBackend(
                attempt.backend,
                reference,
                watch,
                entry.signature.outputs[0],
                plan.spec.agreement,
                plan.spec.min_cosine,
                on_sample,
            )
            attempt = Attempt(watched, attempt.timeout_s, attempt.health)
        attempts.append(attempt)
    assert watched is not None
    route.attempts = tuple(attempts)
    return watched


def promoted_text(text: str, plan: Plan) -> str:
    """The config file with the candidate as the model's version: each value the
    plan rewrites is replaced where it is written, so comments, order and the
    rest of the file stay as they are."""
    edits: dict[Path_, str] = {**plan.rewrites, ("models", plan.model, "version"): plan.version}
    spans: list[tuple[int, int, str]] = []
    root = yaml.compose(text)
    for path, value in edits.items():
        node = _node_at(root, path)
        written = value if _PLAIN.fullmatch(value) else json.dumps(value)
        if node is None:
            if path[-1] != "version":
                raise ValueError(f"{'.'.join(str(p) for p in path)} is not in the file")
            spans.append(_insert_key(text, root, path, written))
            continue
        if not isinstance(node, yaml.ScalarNode):
            raise ValueError(f"{'.'.join(str(p) for p in path)} is not a plain value")
        if node.style not in (None, ""):
            written = json.dumps(value)  # it was quoted: a JSON string is a YAML one
        spans.append((node.start_mark.index, node.end_mark.index, written))
    for start, end, replacement in sorted(spans, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _node_at(root: yaml.Node | None, path: Path_) -> yaml.Node | None:
    node = root
    for part in path:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((v for k, v in node.value if k.value == part), None)
        if node is None:
            return None
    return node


def _insert_key(text: str, root: yaml.Node | None, path: Path_, value: str) -> tuple[int, int, str]:
    """`version: "<v>"` as the first key of a block mapping that has none."""
    parent = _node_at(root, path[:-1])
    if not isinstance(parent, yaml.MappingNode) or parent.flow_style or not parent.value:
        raise ValueError(f"cannot add {path[-1]} to {'.'.join(str(p) for p in path[:-1])}")
    first_key = parent.value[0][0]
    line_start = text.rfind("\n", 0, first_key.start_mark.index) + 1
    indent = " " * first_key.start_mark.column
    return line_start, line_start, f"{indent}{path[-1]}: {value}\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace the file in one rename, so a reader sees the old or the new text."""
    scratch = path.with_name(f".{path.name}.promotion")
    scratch.write_text(text, encoding="utf-8")
    scratch.replace(path)
