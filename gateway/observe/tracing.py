"""Distributed tracing (OpenTelemetry): one span per request, with child spans
for validation, the cache lookup, each backend attempt (so fallbacks show), the
queue wait of local backends, and each vendor HTTP call. A batch execution is
one span for all the requests it served (OpenTelemetry's model of batching):
under the first traced request's attempt, linked to the others' attempts.

Off unless `OTEL_TRACES_EXPORTER` says `otlp` or `console` (the standard
variable; `none` and unset mean off), or a test hands `setup()` an exporter.
Off, nothing is set up and every hook in the pipeline is guarded by the module
flag `ENABLED` (read as `tracing.ENABLED`, never imported by value): the
request path builds no span, no attribute dict and no context manager.

On, the W3C `traceparent`/`tracestate` of the caller (HTTP headers; gRPC
metadata through `context_from_headers`) is the parent of the request span,
and each vendor call sends its own (`VendorCall`). The standard variables
apply: `OTEL_SERVICE_NAME` (default "inference-gateway") and
`OTEL_RESOURCE_ATTRIBUTES` make the resource, `OTEL_TRACES_SAMPLER`/`_ARG` the
sampler (the SDK's, asked once per request: children follow their request),
`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE` and
`OTEL_BSP_MAX_EXPORT_BATCH_SIZE` the batching, `OTEL_EXPORTER_OTLP_*` the OTLP
exporter (see otlp.py).

Why not the SDK's Tracer: its spans cost about 20 us each to create and 30 us
each to encode for OTLP (its exporter), on the one core that also serves
requests, and a request has five or six: tracing cut throughput by 60%. Here a
span is a small object (`Span`) while it runs and a plain tuple once it ends;
the request's span is parented explicitly through `RequestContext.span` (a
transport runs the pipeline in a task of its own) and only an attempt is made
current (a ContextVar) for the backend code beneath it. Finished spans are
batched (trace_export.Recorder); a batch becomes the SDK's `ReadableSpan`s for
an SDK exporter (console, in-memory) or is encoded straight to OTLP protobuf
(`otlp`, see otlp.py), and one thread sends it.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar

from gateway.observe.otlp import KIND_CLIENT, KIND_INTERNAL, KIND_SERVER
from gateway.observe.trace_export import Recorder, readable_spans

log = logging.getLogger("gateway.observe.tracing")

# The one switch the pipeline's hooks read: `if tracing.ENABLED: ...`.
ENABLED = False

DEFAULT_SERVICE_NAME = "inference-gateway"
EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
SERVICE_NAME_ENV = "OTEL_SERVICE_NAME"
SCOPE = "gateway"

# Request span names per model kind: "infer digits", "chat.completions chat".
_OPERATIONS = {"tensor": "infer", "chat": "chat.completions", "embeddings": "embeddings"}

V = TypeVar("V")

_recorder: Recorder | None = None
_sampler: Any = None
_follows_parent = False  # the sampler is the default parentbased_always_on
_propagator: Any = None
_get_span: Any = None  # opentelemetry.trace.get_current_span
_SERVER_KIND: Any = None
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)  # a forked worker draws its own ids
# The attempt span the current task works for (read by queues and vendor calls).
_CURRENT: ContextVar["Span | None"] = ContextVar("gateway_trace_span", default=None)


class Span:
    """A span being recorded: what OTLP carries and nothing more. Only sampled
    spans are recorded; a request that is not sampled keeps one unsampled span
    so that its trace id and decision still reach logs and vendors."""

    __slots__ = ("name", "trace_id", "span_id", "parent_id", "remote_parent", "kind",
                 "start_ns", "end_ns", "attributes", "error", "trace_state", "sampled")

    def __init__(self, name: str, parent: "Span", kind: int = KIND_INTERNAL,
                 attributes: dict[str, Any] | None = None, start_ns: int = 0) -> None:
        self.name = name
        self.trace_id = parent.trace_id
        self.span_id = _ids.getrandbits(64) or 1
        self.parent_id = parent.span_id
        self.remote_parent = False
        self.kind = kind
        self.start_ns = start_ns or time.time_ns()
        self.end_ns = 0
        self.attributes = attributes
        self.error: str | None = None
        self.trace_state = parent.trace_state
        self.sampled = parent.sampled

    def is_recording(self) -> bool:
        return self.sampled

    def set_attribute(self, key: str, value: Any) -> None:
        if self.attributes is None:
            self.attributes = {key: value}
        else:
            self.attributes[key] = value

    def fail(self, error: Any) -> None:
        """Mark the span failed: `error` is a GatewayError or a reason word."""
        if isinstance(error, str):
            reason, message = error, error
        else:
            reason = getattr(error, "reason", None) or type(error).__name__
            message = getattr(error, "message", None) or str(error) or reason
        self.set_attribute("gateway.error.reason", reason)
        self.error = message

    def end(self, end_ns: int = 0) -> None:
        if self.sampled and not self.end_ns:
            self.end_ns = end_ns or time.time_ns()
            recorder = _recorder
            if recorder is not None:
                recorder.add(self.record())

    def record(self) -> tuple[Any, ...]:
        """The finished span as the exporters take it: a plain tuple of plain
        values, which the garbage collector stops tracking (a Span object waiting
        for export would be promoted to the old generation and cost collections)."""
        return (self.name, self.trace_id, self.span_id, self.parent_id, self.remote_parent,
                self.kind, self.start_ns, self.end_ns, self.attributes, self.error,
                self.trace_state, None)

    def traceparent(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"


# -- set-up ---------------------------------------------------------------------------


def setup(exporter: Any = None, *, service_name: str | None = None,
          batch: bool | None = None) -> bool:
    """Start tracing and return whether it is on.

    With `exporter` (any SDK SpanExporter, e.g. InMemorySpanExporter in tests),
    spans go to it, each as it ends unless `batch`. Without, `OTEL_TRACES_EXPORTER`
    chooses: `otlp` (OTLP/HTTP protobuf), `console` (one JSON object per line
    on stdout) or `none`. Calling it again replaces the previous set-up (whose
    spans are exported first).
    """
    global ENABLED, _recorder, _sampler, _propagator, _get_span, _SERVER_KIND, _follows_parent
    choice = "given"
    if exporter is None:
        choice = (os.environ.get(EXPORTER_ENV) or "none").strip().lower()
        if choice not in ("none", "otlp", "console"):
            raise RuntimeError(f"{EXPORTER_ENV}: expected otlp, console or none, got {choice!r}")
        if choice == "none":
            shutdown()
            return False
        batch = True if batch is None else batch
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from gateway import __version__

    shutdown()
    name = service_name or os.environ.get(SERVICE_NAME_ENV) or DEFAULT_SERVICE_NAME
    resource = Resource.create({"service.name": name})  # + OTEL_RESOURCE_ATTRIBUTES
    if choice == "otlp":
        from gateway.observe.otlp import Encoder, OtlpHttpExporter

        otlp = OtlpHttpExporter()
        encode: Callable[[list[Any]], Any] = Encoder(resource.attributes, SCOPE,
                                                     __version__).encode
        send: Callable[[Any], Any] = otlp.send
        close: Callable[[], None] = otlp.close
        described = f"otlp to {otlp.endpoint}"
    else:
        if choice == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            # One line per span, so log collectors keep each span whole.
            exporter = ConsoleSpanExporter(
                out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
        encode = readable_spans(resource, SCOPE, __version__)
        send, close = exporter.export, exporter.shutdown
        described = type(exporter).__name__
    # The SDK's sampler, as OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG say.
    from opentelemetry.sdk.trace.sampling import DEFAULT_ON

    _sampler = TracerProvider(shutdown_on_exit=False).sampler
    _follows_parent = _sampler.get_description() == DEFAULT_ON.get_description()
    _propagator = TraceContextTextMapPropagator()
    _get_span = trace.get_current_span
    _SERVER_KIND = trace.SpanKind.SERVER
    _recorder = Recorder(encode, send, close, bool(batch))
    ENABLED = True
    log.info("tracing on: service %s, exporter %s, sampler %s", name, described,
             _sampler.get_description())
    return True


def flush() -> None:
    """Export the spans still pending (a no-op while off)."""
    if _recorder is not None:
        _recorder.flush()


def shutdown() -> None:
    """Export what is pending and turn tracing off."""
    global ENABLED, _recorder
    ENABLED = False
    recorder, _recorder = _recorder, None
    if recorder is not None:
        recorder.shutdown()


# -- context in and out ----------------------------------------------------------------


def context_from_headers(headers: Mapping[Any, Any]) -> Any:
    """The caller's trace context from `traceparent`/`tracestate` (HTTP headers as
    ASGI bytes or str, gRPC metadata), or None when it sent none (or tracing is off).
    A transport stores it in `RequestContext.trace_parent`."""
    if not ENABLED:
        return None
    carrier = {}
    for name in ("traceparent", "tracestate"):
        value = headers.get(name)
        if value is None:
            value = headers.get(name.encode())
        if value is not None:
            carrier[name] = value.decode("latin-1") if isinstance(value, bytes) else value
    if "traceparent" not in carrier:
        return None
    return _propagator.extract(carrier)


def trace_id_of(ctx: Any) -> str | None:
    """The request's trace id (32 hex digits): its span's, else the caller's
    `traceparent` (so logs and audit records match the caller's trace even when
    the gateway exports none), else None."""
    span = ctx.span
    if span is not None:
        return f"{span.trace_id:032x}"
    headers = ctx.headers
    if headers is None:
        return None
    value = headers.get(b"traceparent") or headers.get("traceparent")
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    # version "-" trace-id "-" parent-id "-" flags
    if isinstance(value, str) and len(value) >= 55 and value[2] == "-" and value[35] == "-":
        trace_id = value[3:35].lower()
        if trace_id != "0" * 32 and all(c in "0123456789abcdef" for c in trace_id):
            return trace_id
    return None


# -- the request span and its children (call only when ENABLED) ---------------------


class _Root:
    """The parent of a request span: the caller's span context, or nothing."""

    __slots__ = ("trace_id", "span_id", "trace_state", "sampled")


