"""The import contract of docs/architecture.md#layers: packages import
downward only, and no two packages import each other, directly or through
others. Every import counts: at module level, inside functions and under
TYPE_CHECKING (a type-only import still ties the packages together).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Top to bottom. A module may import from its own layer's package and from any
# layer below. The first layer assembles everything; its modules may import
# each other. In the other layers, packages that share a layer are independent.
LAYERS: list[list[str]] = [
    [
        "gateway.__main__",
        "gateway.cli",
        "gateway.server",
        "gateway.uvicorn_stop",
        "gateway.app",
        "gateway.reload",
        "gateway.promotion",  # the promotion gate drives reloads
        "gateway.runtime",
        "gateway.runtime_access",
        "gateway.runtime_shared",
        "gateway.config.loader",  # the whole document: knows every backend type
    ],
    ["gateway.api"],  # transports
    ["gateway.pipeline"],  # one entry per request kind
    ["gateway.policies"],  # request/response policies the pipeline chains
    ["gateway.routing"],  # plans, breakers, cache, rate limits
    ["gateway.admission"],  # queues, slots, batching
    ["gateway.backends"],  # I/O to models
    ["gateway.redis_client"],
    ["gateway.observe"],  # metrics, SLOs, traces, audit, logs
    ["gateway.core", "gateway.config", "gateway.gcfreeze", "gateway.fd_budget", "gateway"],
]


def _component(module: str) -> tuple[int, str]:
    """(layer index, the layer entry it belongs to) by longest prefix."""
    best: tuple[int, str] | None = None
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (
                best is None or len(entry) > len(best[1])
            ):
                best = (index, entry)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "proto" in parts:  # generated protobuf code
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported gateway module, line) of every import in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gateway":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "gateway":
                continue
            for alias in node.names:
                # `from gateway.observe import metrics` imports a module;
                # `from gateway.core.errors import X` a name of one.
                candidate = f"{base}.{alias.name}"
                is_module = (ROOT / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                    ROOT / Path(*candidate.split(".")) / "__init__.py"
                ).exists()
                yield (candidate if is_module else base), node.lineno


def _edges() -> list[tuple[str, str, str, int]]:
    """(importing component, imported component, importing module, line)."""
    edges = []
    for module, path in _modules():
        for imported, line in _imports(module, path):
            edges.append((_component(module)[1], _component(imported)[1], module, line))
    return edges


def _against_layers(module: str, imported: str) -> bool:
    layer, entry = _component(module)
    their_layer, their_entry = _component(imported)
    return their_layer < layer or (their_layer == layer and their_entry != entry and layer > 0)


def test_every_import_goes_down_the_layers() -> None:
    upward = [
        f"{module} (line {line}) imports {imported}"
        for module, path in _modules()
        for imported, line in _imports(module, path)
        if _against_layers(module, imported)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


# Transports reach models only through the pipeline: no protocol skips
# admission, policies, limits or the cache by calling below it.
_BELOW_THE_PIPELINE = (
    "gateway.policies",
    "gateway.routing",
    "gateway.admission",
    "gateway.backends",
)


def test_transports_call_only_the_pipeline() -> None:
    skipping = [
        f"{module} (line {line}) imports {imported}"
        for module, path in _modules()
        if module.startswith("gateway.api.")
        for imported, line in _imports(module, path)
        if _component(imported)[1] in _BELOW_THE_PIPELINE
    ]
    assert not skipping, "transports calling below the pipeline:\n" + "\n".join(skipping)


def test_no_package_cycles() -> None:
    """No two components reach each other through imports (outside the
    assembling layer, whose modules import each other by design)."""
    graph: dict[str, set[str]] = {}
    for source, target, _, _ in _edges():
        if source != target and _component(source)[0] > 0:
            graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(graph.get(node, ()))
        return False

    cycles = sorted({f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a)})
    assert not cycles, "packages that import each other:\n" + "\n".join(cycles)


def test_the_contract_can_fail() -> None:
    """What the checks above would refuse, they do refuse."""
    assert _against_layers("gateway.routing.cache", "gateway.pipeline.service")
    assert _against_layers("gateway.backends.vendors.base", "gateway.admission.slots")
    assert _against_layers("gateway.core.errors", "gateway.observe.metrics")
    assert _against_layers("gateway.config.tls", "gateway.config.loader")
    assert _against_layers("gateway.core.types", "gateway.config.schema")  # same layer, independent
    assert not _against_layers("gateway.runtime", "gateway.app")  # the assembling layer
    assert not _against_layers("gateway.api.v2_http", "gateway.pipeline.service")
    path = ROOT / "gateway" / "api" / "v2_http.py"
    assert ("gateway.pipeline.service", 1) in [
        (imported, 1) for imported, _ in _imports("gateway.api.v2_http", path)
    ]
