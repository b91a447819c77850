"""The backend types: one registration per type, read by the config loader
(its YAML schema), the runtime (building, admission, which model kinds it
may serve) and the response cache (what an answer depends on).

A backend type is one module that defines its config model (a subclass of
`config.schema.BackendCommon` with `type: Literal["<name>"]`), its backend
class, and ends with `register(BackendType(...))`; the registry's `builtin`
names the modules of the types that ship with the gateway. Types from other
packages register through the `gateway.backends` entry-point group (the entry
point names the module). docs/architecture.md#adding-a-backend-type walks through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config.schema import BackendCommon
from gateway.core.registry import TypeRegistry, check_type_literal

# The model kinds (`models.<name>.kind`, docs/configuration.md).
Kind = Literal["tensor", "chat", "embeddings"]


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
        missing = [f for f in self.cache_identity if f not in self.config.model_fields]
        if missing:
            raise TypeError(f"backend type {self.name!r}: cache_identity names no field {missing}")
        check_type_literal("backend type", self.name, self.config)


_REGISTRY: TypeRegistry[BackendType] = TypeRegistry(
    "backend type",
    builtin=(
        "gateway.backends.onnx",
        "gateway.backends.torch_backend",
        "gateway.backends.triton",
        "gateway.backends.vendors.openai",
        "gateway.backends.vendors.anthropic",
        "gateway.backends.vendors.sagemaker",
    ),
    entry_point_group="gateway.backends",
)
register = _REGISTRY.register
backend_types = _REGISTRY.all
backend_type = _REGISTRY.get
