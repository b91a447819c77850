"""Admission control for one backend: bounded queue, execution slots, deadlines,
and (optionally) dynamic batching.

`QueuedBackend` wraps a backend and keeps the Backend protocol, so routes and
the pipeline do not know it is there. Guarantees:

* at most `max_concurrency` executions in flight, at most `max_queue` waiting;
  beyond that a request is refused at once (Overloaded -> 503 + Retry-After);
* with `max_queue_wait_s`, a request that would wait longer than that (by the
  running executions' progress and the recent execution time) is refused at
  once too: a count bound cannot hold latency when execution time varies, and
  admitting work that can only wait past its budget just moves the 503 later;
* a request whose deadline passes while it waits is answered at its deadline
  and removed from the queue: it is never executed;
* a request whose caller went away (its task is cancelled) is removed too;
* one request's bad luck never fails its batch-mates: inputs are validated
  before they are queued (by the signature, and by the backend's own
  `check_request` when it has one: a tokenizer's text limit), and a batch
  that fails fails as a backend error.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.admission.batching import (
    BatchPolicy,
    batch_key,
    concat_inputs,
    rows_of,
    split_outputs,
)
from gateway.backends.base import Backend
from gateway.core.errors import BackendFailed, DeadlineExceeded, GatewayError, Overloaded
from gateway.core.signature import TensorSpec
from gateway.core.types import RequestContext
from gateway.observe import tracing
from gateway.observe.metrics import (
    BATCH_SIZE,
    INFLIGHT,
    QUEUE_DURATION,
    QUEUED,
    SHED,
    fast_observe,
)

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger("gateway.admission.queue")

# How far past the head of the queue the batcher looks for batch-mates.
_SCAN_FACTOR = 4
# Weight of the newest execution in the running mean of execution time.
_EWMA_WEIGHT = 0.2


class _State(enum.Enum):
    QUEUED = 1
    RUNNING = 2
    DROPPED = 3


class _Work:
    """One request in the queue; once answered, also its core.types.Execution."""

    __slots__ = (
        "abandoned",
        "deadline",
        "enqueued",
        "future",
        "inferences",
        "inputs",
        "key",
        "leads",
        "outputs",
        "ran_s",
        "rows",
        "state",
        "trace",
        "waited_s",
    )
    # Set as the request leaves the queue (_take) and as its execution answers
    # (_execute): always before its caller reads them.
    waited_s: float
    ran_s: float

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        key: Hashable | None,
        rows: int,
        inferences: int,
        future: asyncio.Future[dict[str, np.ndarray]],
        enqueued: float,
        deadline: float | None = None,
    ) -> None:
        self.inputs = inputs
        self.deadline = deadline  # kept only for a backend that takes it (_pass_deadline)
        self.outputs = outputs
        self.key = key
        self.rows = rows
        self.inferences = inferences
        self.future = future
        self.enqueued = enqueued
        self.state = _State.QUEUED
        self.abandoned = False  # the caller stopped waiting while it ran
        self.leads = False  # the first request of the batch that answered it
        self.trace: tuple[Any, int] | None = None  # the caller's attempt span, while tracing is on


def _expire(future: asyncio.Future[Any]) -> None:
    """A queued or running request's deadline passed: its waiter gets TimeoutError
    (the execution, if any, finds the future done and drops its answer)."""
    if not future.done():
        future.set_exception(TimeoutError())


class QueuedBackend:
    """A backend behind a bounded queue and `max_concurrency` execution slots."""

    def __init__(
        self,
        backend: Backend,
        max_concurrency: int,
        max_queue: int,
        batching: BatchPolicy | None = None,
        max_queue_wait_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        # self._clock(), or a clock a test moves by hand; deadlines are on it.
        self._clock = clock
        self.name = backend.name
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.batching = batching
        self.max_queue_wait_s = max_queue_wait_s
        # The backend's own per-request checks (OnnxBackend: text limits), if any.
        self._check_request: Callable[[dict[str, np.ndarray]], None] | None = getattr(
            backend, "check_request", None
        )
        # Rows the backend runs at once (None: any); callers may send fewer at a time.
        self.max_execution_rows: int | None = getattr(backend, "max_execution_rows", None)
        # A remote server can act on a deadline itself (drop the request from its own
        # queue): such a backend says so with `takes_deadline` and gets the caller's.
        # A local one gets None: the timer here already answers at the deadline.
        self._pass_deadline: bool = getattr(backend, "takes_deadline", False)
        # When each slot's current execution started (None: the slot is not executing).
        self._running_since: list[float | None] = [None] * max_concurrency
        self._execution_s = 0.0  # running mean of one execution's duration; 0 = none seen yet
        self._queue: deque[_Work] = deque()
        self._waiting = 0
        self._arrived: asyncio.Event | None = None
        self._collecting: asyncio.Lock | None = None
        self._slots: list[asyncio.Task[None]] = []
        self._shed_full = SHED.labels(self.name, "queue_full")
        self._shed_wait = SHED.labels(self.name, "queue_wait")
        self._shed_deadline = SHED.labels(self.name, "deadline")
        self._shed_cancelled = SHED.labels(self.name, "cancelled")
        self._queue_duration = fast_observe(QUEUE_DURATION.labels(self.name))
        self._batch_size = fast_observe(BATCH_SIZE.labels(self.name))
        self._inflight = INFLIGHT.labels(self.name)
        self._queued = QUEUED.labels(self.name)

    # -- Backend protocol ------------------------------------------------------

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
        return self.backend.io_specs()

    def ready(self) -> bool:
        return self.backend.ready()

    def busy(self) -> bool:
        """Requests waiting or executing: not yet safe to close."""
        return self._waiting > 0 or any(s is not None for s in self._running_since)

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        deadline: float | None,
        ctx: RequestContext | None = None,
    ) -> dict[str, np.ndarray]:
        """The Backend protocol's infer; with `ctx`, an answer also leaves its
        execution's measures in `ctx.execution` (the model's statistics)."""
        if self._check_request is not None:
            self._check_request(inputs)
        if self._waiting >= self.max_queue:
            self._shed_full.inc()
            raise Overloaded(
                f"backend '{self.name}' is overloaded: {self._waiting} requests waiting "
                f"(max_queue {self.max_queue})",
                retry_after_s=1.0,
            )
        if self.max_queue_wait_s is not None:
            expected = self.expected_wait_s()
            if expected > self.max_queue_wait_s:
                self._shed_wait.inc()
                raise Overloaded(
                    f"backend '{self.name}' is overloaded: a new request would wait about "
                    f"{expected * 1000:.1f} ms (max_queue_wait_ms "
                    f"{self.max_queue_wait_s * 1000:g})",
                    retry_after_s=1.0,
                )
        self._start()
        batching = self.batching
        key = batch_key(inputs, outputs) if batching else None
        loop = asyncio.get_running_loop()
        rows = rows_of(inputs)
        # Inferences as Triton counts them: rows on a batching model, else requests.
        inferences = rows if batching else 1
        work = _Work(
            inputs,
            outputs,
            key,
            rows,
            inferences,
            loop.create_future(),
            self._clock(),
            deadline if self._pass_deadline else None,
        )
        if tracing.ENABLED:
            work.trace = tracing.queued()
        self._queue.append(work)
        self._waiting += 1
        self._queued.inc()
        self._arrived.set()  # type: ignore[union-attr]  # _start() made it
        # The deadline is a timer that fails the future; not asyncio.wait_for(shield()),
        # which costs two more futures, a callback chain and several running-loop
        # lookups (each a getpid() system call on Python 3.11) per request.
        timer = (
            None
            if deadline is None
            else loop.call_later(deadline - work.enqueued, _expire, work.future)
        )
        try:
            answer = await work.future
        except TimeoutError:
            if work.state is _State.QUEUED:
                waited_ms = (self._clock() - work.enqueued) * 1000.0
                self._drop(work, self._shed_deadline)
                raise DeadlineExceeded(
                    f"deadline exceeded after {waited_ms:.0f} ms waiting for backend "
                    f"'{self.name}'; the request was not executed",
                    reason="deadline_queued",
                ) from None
            work.abandoned = True
            raise DeadlineExceeded(
                f"backend '{self.name}' did not answer within the deadline"
            ) from None
        except asyncio.CancelledError:
            if work.state is _State.QUEUED:
                self._drop(work, self._shed_cancelled)
            else:
                work.abandoned = True
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if ctx is not None:
            ctx.execution = work
        return answer

    async def close(self) -> None:
        for slot in self._slots:
            slot.cancel()
        await asyncio.gather(*self._slots, return_exceptions=True)
        self._slots.clear()
        closing = Overloaded(f"backend '{self.name}' is shutting down", retry_after_s=1.0)
        while self._queue:
            work = self._queue.popleft()
            if work.state is _State.QUEUED and not work.future.done():
                work.future.set_exception(closing)
                work.future.exception()  # retrieved: no "never retrieved" noise
        self._waiting = 0
        self._queued.set(0)
        await self.backend.close()

    def expected_wait_s(self) -> float:
        """How long a request arriving now would wait before it starts executing.

        The earliest a slot frees (by the running mean of execution time and how
        long each running execution has been at it), plus one execution per
        `max_concurrency` (with batching: per full batch) of the requests ahead.
        """
        mean = self._execution_s
        if mean == 0.0:
            return 0.0
        now = self._clock()
        first_free = min(
            0.0 if since is None else max(0.0, mean - (now - since))
            for since in self._running_since
        )
        per_round = self.max_concurrency * (self.batching.max_batch_size if self.batching else 1)
        return first_free + (self._waiting // per_round) * mean

    # -- queue and slots -------------------------------------------------------

    def _start(self) -> None:
        if self._slots:
            return
        self._arrived = asyncio.Event()
        self._collecting = asyncio.Lock()
        # Each slot in a context of its own: not the context (request id for logs,
        # current trace span) of the request that happened to start the slots.
        self._slots = [
            asyncio.get_running_loop().create_task(
                self._slot(i), name=f"{self.name}-slot-{i}", context=contextvars.Context()
            )
            for i in range(self.max_concurrency)
        ]

    def _drop(self, work: _Work, counter: Counter) -> None:
        work.state = _State.DROPPED
        self._waiting -= 1
        self._queued.dec()
        counter.inc()

    def _head(self) -> _Work | None:
        """The oldest waiting request, discarding taken or dropped ones."""
        queue = self._queue
        while queue and queue[0].state is not _State.QUEUED:
            queue.popleft()
        return queue[0] if queue else None

    async def _slot(self, index: int) -> None:
        assert self._collecting is not None
        while True:
            # One slot gathers at a time; the others execute meanwhile.
            async with self._collecting:
                batch = await self._collect()
            started = self._running_since[index] = self._clock()
            try:
                await self._execute(batch, started)
            finally:
                self._running_since[index] = None
                took = self._clock() - started
                mean = self._execution_s
                self._execution_s = took if mean == 0.0 else mean + _EWMA_WEIGHT * (took - mean)

    async def _collect(self) -> list[_Work]:
        arrived = self._arrived
        assert arrived is not None
        while True:
            head = self._head()
            if head is None:
                arrived.clear()
                await arrived.wait()
                continue
            if self.batching is None or head.key is None:
                return self._take([head])
            policy = self.batching
            release_at = head.enqueued + policy.max_queue_delay_s
            while True:
                mates = self._mates(head, policy.max_batch_size)
                remaining = release_at - self._clock()
                if sum(w.rows for w in mates) >= policy.target_rows or remaining <= 0:
                    break
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), remaining)
                except TimeoutError:
                    pass
                if head.state is not _State.QUEUED:
                    break  # dropped while we waited: start over with the new head
            if head.state is not _State.QUEUED:
                continue
            mates = self._mates(head, policy.max_batch_size)
            count = policy.trim([w.rows for w in mates])
            return self._take(mates[:count])

    def _mates(self, head: _Work, max_rows: int) -> list[_Work]:
        """The head and the queued requests that may share its batch, in order."""
        mates = [head]
        rows = head.rows
        scanned = 0
        limit = max_rows * _SCAN_FACTOR
        for work in self._queue:
            if work is head or work.state is not _State.QUEUED:
                continue
            scanned += 1
            if scanned > limit or rows >= max_rows:
                break
            if work.key == head.key and rows + work.rows <= max_rows:
                mates.append(work)
                rows += work.rows
        return mates

    def _take(self, batch: list[_Work]) -> list[_Work]:
        now = self._clock()
        for work in batch:
            work.state = _State.RUNNING
            work.waited_s = waited = now - work.enqueued
            self._queue_duration(waited)
            if work.trace is not None:
                tracing.queue_waited(work.trace, self.name)
        self._waiting -= len(batch)
        self._queued.dec(len(batch))
        return batch

    async def _execute(self, batch: list[_Work], started: float) -> None:
        rows = [w.rows for w in batch]
        self._batch_size(sum(rows))
        self._inflight.inc(len(batch))
        traced = tracing.ENABLED and any(w.trace is not None for w in batch)
        started_ns = time.time_ns() if traced else 0
        failure: GatewayError | None = None
        try:
            if len(batch) == 1:
                work = batch[0]
                results = [await self.backend.infer(work.inputs, work.outputs, work.deadline)]
            else:
                merged = concat_inputs([w.inputs for w in batch])
                answer = await self.backend.infer(merged, batch[0].outputs, _latest(batch))
                results = split_outputs(answer, rows, self.name)
        except GatewayError as exc:
            failure = exc
            self._fail(batch, exc)
        except Exception as exc:  # a backend bug must not kill the slot
            log.exception("backend %s failed", self.name)
            failure = BackendFailed(f"backend '{self.name}' failed: {exc}")
            self._fail(batch, failure)
        else:
            ran = self._clock() - started
            batch[0].leads = True
            for work, result in zip(batch, results):
                work.ran_s = ran
                if not work.future.done():
                    work.future.set_result(result)
        finally:
            self._inflight.dec(len(batch))
            if traced:
                tracing.executed(
                    [w.trace for w in batch], started_ns, self.name, sum(rows), failure
                )

    @staticmethod
    def _fail(batch: list[_Work], error: GatewayError) -> None:
        for work in batch:
            if not work.future.done():
                work.future.set_exception(error)
                if work.abandoned:
                    work.future.exception()  # nobody waits: mark it retrieved


def _latest(batch: list[_Work]) -> float | None:
    """A merged batch's deadline: its last request's (None if any has none), so
    that no request is cut short by a batch-mate's."""
    deadlines = [w.deadline for w in batch]
    return None if None in deadlines else max(d for d in deadlines if d is not None)