def request_span(ctx: Any) -> Span:
    """The request's span, started (back at the request's arrival) on first use."""
    span = ctx.span
    if span is not None:
        return span
    parent = _Root()
    context = ctx.trace_parent
    caller = _get_span(context).get_span_context() if context is not None else None
    if caller is not None and caller.is_valid:
        parent.trace_id, parent.span_id = caller.trace_id, caller.span_id
    else:
        parent.trace_id, parent.span_id, caller = _ids.getrandbits(128) or 1, 0, None
    if _follows_parent:  # the default sampler: no need to ask it
        parent.sampled = caller is None or caller.trace_flags.sampled
        state = caller.trace_state if caller is not None else None
    else:
        decision = _sampler.should_sample(context, parent.trace_id, ctx.protocol, _SERVER_KIND)
        parent.sampled = decision.decision.is_sampled()
        state = decision.trace_state
    parent.trace_state = state.to_header() if state else ""
    span = ctx.span = Span(ctx.protocol, parent, KIND_SERVER,  # type: ignore[arg-type]
                           start_ns=time.time_ns() - int((time.perf_counter() - ctx.started) * 1e9))
    span.remote_parent = caller is not None and caller.is_remote
    return span


def start(ctx: Any, name: str) -> Span:
    """A child span of the request's span; end it with `end` (or its `end()`)."""
    parent = request_span(ctx)
    if not parent.sampled:
        return parent  # nothing to record; its end() records nothing
    return Span(name, parent)


