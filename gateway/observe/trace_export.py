"""Where finished span records go: batched for an exporter (Recorder), and,
for the SDK's exporters (console, in-memory), turned into its ReadableSpans.
OTLP encoding of the records is otlp.py; recording them is tracing.py."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from gateway.observe.span_record import KIND_CLIENT, KIND_INTERNAL, KIND_SERVER, describe_request

log = logging.getLogger("gateway.observe.tracing")


def readable_spans(
    resource: Any, scope_name: str, version: str
) -> Callable[[list[Any]], list[Any]]:
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
    kinds = {
        KIND_INTERNAL: SpanKind.INTERNAL,
        KIND_SERVER: SpanKind.SERVER,
        KIND_CLIENT: SpanKind.CLIENT,
    }
    sampled = TraceFlags(TraceFlags.SAMPLED)
    unset = Status(StatusCode.UNSET)
    states: dict[str, Any] = {"": TraceState()}

    def readable(record: tuple[Any, ...]) -> ReadableSpan:
        (
            name,
            trace_id,
            span_id,
            parent_id,
            remote_parent,
            kind,
            start_ns,
            end_ns,
            attributes,
            error,
            trace_state,
            links,
        ) = record
        if name is None:  # a request's span: its summary
            name, attributes = describe_request(attributes)
        elif type(attributes) is tuple:
            attributes = dict(attributes)
        state = states.get(trace_state)
        if state is None:
            if len(states) > 1024:  # callers' tracestates: keep the memo bounded
                states.clear()
            state = states[trace_state] = TraceState.from_header([trace_state])
        trace = int.from_bytes(trace_id, "big")
        parent = (
            None
            if not parent_id
            else SpanContext(
                trace,
                int.from_bytes(parent_id, "big"),
                is_remote=remote_parent,
                trace_flags=sampled,
                trace_state=state,
            )
        )
        return ReadableSpan(
            name=name,
            context=SpanContext(
                trace,
                int.from_bytes(span_id, "big"),
                is_remote=False,
                trace_flags=sampled,
                trace_state=state,
            ),
            parent=parent,
            resource=resource,
            attributes=attributes or {},
            kind=kinds[kind],
            instrumentation_scope=scope,
            status=unset if error is None else Status(StatusCode.ERROR, error),
            start_time=start_ns,
            end_time=end_ns,
            links=[
                Link(
                    SpanContext(
                        int.from_bytes(t, "big"),
                        int.from_bytes(s, "big"),
                        is_remote=False,
                        trace_flags=sampled,
                    )
                )
                for t, s in links
            ]
            if links
            else (),
        )

    def readables(records: list[tuple[Any, ...]]) -> list[ReadableSpan]:
        return [readable(r) for r in records]

    return readables


def build_recorder(
    choice: str,
    exporter: Any,
    service_name: str,
    scope: str,
    batch: bool,
    expand: Callable[[list[Any]], list[tuple[Any, ...]]],
) -> tuple[Recorder, str]:
    """The recorder for `choice` ("otlp", "console", or "given": `exporter`, any
    SDK SpanExporter), and a description of where it sends, for the log."""
    from opentelemetry.sdk.resources import Resource

    from gateway import __version__

    resource = Resource.create({"service.name": service_name})  # + OTEL_RESOURCE_ATTRIBUTES
    if choice == "otlp":
        from gateway.observe.otlp import Encoder, encode_span
        from gateway.observe.otlp_export import OtlpHttpExporter

        otlp = OtlpHttpExporter()
        # Spans are encoded as they are expanded; a batch is their bytes, wrapped.
        wrap = Encoder(resource.attributes, scope, __version__).wrap
        return Recorder(
            wrap,
            otlp.send,
            otlp.close,
            batch,
            expand=expand,
            post=otlp.post,
            posted=otlp.aclose,
            encode_span=encode_span,
        ), f"otlp to {otlp.endpoint}"
    if choice == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One line per span, so log collectors keep each span whole.
        exporter = ConsoleSpanExporter(
            out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n"
        )
    return Recorder(
        readable_spans(resource, scope, __version__),
        exporter.export,
        exporter.shutdown,
        batch,
        expand=expand,
    ), type(exporter).__name__


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name) or default))
    except ValueError:
        log.warning("%s: expected an integer, using %d", name, default)
        return default


# Answered requests are turned into span records this many at a time: in one
# pass the code and data stay in the CPU's caches, which a request's own path
# does not leave them in.
_RENDER_ITEMS = 32


class Recorder:
    """Where finished spans go.

    It is given answered request spans (with their descendants) and lone span
    records; `expand` turns those into records (span_record.py), 32 at a time.
    Batched as the SDK's BatchSpanProcessor batches: a batch is sent after
    OTEL_BSP_SCHEDULE_DELAY ms or as soon as it holds
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE spans; at most OTEL_BSP_MAX_QUEUE_SIZE spans
    wait, the excess is dropped. With `encode_span` (OTLP) records are encoded
    as they are made, and `encode` wraps a batch's pieces of encoding;
    otherwise (the SDK's exporters) a batch keeps the records and `encode`
    turns them into what the exporter takes.

    An exporter that can post from the loop (`post`: OTLP) sends there, one
    batch at a time, and `posted` closes its connections on that loop after a
    `flush_async`. Otherwise (the SDK's exporters, spans ended off the loop,
    a synchronous flush) one thread sends. The gateway serves from one core,
    where a thread that did more than wait on I/O would cost more in GIL
    hand-offs than its work. Unbatched (tests), each is exported as it comes.
    """

    def __init__(
        self,
        encode: Callable[[Any], Any],
        send: Callable[[Any], Any],
        close: Callable[[], None],
        batch: bool,
        *,
        expand: Callable[[list[Any]], list[tuple[Any, ...]]],
        post: Callable[[Any], Awaitable[Any]] | None = None,
        posted: Callable[[], Awaitable[None]] | None = None,
        encode_span: Callable[[tuple[Any, ...]], bytes] | None = None,
    ) -> None:
        self._encode = encode
        self._expand = expand
        self._encode_span = encode_span
        self._send = send
        self._close = close
        self._batch = batch
        self._post = post
        self._posted = posted
        self._max_queue = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self._max_batch = min(self._max_queue, _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
        self._delay_s = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000.0
        self._items: list[Any] = []  # as given, not expanded yet
        self._items_spans = 0  # how many spans they make
        self._open: list[Any] = []  # records, or pieces of their encoding
        self._open_count = 0
        self._full: list[Any] = []  # closed batches waiting to be sent
        self._waiting = 0  # spans given and not sent yet
        self._timer: Any = None  # the loop's handle of the next hand-over
        self._due_now = False  # that hand-over is for full batches, without delay
        self._posting: asyncio.Task[None] | None = None  # the batches in flight on the loop
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-export")
        self._sending: list[Future[Any]] = []
        self._lock = threading.Lock()
        self.dropped = 0

    def add(self, item: Any, spans: int = 1) -> None:
        """Take an answered request span (`spans`: it and its descendants) or a
        span record."""
        if not self._batch:
            records = self._expand([item])
            if self._encode_span is not None:
                self._export(self._encode([self._encode_span(r) for r in records]))
            else:
                self._export(self._encode(records))
            return
        if self._waiting + spans > self._max_queue:
            if not self.dropped:
                log.warning(
                    "tracing: the export queue is full (OTEL_BSP_MAX_QUEUE_SIZE %d): "
                    "dropping spans",
                    self._max_queue,
                )
            self.dropped += spans
            return
        items = self._items
        items.append(item)
        self._waiting += spans
        self._items_spans += spans
        if len(items) >= _RENDER_ITEMS or self._items_spans + self._open_count >= self._max_batch:
            self._render()
        full = bool(self._full)
        if (self._timer is not None and not full) or (full and self._posting is not None):
            return  # due in time, or the batches in flight take the full ones next
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # ended off the event loop: send what is full now
            if full:
                self._hand_over(everything=False)
            return
        if self._timer is not None:
            if self._due_now:
                return
            self._timer.cancel()
        self._due_now = full
        self._timer = loop.call_later(0 if full else self._delay_s, self._drain)

    def _render(self) -> None:
        """Expand the items given so far into the open batch, closing it each
        time it is full."""
        items, self._items, self._items_spans = self._items, [], 0
        try:
            records = self._expand(items)
        except Exception:
            log.exception("tracing: %d answered request(s) could not be recorded", len(items))
            return
        encode_span = self._encode_span
        start = 0
        while start < len(records):
            chunk = records[start : start + self._max_batch - self._open_count]
            start += len(chunk)
            if encode_span is None:
                self._open.extend(chunk)
            else:
                try:
                    self._open.append(b"".join([encode_span(r) for r in chunk]))
                except Exception:
                    log.exception("tracing: encoding %d span(s) failed", len(chunk))
                    continue
            self._open_count += len(chunk)
            if self._open_count >= self._max_batch:
                self._close_open()

    def _close_open(self) -> None:
        if self._open_count:
            self._full.append(self._open)
            self._open, self._open_count = [], 0

    def _drain(self) -> None:
        everything = not self._due_now  # the delay is over; else only full batches go
        self._timer, self._due_now = None, False
        if self._post is None:
            self._hand_over(everything)
        elif self._posting is None:
            payloads = self._take(all_=everything)
            if payloads:
                self._posting = asyncio.get_running_loop().create_task(self._post_all(payloads))
        # else the batches in flight take the full ones when they are done

    async def _post_all(self, payloads: list[Any]) -> None:
        try:
            while payloads:
                if not await self._post_each(payloads):
                    break  # the collector is not taking them: what waits goes next time
                payloads = self._take(all_=False)
        finally:
            self._posting = None
            if self._waiting and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._delay_s, self._drain)

    async def _post_each(self, payloads: list[Any]) -> bool:
        """Post the payloads in turn; after one that could not be delivered (the
        exporter has retried it within its timeout) the rest are dropped, so that
        a collector that is down holds neither memory nor a stopping gateway."""
        assert self._post is not None
        for sent, payload in enumerate(payloads):
            try:
                delivered = await self._post(payload)
            except Exception:  # an exporter's failure must not reach a request
                log.exception("tracing: exporting spans failed")
                delivered = False
            if delivered is False:
                if len(payloads) > sent + 1:
                    log.warning(
                        "tracing: %d more batch(es) of spans dropped with it",
                        len(payloads) - sent - 1,
                    )
                return False
        return True

    def flush(self) -> None:
        """Export everything waiting, and wait until it is sent (blocking;
        batches in flight on the loop are not waited for: see `flush_async`)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._due_now = None, False
        for future in self._hand_over():
            future.result()

    async def flush_async(self) -> None:
        """Export everything waiting and wait until it is sent, on the loop: what
        a gateway does as it stops."""
        if self._posting is not None:
            await self._posting
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._due_now = None, False
        if self._post is None:
            for future in self._hand_over():
                await asyncio.wrap_future(future)
        else:
            await self._post_each(self._take(all_=True))
            if self._posted is not None and self._posting is None:
                # The exporter's connections belong to this loop, which may be about
                # to end (a gateway stopping): closed on it. A later post reopens them.
                await self._posted()

    def _take(self, all_: bool) -> list[Any]:
        """The full batches as payloads; with `all_` everything waiting."""
        with self._lock:
            if all_:
                self._render()
                self._close_open()
            batches, self._full = self._full, []
            self._waiting = self._items_spans + self._open_count
        payloads = []
        for batch in batches:
            try:
                payloads.append(self._encode(batch))
            except Exception:
                log.exception("tracing: encoding a batch of spans failed")
        return payloads

    def _hand_over(self, everything: bool = True) -> list[Future[Any]]:
        """The full batches (and with `everything` the rest too) for the sender
        thread; returns what is being sent."""
        payloads = self._take(all_=everything)
        with self._lock:
            self._sending = [f for f in self._sending if not f.done()]
            self._sending += [self._sender.submit(self._export, p) for p in payloads]
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
