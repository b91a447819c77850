"""Admission for backends whose calls are I/O (vendor APIs): at most
`max_concurrency` calls (or open streams) in flight, at most `max_queue`
waiting, deadlines while waiting. The same rules as `queue.QueuedBackend`,
without its batching and execution slots: a slot is held for a whole call,
and by a stream until it ends (`SlottedBackend`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from gateway.core.errors import DeadlineExceeded, Overloaded
from gateway.core.llm import ChatRequest, ChatResult, ChatStream, EmbeddingResult, EndingStream
from gateway.core.signature import TensorSpec
from gateway.observe.metrics import INFLIGHT, QUEUE_DURATION, QUEUED, SHED, fast_observe


class ConcurrencyLimiter:
    """`max_concurrency` calls in flight, `max_queue` waiting, deadlines while
    waiting: the same admission rules as `QueuedBackend`, for backends whose
    calls are I/O (vendor APIs), where a slot is held for a whole call or stream.
    """

    def __init__(
        self,
        name: str,
        max_concurrency: int,
        max_queue: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        # time.monotonic(), or a clock a test moves by hand; deadlines are on it.
        self._clock = clock
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._shed_full = SHED.labels(name, "queue_full")
        self._shed_deadline = SHED.labels(name, "deadline")
        self._shed_cancelled = SHED.labels(name, "cancelled")
        self._queue_duration = fast_observe(QUEUE_DURATION.labels(name))
        self._inflight = INFLIGHT.labels(name)
        self._queued = QUEUED.labels(name)

    def busy(self) -> bool:
        return self._running > 0 or bool(self._waiters)

    async def acquire(self, deadline: float | None) -> None:
        """Take a slot, waiting until `deadline` (time.monotonic()) at most; pair
        with `release()`."""
        if self._running < self.max_concurrency and not self._waiters:
            self._running += 1
            self._inflight.inc()
            return
        if len(self._waiters) >= self.max_queue:
            self._shed_full.inc()
            raise Overloaded(
                f"backend '{self.name}' is overloaded: {len(self._waiters)} requests waiting "
                f"(max_queue {self.max_queue})",
                retry_after_s=1.0,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._queued.inc()
        enqueued = self._clock()
        try:
            await asyncio.wait_for(
                asyncio.shield(waiter), None if deadline is None else deadline - enqueued
            )
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as we gave up
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
                self._queued.dec()
            if isinstance(exc, TimeoutError):
                self._shed_deadline.inc()
                raise DeadlineExceeded(
                    f"deadline exceeded after {(self._clock() - enqueued) * 1000:.0f} ms "
                    f"waiting for backend '{self.name}'; the request was not sent",
                    reason="deadline_queued",
                ) from None
            self._shed_cancelled.inc()
            raise
        self._queue_duration(self._clock() - enqueued)

    def release(self) -> None:
        """Hand the slot to the oldest waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            self._queued.dec()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; _running is unchanged
                return
        self._running -= 1
        self._inflight.dec()


class SlottedBackend:
    """A backend whose calls are I/O (a vendor API) behind a `ConcurrencyLimiter`:
    each call holds a slot, a stream holds its slot until it ends or is closed.
    Keeps the chat and embeddings protocols of core/llm.py, and the Backend
    protocol's `infer` for a remote tensor API (a SageMaker endpoint), so plans
    and the pipeline do not know it is there."""

    def __init__(self, backend: Any, limiter: ConcurrencyLimiter) -> None:
        self.backend = backend
        self.name: str = backend.name
        self.limiter = limiter

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
        # What the backend declares, for the runtime's check against the signature.
        specs: tuple[list[TensorSpec], list[TensorSpec]] | None = self.backend.io_specs()
        return specs

    def ready(self) -> bool:
        return bool(self.backend.ready())

    def busy(self) -> bool:
        return self.limiter.busy()

    async def close(self) -> None:
        await self.backend.close()

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        await self.limiter.acquire(deadline)
        try:
            result: dict[str, np.ndarray] = await self.backend.infer(inputs, outputs, deadline)
            return result
        finally:
            self.limiter.release()

    async def chat(self, request: ChatRequest, deadline: float) -> ChatResult:
        await self.limiter.acquire(deadline)
        try:
            result: ChatResult = await self.backend.chat(request, deadline)
            return result
        finally:
            self.limiter.release()

    async def chat_stream(self, request: ChatRequest, deadline: float) -> ChatStream:
        await self.limiter.acquire(deadline)
        try:
            stream = await self.backend.chat_stream(request, deadline)
        except BaseException:
            self.limiter.release()
            raise
        return EndingStream(stream, self.limiter.release)

    async def embed(
        self, texts: list[str], deadline: float, dimensions: int | None = None
    ) -> EmbeddingResult:
        await self.limiter.acquire(deadline)
        try:
            result: EmbeddingResult = await self.backend.embed(texts, deadline, dimensions)
            return result
        finally:
            self.limiter.release()
