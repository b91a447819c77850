"""Serve grpc.aio-style (async) servicers from gRPC's threaded server.

Why: on one core, Python's threaded gRPC server turns calls around about twice
as fast as grpc.aio (a bare ModelInfer with a fixed reply, measured with
h2load: ~8,400 vs ~4,100 calls/s; loadtests/grpc_floor.py). The pipeline stays
on the one event loop: a call's handler thread hands the servicer's coroutine
to the loop and waits for its answer. The servicer code (V2GrpcServicer,
ModelHealth) is the same for both engines; only this adapter differs.

The hand-off wakes the loop once per burst rather than once per call: calls
that arrive while a wake-up is pending ride along, so the loop starts them
together and the batcher sees them together.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from types import SimpleNamespace
from typing import Any

import grpc

_END = object()  # the end of a response stream


class LoopHandoff:
    """Runs coroutines submitted from any thread as tasks on one loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: deque[tuple[Coroutine[Any, Any, Any], concurrent.futures.Future[Any]]] = (
            deque()
        )
        self._wake_pending = False

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._pending.append((coro, future))
        # deque.append and a bool store are atomic under the GIL. Two threads
        # may both see False and both wake the loop: an empty drain, harmless.
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon_threadsafe(self._drain)
        return future

    def _drain(self) -> None:
        # Cleared before popping: a call appended from here on either is popped
        # below or finds the flag clear and schedules the next drain.
        self._wake_pending = False
        pending = self._pending
        create_task = self.loop.create_task
        while pending:
            coro, future = pending.popleft()
            if not future.set_running_or_notify_cancel():
                coro.close()  # the call ended before it started
                continue
            task = create_task(coro)
            future.task = task  # type: ignore[attr-defined]  # an attribute of our own, for cancel()
            task.add_done_callback(functools.partial(_settle, future))

    def cancel(self, future: concurrent.futures.Future[Any]) -> None:
        """The call ended (cancelled, deadline passed): drop its work."""
        if future.done():
            return
        if not future.cancel():  # already running on the loop
            task = getattr(future, "task", None)
            if task is not None:
                self.loop.call_soon_threadsafe(task.cancel)


