"""Where finished span records go: batched for an exporter (Recorder), and,
for the SDK's exporters (console, in-memory), turned into its ReadableSpans.
OTLP encoding of the records is otlp.py; recording them is tracing.py."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from gateway.observe.otlp import KIND_CLIENT, KIND_INTERNAL, KIND_SERVER

log = logging.getLogger("gateway.observe.tracing")


def readable_spans(resource: Any, scope_name: str, version: str) -> Callable[[list[Any]], list[Any]]:
    """Span records as the SDK's ReadableSpans, for an SDK exporter."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import (
        Link,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        TraceState,
    )

    scope = InstrumentationScope(scope_name, version)
    kinds = {KIND_INTERNAL: SpanKind.INTERNAL, KIND_SERVER: SpanKind.SERVER,
             KIND_CLIENT: SpanKind.CLIENT}
    sampled = TraceFlags(TraceFlags.SAMPLED)
    unset = Status(StatusCode.UNSET)
    states: dict[str, Any] = {"": TraceState()}

    def readable(record: tuple[Any, ...]) -> ReadableSpan:
        (name, trace_id, span_id, parent_id, remote_parent, kind, start_ns, end_ns,
         attributes, error, trace_state, links) = record
        state = states.get(trace_state)
        if state is None:
            if len(states) > 1024:  # callers' tracestates: keep the memo bounded
                states.clear()
            state = states[trace_state] = TraceState.from_header([trace_state])
        parent = None if not parent_id else SpanContext(
            trace_id, parent_id, is_remote=remote_parent, trace_flags=sampled, trace_state=state)
        return ReadableSpan(
            name=name,
            context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=sampled,
                                trace_state=state),
            parent=parent, resource=resource, attributes=attributes or {},
            kind=kinds[kind], instrumentation_scope=scope,
            status=unset if error is None else Status(StatusCode.ERROR, error),
            start_time=start_ns, end_time=end_ns,
            links=[Link(SpanContext(t, s, is_remote=False, trace_flags=sampled))
                   for t, s in links] if links else ())

    def readables(records: list[tuple[Any, ...]]) -> list[ReadableSpan]:
        return [readable(r) for r in records]

    return readables


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name) or default))
    except ValueError:
        log.warning("%s: expected an integer, using %d", name, default)
        return default


class Recorder:
    """Where finished spans go. Batched (the SDK's BatchSpanProcessor rules: sent
    every OTEL_BSP_SCHEDULE_DELAY ms, or as soon as OTEL_BSP_MAX_EXPORT_BATCH_SIZE
    wait, at most OTEL_BSP_MAX_QUEUE_SIZE), a batch is encoded on the event loop
    between requests and sent by one thread that only does I/O: the gateway
    serves from one core, where a thread that held the GIL to encode would cost
    more in GIL hand-offs than the encoding itself. Unbatched (tests), each span
    is exported as it ends."""

    def __init__(self, encode: Callable[[list[Any]], Any], send: Callable[[Any], Any],
                 close: Callable[[], None], batch: bool) -> None:
        self._encode = encode
        self._send = send
        self._close = close
        self._batch = batch
        self._queue: list[tuple[Any, ...]] = []
        self._max_queue = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self._max_batch = min(self._max_queue, _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
        self._delay_s = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000.0
        self._timer: Any = None  # the loop's handle of the next hand-over
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-export")
        self._sending: list[Future[Any]] = []
        self._lock = threading.Lock()
        self.dropped = 0

    def add(self, record: tuple[Any, ...]) -> None:
        if not self._batch:
            self._export(self._encode([record]))
            return
        queue = self._queue
        if len(queue) >= self._max_queue:
            if not self.dropped:
                log.warning("tracing: the export queue is full (OTEL_BSP_MAX_QUEUE_SIZE %d): "
                            "dropping spans", self._max_queue)
            self.dropped += 1
            return
        queue.append(record)
        if self._timer is None or len(queue) == self._max_batch:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # ended off the event loop: send what is full now
                if len(queue) >= self._max_batch:
                    self._hand_over()
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_later(0 if len(queue) >= self._max_batch else self._delay_s,
                                          self._drain)

    def _drain(self) -> None:
        self._timer = None
        self._hand_over()

    def flush(self) -> None:
        """Export everything queued, and wait until it is sent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for future in self._hand_over():
            future.result()

    def _hand_over(self) -> list[Future[Any]]:
        """Encode what is queued, in batches, for the sender; returns what is being sent."""
        with self._lock:
            queue, self._queue = self._queue, []
            size = self._max_batch
            self._sending = [f for f in self._sending if not f.done()]
            for i in range(0, len(queue), size):
                try:
                    payload = self._encode(queue[i:i + size])
                except Exception:
                    log.exception("tracing: encoding %d span(s) failed", len(queue[i:i + size]))
                    continue
                self._sending.append(self._sender.submit(self._export, payload))
            return list(self._sending)

    def _export(self, payload: Any) -> None:
        try:
            self._send(payload)
        except Exception:  # an exporter's failure must not reach a request
            log.exception("tracing: exporting spans failed")

    def shutdown(self) -> None:
        self.flush()
        self._sender.shutdown(wait=True)
        self._close()
