"""The vendor queue (`admission/slots.py` ConcurrencyLimiter): slots go to waiters
in the order they queued, a full queue sheds at once, a waiter whose deadline
passes or whose caller goes away leaves the queue, and a slot handed over just
as its waiter gives up is passed on, never leaked.

The order of events is set with futures and the limiter's own queued gauge,
never with timed sleeps: `settle` only yields to the event loop until a
condition holds. `SlottedBackend` holds a slot per call, tensor calls included.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import numpy as np
import pytest

from gateway.admission.slots import ConcurrencyLimiter, SlottedBackend
from gateway.core.errors import BackendFailed, DeadlineExceeded, Overloaded
from gateway.observe.metrics import REGISTRY
from tests.fakes import LocalBackend

_names = itertools.count()


def budget(seconds: float | None) -> float | None:
    """What `acquire` takes for a wait of at most `seconds` (None: unbounded): an
    absolute deadline on the `time.monotonic()` clock. The one place that knows
    how `acquire` is told how long it may wait."""
    return None if seconds is None else time.monotonic() + seconds


def limiter(max_concurrency: int = 1, max_queue: int = 8) -> ConcurrencyLimiter:
    """A limiter with a backend name of its own, so its metrics are its own."""
    return ConcurrencyLimiter(f"slots-test-{next(_names)}", max_concurrency, max_queue)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def queued(lim: ConcurrencyLimiter) -> float:
    return sample("gateway_queued_requests", backend=lim.name)


def inflight(lim: ConcurrencyLimiter) -> float:
    return sample("gateway_inflight_requests", backend=lim.name)


def shed(lim: ConcurrencyLimiter, reason: str) -> float:
    return sample("gateway_shed_total", backend=lim.name, reason=reason)


async def settle(condition: Callable[[], bool], what: str) -> None:
    """Yield to the event loop until `condition` holds (a bounded number of turns)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)  # one turn of the loop, not a timed wait
    raise AssertionError(f"never happened: {what}")


async def queue_waiter(lim: ConcurrencyLimiter, coro: object) -> asyncio.Task[object]:
    """Start `coro` (an acquire) as a task and return once it waits in the queue."""
    before = queued(lim)
    task: asyncio.Task[object] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
    await settle(lambda: queued(lim) == before + 1 or task.done(), "the waiter queued")
    assert not task.done(), "the acquire did not wait although every slot was taken"
    return task


def test_slots_are_handed_to_waiters_in_the_order_they_queued() -> None:
    async def run() -> list[str]:
        lim = limiter(max_concurrency=1)
        await lim.acquire(budget(None))  # the holder
        served: list[str] = []

        async def waiter(label: str) -> None:
            await lim.acquire(budget(None))
            served.append(label)
            lim.release()

        # Queued in an order unlike creation order or name order.
        tasks = [await queue_waiter(lim, waiter(label)) for label in ("c", "a", "d", "b")]
        lim.release()
        # A newcomer arriving as the slot changes hands queues behind the others.
        tasks.append(asyncio.ensure_future(waiter("late")))
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert queued(lim) == 0
        assert not lim.busy()
        return served

    assert asyncio.run(run()) == ["c", "a", "d", "b", "late"]


def test_every_slot_is_used_before_anyone_waits() -> None:
    async def run() -> None:
        lim = limiter(max_concurrency=3, max_queue=0)
        base = inflight(lim)
        for _ in range(3):
            await lim.acquire(budget(None))  # no waiting: a free slot each
        assert inflight(lim) == base + 3
        with pytest.raises(Overloaded):
            await lim.acquire(budget(1.0))
        for _ in range(3):
            lim.release()
        assert inflight(lim) == base
        assert not lim.busy()

    asyncio.run(run())


@pytest.mark.parametrize("max_queue", [0, 2])
def test_a_full_queue_refuses_at_once_and_counts_the_shed(max_queue: int) -> None:
    async def run() -> None:
        lim = limiter(max_concurrency=1, max_queue=max_queue)
        await lim.acquire(budget(None))
        served: list[int] = []

        async def waiter(i: int) -> None:
            await lim.acquire(budget(None))
            served.append(i)
            lim.release()

        tasks = [await queue_waiter(lim, waiter(i)) for i in range(max_queue)]
        full_before = shed(lim, "queue_full")
        with pytest.raises(Overloaded) as err:
            # Refused at once; a limiter that queued it would answer DeadlineExceeded.
            await lim.acquire(budget(1.0))
        assert err.value.retry_after_s is not None and err.value.retry_after_s >= 1
        assert shed(lim, "queue_full") - full_before == 1
        assert queued(lim) == max_queue  # the refused request took no place
        lim.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert served == list(range(max_queue))  # those queued are still served
        assert not lim.busy()

    asyncio.run(run())


