"""Per-model statistics (Triton's extension) counted by the pipeline in
process: what one request adds, with the queue and batches of real admission
objects in front of small in-process backends (no mocks of gateway code)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.admission.batching import BatchPolicy
from gateway.admission.queue import QueuedBackend
from gateway.api.http_errors import HTTP_STATUS
from gateway.core.errors import BackendFailed, GatewayError, NotFound
from gateway.core.signature import Signature, TensorSpec
from gateway.core.types import InferRequest, RequestContext
from gateway.observe.model_stats import ModelStats
from gateway.pipeline.entry import ModelEntry
from gateway.pipeline.service import InferenceService
from gateway.routing.cache import ResponseCache
from gateway.routing.router import Attempt, Route
from tests.fakes import LocalBackend

SIGNATURE = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 2)),),
    outputs=(TensorSpec("y", "FP32", (-1, 2)),),
    batched=True,
)


class Doubler(LocalBackend):
    """y = 2x; raises `fail_next` once when armed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[int] = []
        self.fail_next: GatewayError | None = None

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        self.calls.append(len(inputs["x"]))
        failure, self.fail_next = self.fail_next, None
        if failure is not None:
            raise failure
        return {"y": inputs["x"] * 2}


def entry(backend: object, version: str = "1", cache_ttl_s: float | None = None) -> ModelEntry:
    return ModelEntry(
        name="m",
        version=version,
        kind="tensor",
        signature=SIGNATURE,
        route=Route([Attempt(backend, 5.0)]),
        cache_ttl_s=cache_ttl_s,
    )


def request(rows: int, value: float = 1.0) -> InferRequest:
    return InferRequest("m", None, {"x": np.full((rows, 2), value, np.float32)})


async def answer(service: InferenceService, request: InferRequest) -> int:
    """What a transport does: serve, then report the answer's status once."""
    ctx = RequestContext(request_id="r", protocol="test")
    code = 500
    try:
        await service.infer(request, ctx)
        code = 200
    except GatewayError as error:
        code = HTTP_STATUS[error.kind]
    finally:
        service.observe(ctx, code)
    return code


def test_a_batch_counts_one_execution_and_each_request_its_queue_and_compute() -> None:
    backend = Doubler("batcher")
    # The batch leaves as soon as it holds 4 rows; the delay is never waited.
    queue = QueuedBackend(backend, 1, 16, BatchPolicy(4, 10.0, (4,)))
    service = InferenceService({"m": entry(queue)})

    async def run() -> list[int]:
        try:
            return await asyncio.gather(*(answer(service, request(1, v)) for v in range(4)))
        finally:
            await queue.close()

    assert asyncio.run(run()) == [200] * 4
    assert backend.calls == [4]  # one execution of the four requests
    stats = service.stats["m"]
    assert stats.success_count == stats.queue_count == stats.compute_count == 4
    assert stats.execution_count == 1
    assert stats.inference_count == 4  # rows, the backend batches
    assert stats.fail_count == 0
    assert stats.compute_s > 0.0 and stats.queue_s + stats.compute_s <= stats.success_s
    assert stats.last_inference_ms() > 0


def test_without_batching_a_request_is_one_inference_whatever_its_rows() -> None:
    queue = QueuedBackend(Doubler("plain"), 1, 16)
    service = InferenceService({"m": entry(queue)})

    async def run() -> None:
        try:
            assert await answer(service, request(3)) == 200
        finally:
            await queue.close()

    asyncio.run(run())
    stats = service.stats["m"]
    assert (stats.inference_count, stats.execution_count, stats.queue_count) == (1, 1, 1)


def test_a_backend_failure_is_a_failure_and_nothing_else() -> None:
    backend = Doubler("failing")
    backend.fail_next = BackendFailed("backend 'failing' failed")
    queue = QueuedBackend(backend, 1, 16)
    service = InferenceService({"m": entry(queue)})

    async def run() -> None:
        try:
            assert await answer(service, request(1)) == 502
            assert await answer(service, InferRequest("m", None, {"z": np.ones(1)})) == 400
        finally:
            await queue.close()

    asyncio.run(run())
    stats = service.stats["m"]
    assert stats.fail_count == 2 and stats.fail_s > 0.0
    assert stats.success_count == stats.queue_count == stats.compute_count == 0
    assert stats.inference_count == stats.execution_count == 0


def test_a_cache_hit_is_a_success_and_a_hit_without_an_execution() -> None:
    queue = QueuedBackend(Doubler("cached"), 1, 16)
    service = InferenceService({"m": entry(queue, cache_ttl_s=60.0)}, cache=ResponseCache(1 << 20))

    async def run() -> None:
        try:
            assert await answer(service, request(1)) == 200
            assert await answer(service, request(1)) == 200
        finally:
            await queue.close()

    asyncio.run(run())
    stats = service.stats["m"]
    assert stats.success_count == 2
    assert (stats.cache_hit_count, stats.cache_miss_count) == (1, 1)
    assert stats.cache_hit_s > 0.0
    assert stats.queue_count == stats.compute_count == stats.execution_count == 1


def test_a_backend_without_admission_counts_its_call_as_the_execution() -> None:
    service = InferenceService({"m": entry(Doubler("bare"))})
    assert asyncio.run(answer(service, request(2))) == 200
    stats = service.stats["m"]
    assert (stats.queue_count, stats.compute_count, stats.execution_count) == (1, 1, 1)
    assert stats.queue_s == 0.0 and stats.compute_s > 0.0


def test_a_reload_keeps_the_counts_of_a_model_whose_version_stays() -> None:
    backend = Doubler("reloaded")
    service = InferenceService({"m": entry(backend)})
    assert asyncio.run(answer(service, request(1))) == 200
    counted = service.stats["m"]
    service.replace(InferenceService({"m": entry(backend)}))
    assert service.stats["m"] is counted and counted.success_count == 1
    service.replace(InferenceService({"m": entry(backend, version="2")}))
    assert service.stats["m"] is not counted and service.stats["m"].success_count == 0
    service.replace(InferenceService({}))
    assert service.stats == {}
    # A request that resolved the model before it went away is counted nowhere.
    ctx = RequestContext(request_id="r", protocol="test", model="m")
    service.observe(ctx, 200)
    assert counted.success_count == 1


def test_statistics_name_the_model_or_list_them_all() -> None:
    service = InferenceService({"m": entry(Doubler("listed"))})
    ((listed, stats),) = service.statistics()
    assert listed.name == "m" and isinstance(stats, ModelStats)
    assert service.statistics("m", "1") == [(listed, stats)]
    for name, version in (("nope", None), ("m", "2"), (None, "1")):
        with pytest.raises(NotFound):
            service.statistics(name, version)