def _settle(future: concurrent.futures.Future[Any], task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        future.set_exception(concurrent.futures.CancelledError())
    elif (error := task.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(task.result())


class _Abort(Exception):
    """`await context.abort(...)` on the loop: the handler thread ends the call."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, str], ...]
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


class LoopContext:
    """The grpc.aio ServicerContext methods our servicers use, over a threaded
    server's context. Metadata calls go straight through (grpc guards them
    with the call's own lock); `write` queues a message for the handler thread."""

    def __init__(
        self, context: grpc.ServicerContext, replies: queue.SimpleQueue[Any] | None = None
    ) -> None:
        self._context = context
        self._replies = replies

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._context.set_trailing_metadata(metadata)

    async def send_initial_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._context.send_initial_metadata(metadata)

    async def write(self, message: Any) -> None:
        assert self._replies is not None, "write() on a call that answers once"
        self._replies.put(message)

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        raise _Abort(code, details, trailing_metadata)


class RequestStream:
    """A client stream read by a thread of its own, consumed on the loop.

    At most `window` requests are read ahead of the consumer: past that the
    reader stops, and HTTP/2 flow control pushes back on the client. `close()`
    (the servicer is done with the stream) lets a reader waiting for room go.
    """

    def __init__(
        self, requests: Iterator[Any], loop: asyncio.AbstractEventLoop, window: int
    ) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._room = threading.Semaphore(window)
        self._loop = loop
        self._closed = False
        self.reader = threading.Thread(
            target=self._read, args=(requests,), name="grpc-stream-reader", daemon=True
        )
        self.reader.start()

    def _read(self, requests: Iterator[Any]) -> None:
        put = self._queue.put_nowait
        try:
            for request in requests:
                self._room.acquire()
                if self._closed:
                    return
                self._loop.call_soon_threadsafe(put, request)
        except Exception:  # noqa: BLE001 - the call was cancelled or broke: the stream ends
            pass
        finally:
            try:
                self._loop.call_soon_threadsafe(put, _END)
            except RuntimeError:  # the loop is closed: nobody reads any more
                pass

    def close(self) -> None:
        self._closed = True
        self._room.release()  # a reader waiting for room wakes, sees `closed` and ends

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        request = await self._queue.get()
        if request is _END:
            self._queue.put_nowait(_END)  # later reads end too
            raise StopAsyncIteration
        self._room.release()
        return request


class StreamLimit:
    """At most `limit` streams open at once (any thread may open and close them).

    On the threaded engine each open stream holds one of the server's threads
    for as long as it is open: streams past the limit are refused at once, so
    that however many streams clients open, unary calls still have threads."""

    SETTING = "server.grpc.max_open_streams"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._lock = threading.Lock()

    def try_open(self) -> bool:
        with self._lock:
            if self.open >= self.limit:
                return False
            self.open += 1
            return True

    def close(self) -> None:
        with self._lock:
            self.open -= 1

    def refusal(self) -> str:
        return (
            f"{self.limit} streams are open, the gateway's limit ({self.SETTING}); "
            "retry later, or use unary calls"
        )


class ThreadedBridge:
    """Sync handlers for a threaded grpc.server, each running an async servicer
    method on the loop. With `streams`, at most that many streams are open at once."""

    def __init__(
        self, handoff: LoopHandoff, stream_window: int, streams: StreamLimit | None = None
    ) -> None:
        self.handoff = handoff
        self.stream_window = stream_window
        self.streams = streams

    def _wait(self, future: concurrent.futures.Future[Any], context: grpc.ServicerContext) -> Any:
        try:
            return future.result()
        except _Abort as abort:
            if abort.trailing_metadata:
                context.set_trailing_metadata(abort.trailing_metadata)
            context.abort(abort.code, abort.details)
        except concurrent.futures.CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")

    def unary(
        self, method: Callable[[Any, LoopContext], Coroutine[Any, Any, Any]]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        handoff = self.handoff

        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            future = handoff.submit(method(request, LoopContext(context)))
            context.add_callback(lambda: handoff.cancel(future))
            return self._wait(future, context)

        return handle

    def _stream_out(
        self,
        prepare: Callable[[], Callable[[queue.SimpleQueue[Any]], Coroutine[Any, Any, None]]],
        context: grpc.ServicerContext,
    ) -> Iterator[Any]:
        """The replies of the coroutine `prepare()` makes, once the stream is admitted.

        A generator: gRPC starts it on the call's thread, so the stream counts
        as open from its first step (the admission) to its `finally`, which runs
        whether it ends, fails, or is dropped unfinished."""
        streams = self.streams
        if streams is not None and not streams.try_open():
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, streams.refusal())
        try:
            start = prepare()
            replies: queue.SimpleQueue[Any] = queue.SimpleQueue()

            async def run() -> None:
                try:
                    await start(replies)
                finally:
                    replies.put(_END)

            future = self.handoff.submit(run())
            context.add_callback(lambda: self.handoff.cancel(future))
            while (reply := replies.get()) is not _END:
                yield reply
            self._wait(future, context)
        finally:
            if streams is not None:
                streams.close()

    def server_stream(
        self, method: Callable[[Any, LoopContext], AsyncIterator[Any]]
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            async def start(replies: queue.SimpleQueue[Any]) -> None:
                async for reply in method(request, LoopContext(context, replies)):
                    replies.put(reply)

            return self._stream_out(lambda: start, context)

        return handle

    def bidi_stream(
        self, method: Callable[[AsyncIterator[Any], LoopContext], Awaitable[None]]
    ) -> Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]]:
        def handle(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            def prepare() -> Callable[[queue.SimpleQueue[Any]], Coroutine[Any, Any, None]]:
                # Its reader thread starts only for an admitted stream.
                stream = RequestStream(requests, self.handoff.loop, self.stream_window)

                async def start(replies: queue.SimpleQueue[Any]) -> None:
                    try:
                        await method(stream, LoopContext(context, replies))
                    finally:
                        stream.close()

                return start

            return self._stream_out(prepare, context)

        return handle


def bridge_servicer(
    bridge: ThreadedBridge,
    servicer: object,
    *,
    unary: tuple[str, ...] = (),
    server_stream: tuple[str, ...] = (),
    bidi_stream: tuple[str, ...] = (),
) -> SimpleNamespace:
    """An object with the servicer's methods as sync handlers, for the
    generated `add_*Servicer_to_server` functions (which only look them up)."""
    methods: dict[str, Any] = {}
    for name in unary:
        methods[name] = bridge.unary(getattr(servicer, name))
    for name in server_stream:
        methods[name] = bridge.server_stream(getattr(servicer, name))
    for name in bidi_stream:
        methods[name] = bridge.bidi_stream(getattr(servicer, name))
    return SimpleNamespace(**methods)
