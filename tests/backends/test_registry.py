"""A backend type is one registration: this module defines a whole type (a
config model, a class, `register(...)`) and the loader, the runtime, admission
and the cache key take it from there, with no other file changed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from gateway.admission.queue import QueuedBackend
from gateway.admission.slots import SlottedBackend
from gateway.backends.registry import BackendType, backend_type, register
from gateway.config.loader import ConfigError, parse_config
from gateway.config.schema import BackendCommon
from gateway.core.types import InferRequest, RequestContext
from gateway.runtime import Runtime, build_runtime
from tests.fakes import LocalBackend


class ScaleConfig(BackendCommon):
    type: Literal["test-scale"]
    factor: float = 2.0
    label: str = ""  # changes nothing in the answers


class ScaleBackend(LocalBackend):
    """y = factor * x."""

    def __init__(self, name: str, config: ScaleConfig) -> None:
        self.name = name
        self.factor = np.float32(config.factor)
        self.calls = 0

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"y": inputs["x"] * self.factor}


def _build(name: str, config: ScaleConfig, resolve_path: Callable[[str], Path]) -> ScaleBackend:
    return ScaleBackend(name, config)


register(
    BackendType(
        name="test-scale",
        config=ScaleConfig,
        build=_build,
        kinds=frozenset({"tensor"}),
        cache_identity=("type", "factor"),
        admission="queue",
    )
)

CONFIG = """
backends:
  scale: {{type: test-scale, factor: {factor}, label: {label}, max_concurrency: 1}}
models:
  m:
    kind: {kind}
    signature:
      inputs: [{{name: x, datatype: FP32, shape: [-1, 2]}}]
      outputs: [{{name: y, datatype: FP32, shape: [-1, 2]}}]
    route: {{backends: [scale]}}
"""


def _runtime(factor: float = 3.0, label: str = "a", kind: str = "tensor") -> Runtime:
    return build_runtime(parse_config(CONFIG.format(factor=factor, label=label, kind=kind)))


def test_a_registered_type_loads_builds_behind_admission_and_serves() -> None:
    runtime = _runtime()
    assert isinstance(runtime.backends["scale"], QueuedBackend)
    request = InferRequest("m", None, {"x": np.array([[1.0, 2.0]], np.float32)})

    async def serve() -> list[list[float]]:
        try:
            ctx = RequestContext(request_id="r", protocol="test")
            response = await runtime.service.infer(request, ctx)
            return response.outputs["y"].tolist()  # type: ignore[no-any-return]  # numpy's tolist is untyped
        finally:
            await runtime.close()

    assert asyncio.run(serve()) == [[3.0, 6.0]]


def test_its_cache_identity_is_in_the_models_cache_key() -> None:
    prefixes = {}
    for factor, label in ((3.0, "a"), (3.0, "b"), (4.0, "a")):
        runtime = _runtime(factor, label)
        prefixes[factor, label] = runtime.service.models["m"].cache_prefix
        asyncio.run(runtime.close())
    assert prefixes[3.0, "a"] == prefixes[3.0, "b"]  # label is not part of the answer
    assert prefixes[3.0, "a"] != prefixes[4.0, "a"]  # factor is


def test_the_loader_refuses_unknown_keys_and_names_the_known_types() -> None:
    with pytest.raises(ConfigError, match=r"backends\.scale\.path"):
        parse_config(CONFIG.format(factor=2, label="a", kind="tensor").replace("label:", "path:"))
    with pytest.raises(ConfigError) as refused:
        parse_config(CONFIG.format(factor=2, label="a", kind="tensor").replace("test-scale", "x"))
    assert "test-scale" in str(refused.value) and "onnx" in str(refused.value)


def test_the_runtime_refuses_a_kind_the_type_does_not_serve() -> None:
    with pytest.raises(ConfigError, match="serves tensor models, not chat"):
        _runtime(kind="chat")


def test_vendor_types_are_admitted_by_slots() -> None:
    assert backend_type("openai").admission == "slots"
    assert backend_type("onnx").admission == "queue"
    assert SlottedBackend.__name__ == "SlottedBackend"


def test_a_type_must_declare_its_identity_and_its_type_literal() -> None:
    with pytest.raises(TypeError, match="cache_identity names no field"):
        BackendType("test-scale", ScaleConfig, _build, frozenset({"tensor"}), ("nope",), "queue")
    with pytest.raises(TypeError, match="Literal"):
        BackendType("other", ScaleConfig, _build, frozenset({"tensor"}), ("type",), "queue")
    with pytest.raises(ValueError, match="registered twice"):
        register(BackendType("test-scale", ScaleConfig, _build, frozenset(), ("type",), "queue"))