def step(ctx: Any, name: str, start_ns: int, error: Any = None) -> None:
    """Record a finished child span of the request's span that ran from
    `start_ns` (time.time_ns()) until now: for steps with nothing beneath them
    (validation), no Span object is made."""
    parent = ctx.span or request_span(ctx)
    if not parent.sampled:
        return
    attributes = message = None
    if error is not None:
        if isinstance(error, str):
            reason = message = error
        else:
            reason = getattr(error, "reason", None) or type(error).__name__
            message = getattr(error, "message", None) or str(error) or reason
        attributes = {"gateway.error.reason": reason}
    _child_record(name, parent, start_ns, time.time_ns(), attributes, message)


def end(span: Span, error: Any = None) -> None:
    """End `span`; with `error` (a GatewayError or a reason word), marked failed."""
    if error is not None and span.sampled:
        span.fail(error)
    span.end()


class RequestAttributes(dict):  # type: ignore[type-arg]
    """A request span's attributes, and `bounded`: the values of all but the
    request id when they are of bounded variety (None when one is not, e.g. a
    cost), the key under which the OTLP encoder keeps them encoded."""

    __slots__ = ("bounded",)


def finish_request(ctx: Any, code: int, kind: str | None) -> None:
    """Name, describe and end the request's span once the transport answered."""
    span = ctx.span or request_span(ctx)
    if not span.sampled:
        return
    operation = _OPERATIONS.get(kind or "") or ("openai" if ctx.protocol == "openai" else "infer")
    span.name = f"{operation} {ctx.model}" if ctx.model else operation
    attributes = span.attributes = RequestAttributes()
    attributes["gateway.protocol"] = ctx.protocol
    attributes["gateway.request_id"] = ctx.request_id
    attributes["gateway.status_code"] = code
    attributes["gateway.cache"] = ctx.cache
    attributes["gateway.attempts"] = ctx.attempts
    attributes.bounded = None if ctx.cost_usd is not None else (
        ctx.protocol, code, ctx.cache, ctx.attempts, ctx.model, ctx.backend, ctx.tenant)
    if ctx.model is not None:
        attributes["gateway.model"] = ctx.model
    if ctx.backend is not None:
        attributes["gateway.backend"] = ctx.backend
    if ctx.tenant is not None:
        attributes["gateway.tenant"] = ctx.tenant
    if ctx.cost_usd is not None:
        attributes["gateway.cost_usd"] = ctx.cost_usd
    if code >= 500:
        span.error = f"answered {code}"
    span.end()


