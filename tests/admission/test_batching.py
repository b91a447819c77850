import asyncio
import itertools

import numpy as np
import pytest

from gateway.admission.batching import BatchPolicy, batch_key, concat_inputs, split_outputs
from gateway.admission.queue import QueuedBackend
from gateway.core.errors import BackendFailed
from gateway.observe.metrics import REGISTRY
from tests.fakes import LocalBackend


def test_target_is_the_largest_preferred_size_that_fits() -> None:
    assert BatchPolicy(64, 0.001).target_rows == 64
    assert BatchPolicy(64, 0.001, (8, 32)).target_rows == 32
    assert BatchPolicy(16, 0.001, (8, 32)).target_rows == 8


@pytest.mark.parametrize(
    "preferred, rows, taken",
    [
        ((), [1, 1, 1], 3),
        ((4, 8), [2, 2, 2, 2, 2], 4),  # 8 rows: four requests of 2
        ((4, 8), [2, 2, 1], 2),  # 5 rows: the largest preferred size reachable is 4
        ((4,), [3, 3], 2),  # 4 cannot be hit exactly: take all
    ],
)
def test_trim_aims_at_preferred_sizes(preferred, rows, taken) -> None:
    assert BatchPolicy(64, 0.001, preferred).trim(rows) == taken


def test_only_requests_with_equal_non_batch_shapes_share_a_key() -> None:
    a = {"x": np.zeros((2, 64), np.float32)}
    b = {"x": np.zeros((5, 64), np.float32)}
    c = {"x": np.zeros((2, 63), np.float32)}
    d = {"x": np.zeros((2, 64), np.float64)}
    assert batch_key(a, ["y"]) == batch_key(b, ["y"])
    assert batch_key(a, ["y"]) != batch_key(c, ["y"])
    assert batch_key(a, ["y"]) != batch_key(d, ["y"])
    assert batch_key(a, ["y"]) != batch_key(a, ["y", "z"])
    assert batch_key({"x": np.float32(1.0).reshape(())}, ["y"]) is None


def test_concat_then_split_gives_each_request_its_rows() -> None:
    requests = [{"x": np.full((n, 2), n, np.float32)} for n in (1, 3, 2)]
    merged = concat_inputs(requests)
    assert merged["x"].shape == (6, 2)
    parts = split_outputs({"y": merged["x"] * 10}, [1, 3, 2], "b")
    for n, part in zip((1, 3, 2), parts):
        np.testing.assert_array_equal(part["y"], np.full((n, 2), n * 10, np.float32))
    with pytest.raises(BackendFailed, match="cannot split"):
        split_outputs({"y": np.zeros((5, 2))}, [1, 3, 2], "b")


# -- QueuedBackend with batching, over a real in-process backend -------------------

# The lone request's wait is read from the queue-duration histogram; the delay is
# long enough that scheduling noise is small beside a whole delay of slack (the
# bug this catches waited four delays).
LONE_DELAY_S = 0.3
_names = itertools.count()


class ScriptedBackend(LocalBackend):
    """A Backend that doubles `x` into `y`, records the rows of each call, and
    raises `fail_next` (once) when it is armed."""

    def __init__(self) -> None:
        self.name = f"batching-test-{next(_names)}"
        self.calls: list[int] = []
        self.fail_next: BaseException | None = None
        self.closed = False

    async def close(self) -> None:
        self.closed = True

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], timeout_s: float | None
    ) -> dict[str, np.ndarray]:
        self.calls.append(int(inputs["x"].shape[0]))
        failure, self.fail_next = self.fail_next, None
        if failure is not None:
            raise failure
        return {"y": inputs["x"] * 2}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rows(values: list[float]) -> dict[str, np.ndarray]:
    return {"x": np.array(values, np.float32).reshape(len(values), 1)}


def test_a_lone_request_waits_the_queue_delay_for_mates_and_no_longer() -> None:
    backend = ScriptedBackend()
    queue = QueuedBackend(backend, 1, 8, BatchPolicy(8, LONE_DELAY_S))
    count = "gateway_queue_duration_seconds_count"
    total = "gateway_queue_duration_seconds_sum"
    count_before = sample(count, backend=backend.name)
    waited_before = sample(total, backend=backend.name)

    async def run() -> dict[str, np.ndarray]:
        try:
            return await asyncio.wait_for(queue.infer(rows([3.0]), ["y"], None), 10)
        finally:
            await queue.close()

    answer = asyncio.run(run())
    np.testing.assert_array_equal(answer["y"], [[6.0]])
    assert backend.calls == [1]
    assert sample(count, backend=backend.name) - count_before == 1
    waited = sample(total, backend=backend.name) - waited_before
    # It waits for mates until the delay has passed (none come), then goes alone.
    assert waited >= LONE_DELAY_S
    assert waited <= 2 * LONE_DELAY_S, f"a lone request waited {waited:.3f} s"


@pytest.mark.parametrize(
    "error",
    [BackendFailed("the batch broke", reason="5xx"), RuntimeError("the batch broke")],
    ids=["gateway_error", "plain_exception"],
)
def test_a_failing_batch_fails_every_mate_and_the_slot_survives(error: Exception) -> None:
    backend = ScriptedBackend()
    backend.fail_next = error
    # Four one-row requests make the preferred batch at once (no waiting on the delay).
    queue = QueuedBackend(backend, 1, 16, BatchPolicy(4, 10.0))
    inflight_before = sample("gateway_inflight_requests", backend=backend.name)

    async def run() -> tuple[list[object], dict[str, np.ndarray]]:
        try:
            mates = [queue.infer(rows([float(i)]), ["y"], None) for i in range(4)]
            results = await asyncio.wait_for(asyncio.gather(*mates, return_exceptions=True), 10)
            # The slot is still there: the next request is served.
            following = await asyncio.wait_for(queue.infer(rows([1, 2, 3, 4]), ["y"], None), 10)
            return results, following
        finally:
            await queue.close()

    results, following = asyncio.run(run())
    assert backend.calls[0] == 4, "the four requests were not one batch"
    assert len(results) == 4
    for result in results:
        assert isinstance(result, BackendFailed), result
        assert "the batch broke" in result.message
    assert not any(isinstance(r, dict) for r in results)  # nobody got an answer
    np.testing.assert_array_equal(following["y"], [[2.0], [4.0], [6.0], [8.0]])
    assert backend.calls == [4, 4]  # the failed batch was not run again
    assert sample("gateway_inflight_requests", backend=backend.name) == inflight_before
    assert not queue.busy()
