"""Admission's own arithmetic on a clock moved by hand: the predicted wait
that `max_queue_wait_ms` refuses on, and the recorded queue time, exactly,
whatever the machine's speed."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from gateway.admission.queue import QueuedBackend
from gateway.admission.slots import ConcurrencyLimiter
from gateway.core.errors import Overloaded
from gateway.observe.metrics import REGISTRY
from tests.fakes import LocalBackend, ManualClock

_names = itertools.count()


class Held(LocalBackend):
    """A backend whose executions last as long as the test says: each waits for
    its release, and the clock moves by the execution's `took` meanwhile."""

    def __init__(self, clock: ManualClock) -> None:
        self.name = f"clock-{next(_names)}"
        self.clock = clock
        self.releases: asyncio.Queue[float] = asyncio.Queue()
        self.started = asyncio.Event()

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        self.started.set()
        self.clock.now += await self.releases.get()
        return {"y": inputs["x"]}


def _sample(name: str, backend: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"backend": backend, **labels}) or 0.0


def _inputs() -> dict[str, np.ndarray]:
    return {"x": np.ones((1, 2), np.float32)}


def test_the_predicted_wait_refuses_exactly_past_max_queue_wait() -> None:
    clock = ManualClock()

    async def scenario() -> None:
        backend = Held(clock)
        queue = QueuedBackend(backend, 1, 8, max_queue_wait_s=0.25, clock=clock)
        first = asyncio.ensure_future(queue.infer(_inputs(), ["y"], None))
        await backend.started.wait()
        backend.releases.put_nowait(0.1)  # one execution of 100 ms: the running mean
        await first
        assert queue.expected_wait_s() == 0.0  # the slot is free

        backend.started.clear()
        running = asyncio.ensure_future(queue.infer(_inputs(), ["y"], None))
        await backend.started.wait()
        clock.now += 0.04  # 40 ms into an execution expected to last 100 ms
        assert queue.expected_wait_s() == pytest.approx(0.06)
        waiting = [asyncio.ensure_future(queue.infer(_inputs(), ["y"], None)) for _ in range(2)]
        await asyncio.sleep(0)  # one loop turn: both are queued
        # 60 ms until the slot frees, then one 100 ms execution per waiting request
        assert queue.expected_wait_s() == pytest.approx(0.26)
        shed = _sample("gateway_shed_total", backend.name, reason="queue_wait")
        with pytest.raises(Overloaded, match=r"about 260\.0 ms \(max_queue_wait_ms 250\)"):
            await queue.infer(_inputs(), ["y"], None)
        assert _sample("gateway_shed_total", backend.name, reason="queue_wait") == shed + 1
        for _ in range(3):
            backend.releases.put_nowait(0.1)
        await asyncio.gather(running, *waiting)
        await queue.close()

    asyncio.run(scenario())


def test_the_queue_time_recorded_is_the_time_spent_waiting() -> None:
    clock = ManualClock()

    async def scenario() -> None:
        backend = Held(clock)
        queue = QueuedBackend(backend, 1, 8, clock=clock)
        name = backend.name
        first = asyncio.ensure_future(queue.infer(_inputs(), ["y"], None))
        await backend.started.wait()
        second = asyncio.ensure_future(queue.infer(_inputs(), ["y"], None))
        await asyncio.sleep(0)  # queued behind the first, at the current time
        before = _sample("gateway_queue_duration_seconds_sum", name)
        backend.releases.put_nowait(0.5)  # the first runs for 500 ms; the second waits that long
        await first
        backend.releases.put_nowait(0.0)
        await second
        assert _sample("gateway_queue_duration_seconds_sum", name) - before == pytest.approx(0.5)
        await queue.close()

    asyncio.run(scenario())


def test_a_vendor_slot_records_its_wait_on_the_same_clock() -> None:
    clock = ManualClock()
    name = f"clock-{next(_names)}"
    limiter = ConcurrencyLimiter(name, 1, 4, clock=clock)

    async def scenario() -> None:
        await limiter.acquire(None)
        waiter = asyncio.ensure_future(limiter.acquire(None))
        await asyncio.sleep(0)
        before = _sample("gateway_queue_duration_seconds_sum", name)
        clock.now += 0.3
        limiter.release()  # handed to the waiter
        await waiter
        assert _sample("gateway_queue_duration_seconds_sum", name) - before == pytest.approx(0.3)
        limiter.release()
        assert not limiter.busy()

    asyncio.run(scenario())
