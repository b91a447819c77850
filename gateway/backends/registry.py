"""The backend types: one registration per type, read by the config loader
(its YAML schema), the runtime (building, admission, which model kinds it
may serve) and the response cache (what an answer depends on).

A backend type is one module that defines its config model (a subclass of
`config.schema.BackendCommon` with `type: Literal["<name>"]`), its backend
class, and ends with `register(BackendType(...))`; `_BUILTIN` names the
modules of the types that ship with the gateway. Types from other packages
register through the `gateway.backends` entry-point group (the entry point
names the module). docs/architecture.md#adding-a-backend-type walks through it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from gateway.config.schema import BackendCommon

# The model kinds (`models.<name>.kind`, docs/configuration.md).
Kind = Literal["tensor", "chat", "embeddings"]

_BUILTIN = (
    "gateway.backends.onnx",
    "gateway.backends.vendors.openai",
    "gateway.backends.vendors.anthropic",
)
_ENTRY_POINT_GROUP = "gateway.backends"


@dataclass(frozen=True)
class BackendType:
    """What the gateway needs to know about one `type:` of backend."""

    name: str  # the `type:` value
    config: type[BackendCommon]  # its config model
    # (backend name, validated config, path resolver relative to the config file)
    # -> the backend object. Raises with a clear message when it cannot load.
    build: Callable[[str, Any, Callable[[str], Path]], Any]
    # The model kinds it serves itself. A "tensor" type also serves "embeddings"
    # models through the runtime's text -> vectors adapter (backends/tensor_embedder.py).
    kinds: frozenset[Kind]
    # The config fields its answers depend on (a model file, a vendor model, a
    # URL...): part of every cache key of the models it serves, so that a changed
    # field never serves an old answer. Required: forgetting one collides keys.
    cache_identity: tuple[str, ...]
    # How admission (gateway/admission/) fronts it: "queue" for local executions
    # (bounded queue, execution slots, deadlines, dynamic batching); "slots" for
    # I/O calls (a slot held for a whole call or stream, a bounded wait).
    admission: Literal["queue", "slots"]
    # The model a remote API runs, for the audit record (None: a local model).
    served_model: Callable[[Any], str | None] = lambda config: None

    def __post_init__(self) -> None:
        fields = self.config.model_fields
        missing = [f for f in self.cache_identity if f not in fields]
        if missing:
            raise TypeError(f"backend type {self.name!r}: cache_identity names no field {missing}")
        declared = fields["type"].annotation
        if getattr(declared, "__args__", None) != (self.name,):
            raise TypeError(
                f"backend type {self.name!r}: its config model needs type: Literal[{self.name!r}]"
            )


_TYPES: dict[str, BackendType] = {}
_loaded = False


def register(backend_type: BackendType) -> BackendType:
    """Called once by the module that defines the type."""
    existing = _TYPES.get(backend_type.name)
    if existing is not None and existing is not backend_type:
        raise ValueError(f"backend type {backend_type.name!r} is registered twice")
    _TYPES[backend_type.name] = backend_type
    return backend_type


def backend_types() -> dict[str, BackendType]:
    """Every registered type by name: the built-in ones and those of installed plugins."""
    global _loaded
    if not _loaded:
        for module in _BUILTIN:
            importlib.import_module(module)
        for entry in entry_points(group=_ENTRY_POINT_GROUP):
            importlib.import_module(entry.value.partition(":")[0])
        _loaded = True
    return _TYPES


def backend_type(name: str) -> BackendType:
    types = backend_types()
    found = types.get(name)
    if found is None:
        raise KeyError(f"no backend type {name!r} (known: {', '.join(sorted(types))})")
    return found
