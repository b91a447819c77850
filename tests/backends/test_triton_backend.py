"""The triton backend against a real Triton server (PyTriton): what it checks
at load, what it sends, how it maps Triton's answers and failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from sklearn.datasets import load_digits

from gateway.admission.queue import QueuedBackend
from gateway.backends.triton import TritonBackend
from gateway.config.loader import ConfigError, parse_config
from gateway.core.errors import BackendFailed, InvalidInput
from gateway.core.signature import TensorSpec
from gateway.runtime import Runtime, build_runtime
from testkit.gateway_process import free_port
from testkit.triton_process import TritonProcess
from tests.conftest import DIGITS_MODEL
from tests.triton_configs import gateway_config, triton_backend

T = TypeVar("T")


def _runtime(config: dict[str, Any]) -> Runtime:
    return build_runtime(parse_config(yaml.safe_dump(config)))


def _load_problems(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        _runtime(config)
    return str(caught.value)


def _digits(rows: int) -> np.ndarray:
    return load_digits().data[:rows].astype(np.float32)


def _local_answer(pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(DIGITS_MODEL), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"pixels": pixels})
    return np.asarray(probabilities)


def _within_loop(runtime: Runtime, scenario: Callable[[], Awaitable[T]]) -> T:
    """Run `scenario`, then close the runtime's backends, in one event loop (the
    one their queues and connections belong to)."""

    async def run() -> T:
        try:
            return await scenario()
        finally:
            for backend in runtime.backends.values():
                await backend.close()

    return asyncio.run(run())


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_digits_through_triton_equal_the_local_model(triton: TritonProcess, protocol: str) -> None:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    runtime = _runtime(gateway_config({"t": triton_backend(url, protocol=protocol)}, route=["t"]))
    backend = runtime.backends["t"]
    assert isinstance(backend, QueuedBackend) and isinstance(backend.backend, TritonBackend)
    pixels = _digits(8)

    async def call() -> dict[str, np.ndarray]:
        return await backend.infer({"pixels": pixels}, ["probabilities"], time.monotonic() + 5)

    answer = _within_loop(runtime, call)["probabilities"]
    np.testing.assert_allclose(answer, _local_answer(pixels), rtol=1e-6, atol=1e-7)
    assert list(answer.argmax(axis=1)) == list(load_digits().target[:8])


def test_the_specs_are_the_remote_models(triton: TritonProcess) -> None:
    runtime = _runtime(gateway_config({"t": triton_backend(triton.grpc_url)}, route=["t"]))
    backend = runtime.backends["t"]
    assert isinstance(backend, QueuedBackend) and isinstance(backend.backend, TritonBackend)
    assert backend.io_specs() == (
        [TensorSpec("pixels", "FP32", (-1, 64))],
        [TensorSpec("probabilities", "FP32", (-1, 10))],
    )
    remote = backend.backend.remote
    assert (remote.max_batch_size, remote.dynamic_batching) == (64, True)
    assert backend.ready()

    async def nothing() -> None:
        return None

    _within_loop(runtime, nothing)


def test_a_signature_that_does_not_fit_the_remote_model_is_refused(
    triton: TritonProcess,
) -> None:
    config = gateway_config({"t": triton_backend(triton.grpc_url)}, route=["t"])
    config["models"]["digits"]["signature"]["inputs"][0]["shape"] = [-1, 32]
    problems = _load_problems(config)
    assert "backend 't' does not fit the signature" in problems
    assert "pixels" in problems and "64" in problems and "32" in problems


def test_a_model_the_server_does_not_have_is_refused(triton: TritonProcess) -> None:
    problems = _load_problems(
        gateway_config({"t": triton_backend(triton.grpc_url, model="nope")}, route=["t"])
    )
    assert "backends.t" in problems
    assert f"cannot read model 'nope' from Triton at {triton.grpc_url}" in problems


def test_an_unreachable_server_is_refused_within_the_connect_timeout() -> None:
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    problems = _load_problems(
        gateway_config({"t": triton_backend(url, connect_timeout_ms=1000)}, route=["t"])
    )
    assert time.monotonic() - started < 5
    assert f"cannot read model 'digits' from Triton at {url}" in problems


def test_gateway_batching_beyond_the_remote_max_batch_size_is_refused(
    triton: TritonProcess,
) -> None:
    backend = triton_backend(triton.grpc_url, batching={"max_batch_size": 128})
    problems = _load_problems(gateway_config({"t": backend}, route=["t"]))
    assert "batching.max_batch_size 128 is more than model 'digits' takes" in problems
    assert "max_batch_size 64" in problems


def test_a_url_with_a_scheme_is_refused_at_validation() -> None:
    problems = _load_problems(
        gateway_config({"t": triton_backend("grpc://127.0.0.1:8001")}, route=["t"])
    )
    assert "backends.t.url" in problems and "without a scheme" in problems


def test_more_rows_than_the_remote_takes_are_refused_before_the_call(
    triton: TritonProcess,
) -> None:
    runtime = _runtime(gateway_config({"t": triton_backend(triton.grpc_url)}, route=["t"]))
    backend = runtime.backends["t"]
    assert isinstance(backend, QueuedBackend)

    async def call() -> None:
        await backend.infer({"pixels": _digits(65)}, ["probabilities"], None)

    with pytest.raises(InvalidInput) as caught:
        _within_loop(runtime, call)
    assert "input 'pixels': 65 rows, at most 64" in caught.value.message


def test_a_server_that_went_away_is_a_connection_failure_and_not_ready() -> None:
    from testkit.triton_process import start_triton

    server = start_triton()
    try:
        runtime = _runtime(
            gateway_config(
                {"t": triton_backend(server.grpc_url, readiness_interval_ms=100)}, route=["t"]
            )
        )
    finally:
        server.kill()
    backend = runtime.backends["t"]
    assert isinstance(backend, QueuedBackend)

    async def scenario() -> None:
        with pytest.raises(BackendFailed) as caught:
            await backend.infer({"pixels": _digits(1)}, ["probabilities"], time.monotonic() + 5)
        assert caught.value.reason == "connection"
        assert not backend.ready()

    _within_loop(runtime, scenario)