def test_a_deadline_while_queued_answers_deadline_queued_and_leaves_the_queue() -> None:
    async def run() -> None:
        lim = limiter(max_concurrency=1, max_queue=1)
        await lim.acquire(budget(None))
        deadline_before = shed(lim, "deadline")
        with pytest.raises(DeadlineExceeded) as err:
            await asyncio.wait_for(lim.acquire(budget(0.01)), 10)
        assert err.value.reason == "deadline_queued"
        assert shed(lim, "deadline") - deadline_before == 1
        assert queued(lim) == 0
        # Its place is free again (max_queue 1), and the slot goes to the next
        # waiter, not to the one that gave up.
        task = await queue_waiter(lim, lim.acquire(budget(None)))
        lim.release()
        await asyncio.wait_for(task, 10)
        assert lim.busy()  # the new waiter holds the slot
        lim.release()
        assert not lim.busy()
        assert queued(lim) == 0

    asyncio.run(run())


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def run() -> None:
        lim = limiter(max_concurrency=1, max_queue=1)
        base = inflight(lim)
        await lim.acquire(budget(None))
        cancelled_before = shed(lim, "cancelled")
        task = await queue_waiter(lim, lim.acquire(budget(None)))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert queued(lim) == 0
        assert shed(lim, "cancelled") - cancelled_before == 1
        # Its place is free again: a new waiter queues (max_queue 1) and is served.
        second = await queue_waiter(lim, lim.acquire(budget(None)))
        lim.release()
        await asyncio.wait_for(second, 10)
        lim.release()
        assert not lim.busy()
        assert inflight(lim) == base

    asyncio.run(run())


def test_a_slot_handed_over_as_its_waiter_gives_up_is_freed() -> None:
    async def run() -> None:
        lim = limiter(max_concurrency=1, max_queue=4)
        base = inflight(lim)
        await lim.acquire(budget(None))
        task = await queue_waiter(lim, lim.acquire(budget(None)))
        # In one step, without the waiter running in between: the slot is handed
        # to it, and its caller goes away.
        lim.release()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not lim.busy(), "the slot handed to a waiter that gave up leaked"
        assert inflight(lim) == base
        assert queued(lim) == 0
        # The slot is really free: a new caller takes it without waiting.
        await asyncio.wait_for(lim.acquire(budget(None)), 10)
        lim.release()
        assert not lim.busy()

    asyncio.run(run())


def test_a_slot_handed_over_as_its_waiter_gives_up_goes_to_the_next_waiter() -> None:
    async def run() -> None:
        lim = limiter(max_concurrency=1, max_queue=4)
        base = inflight(lim)
        await lim.acquire(budget(None))
        giving_up = await queue_waiter(lim, lim.acquire(budget(None)))
        served = asyncio.Event()

        async def next_in_line() -> None:
            await lim.acquire(budget(None))
            served.set()

        behind = await queue_waiter(lim, next_in_line())
        lim.release()
        giving_up.cancel()
        with pytest.raises(asyncio.CancelledError):
            await giving_up
        await asyncio.wait_for(behind, 10)
        assert served.is_set()
        assert lim.busy()  # the waiter behind holds the slot now
        assert inflight(lim) == base + 1
        lim.release()
        assert not lim.busy()
        assert inflight(lim) == base
        assert queued(lim) == 0

    asyncio.run(run())


def test_busy_while_a_slot_is_held_or_a_request_waits() -> None:
    async def run() -> None:
        lim = limiter(max_concurrency=1, max_queue=4)
        assert not lim.busy()
        await lim.acquire(budget(None))
        assert lim.busy()
        holder_released = asyncio.Event()

        async def waiter() -> None:
            await lim.acquire(budget(None))
            await holder_released.wait()
            lim.release()

        task = await queue_waiter(lim, waiter())
        assert lim.busy()
        lim.release()  # the waiter holds the slot now: still busy
        assert lim.busy()
        holder_released.set()
        await asyncio.wait_for(task, 10)
        assert not lim.busy()

    asyncio.run(run())


class GatedTensorBackend(LocalBackend):
    """A remote tensor API whose calls finish when the test opens the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.fail = False

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        await self.gate.wait()
        if self.fail:
            raise BackendFailed("the endpoint failed")
        return {"y": inputs["x"] * 2}


def test_a_tensor_call_holds_its_slot_until_it_answers_or_fails() -> None:
    async def run() -> None:
        backend = GatedTensorBackend()
        lim = limiter(max_concurrency=1, max_queue=1)
        slotted = SlottedBackend(backend, lim)
        x = np.ones((1, 2), np.float32)
        first = asyncio.ensure_future(slotted.infer({"x": x}, ["y"], budget(10)))
        await settle(lambda: inflight(lim) == 1, "the first call took the slot")
        second = await queue_waiter(lim, slotted.infer({"x": x}, ["y"], budget(10)))
        with pytest.raises(Overloaded):  # one in flight, one waiting: full
            await slotted.infer({"x": x}, ["y"], budget(10))
        backend.fail = True
        backend.gate.set()
        with pytest.raises(BackendFailed):
            await first  # a failure frees the slot too: the waiter gets it
        with pytest.raises(BackendFailed):
            await second
        assert not slotted.busy() and inflight(lim) == 0
        backend.fail = False
        answer = await slotted.infer({"x": x}, ["y"], None)
        assert answer["y"].tolist() == [[2.0, 2.0]]

    asyncio.run(run())