class Attempt:
    """One backend attempt's span, current while the backend works (so the queue,
    the batcher and vendor calls below it find their parent)."""

    __slots__ = ("span", "_token")

    def __init__(self, ctx: Any, backend: str) -> None:
        parent = ctx.span or request_span(ctx)
        self.span = Span(f"attempt {backend}", parent, attributes={"gateway.backend": backend}) \
            if parent.sampled else parent
        self._token = _CURRENT.set(self.span)

    def end(self, outcome: str, error: Any = None) -> None:
        _CURRENT.reset(self._token)
        span = self.span
        if span.sampled:
            span.set_attribute("gateway.outcome", outcome)
            if error is not None:
                span.fail(error)
            elif outcome != "ok":
                span.fail(outcome)
            span.end()


class CacheLookup:
    """`ResponseCache.fetch` with a "cache lookup" span: it ends when the answer
    is known (a hit) or when computing starts (a miss), so the backend attempts
    of a miss are its siblings, not its children."""

    __slots__ = ("cache", "ctx")

    def __init__(self, cache: Any, ctx: Any) -> None:
        self.cache = cache
        self.ctx = ctx

    async def fetch(self, model: str, key: bytes, ttl_s: float | None, codec: Any,
                    compute: Callable[[], Awaitable[V]], wait_s: float | None) -> tuple[V, str]:
        span = start(self.ctx, "cache lookup")
        open_ = span.sampled

        async def computing() -> V:
            nonlocal open_
            if open_:
                open_ = False
                span.set_attribute("gateway.cache", "miss")
                span.end()
            return await compute()

        try:
            value, result = await self.cache.fetch(model, key, ttl_s, codec, computing, wait_s)
        except BaseException as exc:
            if open_:
                end(span, exc if hasattr(exc, "message") else type(exc).__name__)
            raise
        if open_:
            span.set_attribute("gateway.cache", result)
            span.end()
        return value, result


# -- local backends: queue wait and batch execution -----------------------------------


def queued() -> tuple[Span, int] | None:
    """Called as a request joins a backend's queue: its attempt's span and the
    time, or None when nothing is recorded for it."""
    parent = _CURRENT.get()
    if parent is None or not parent.sampled:
        return None
    return parent, time.time_ns()


def _child_record(name: str, parent: Span, start_ns: int, end_ns: int,
                  attributes: dict[str, Any] | None, error: str | None = None,
                  links: list[tuple[int, int]] | None = None) -> None:
    """Record a finished child span straight away (no Span object: these are
    recorded on the request path)."""
    recorder = _recorder
    if recorder is not None:
        recorder.add((name, parent.trace_id, _ids.getrandbits(64) or 1, parent.span_id, False,
                      KIND_INTERNAL, start_ns, end_ns, attributes, error, parent.trace_state,
                      links))


def queue_waited(handle: tuple[Span, int], backend: str) -> None:
    """The request left the queue for execution: record its wait."""
    _child_record("queue wait", handle[0], handle[1], time.time_ns(),
                  {"gateway.backend": backend})


def executed(handles: list[tuple[Span, int] | None], started_ns: int, backend: str,
             rows: int, error: Any = None) -> None:
    """A batch ran from `started_ns` until now: one span, as OpenTelemetry models
    work done for many requests at once. Its parent is the attempt of the
    first traced request in the batch; it links to the attempts of the others,
    whose own traces show their queue wait ending where it starts."""
    traced = [handle[0] for handle in handles if handle is not None]
    if not traced:
        return
    attributes = {"gateway.backend": backend, "gateway.batch.rows": rows,
                  "gateway.batch.requests": len(handles)}
    message = None
    if error is not None:
        attributes["gateway.error.reason"] = getattr(error, "reason", None) or "error"
        message = getattr(error, "message", None) or str(error)
    links = [(span.trace_id, span.span_id) for span in traced[1:]] or None
    _child_record("batch execution", traced[0], started_ns, time.time_ns(), attributes, message,
                  links)


# -- vendor calls ---------------------------------------------------------------------


class VendorCall:
    """A client span for one HTTP try to a vendor, and the `traceparent` (and
    `tracestate`) headers that carry it there."""

    __slots__ = ("span", "headers")

    def __init__(self, backend: str, path: str) -> None:
        parent = _CURRENT.get()
        self.span: Span | None = None
        self.headers: dict[str, str] = {}
        if parent is None:
            return  # not within a request's attempt: nothing to continue
        carried = parent
        if parent.sampled:
            carried = self.span = Span(f"POST {path}", parent, KIND_CLIENT, attributes={
                "gateway.backend": backend, "http.request.method": "POST", "url.path": path})
        self.headers["traceparent"] = carried.traceparent()
        if carried.trace_state:
            self.headers["tracestate"] = carried.trace_state

    def end(self, status: int | None, error: Any = None) -> None:
        span = self.span
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.fail(f"HTTP {status}")
        if error is not None:
            span.fail(error if isinstance(error, str) else type(error).__name__)
        span.end()
