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
exporter (see otlp_export.py).

Why not the SDK's Tracer: its spans cost about 20 us each to create and 30 us
each to encode for OTLP (its exporter), on the one core that also serves
requests, and a request has five or six: tracing cut throughput by 60%. Here a
request's span (spans.py) gathers small rows for its descendants and becomes
plain tuples (span_record.py) in batches; the request path gathers values and
leaves names and attributes to the encoder. The request's span is parented
explicitly through `RequestContext.span` (a transport runs the pipeline in a
task of its own) and only an attempt is made current (a ContextVar) for the
backend code beneath it. Finished spans are batched (trace_export.Recorder);
a batch becomes the SDK's `ReadableSpan`s for an SDK exporter (console,
in-memory) or is encoded straight to OTLP protobuf (`otlp`, see otlp.py) and
posted from the event loop (otlp_export.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar, final

from gateway.observe import spans
from gateway.observe.span_record import KIND_CLIENT, KIND_INTERNAL, KIND_SERVER
from gateway.observe.spans import (
    Bounded,
    Span,
    child,
    expand,
    gather,
    ids,
    reason_of,
)
from gateway.observe.trace_export import build_recorder

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.sampling import Sampler

log = logging.getLogger("gateway.observe.tracing")

# The one switch the pipeline's hooks read: `if tracing.ENABLED: ...`.
ENABLED = False

DEFAULT_SERVICE_NAME = "inference-gateway"
EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
SERVICE_NAME_ENV = "OTEL_SERVICE_NAME"
SCOPE = "gateway"

V = TypeVar("V")

_sampler: Any = None
_follows_parent = False  # the sampler is the default parentbased_always_on
_propagator: Any = None
_get_span: Any = None  # opentelemetry.trace.get_current_span
_SERVER_KIND: Any = None
# The attempt span the current task works for (read by queues and vendor calls).
_CURRENT: ContextVar[Any] = ContextVar("gateway_trace_span", default=None)


_backend_pairs = Bounded("gateway.backend")
_attempt_pairs = Bounded("gateway.backend", "gateway.outcome")
_failed_attempt_pairs = Bounded("gateway.backend", "gateway.outcome", "gateway.error.reason")
_cache_pairs = Bounded("gateway.cache")
_reason_pairs = Bounded("gateway.error.reason")


# -- set-up ---------------------------------------------------------------------------


def setup(
    exporter: Any = None, *, service_name: str | None = None, batch: bool | None = None
) -> bool:
    """Start tracing and return whether it is on.

    With `exporter` (any SDK SpanExporter, e.g. InMemorySpanExporter in tests),
    spans go to it, each as it ends unless `batch`. Without, `OTEL_TRACES_EXPORTER`
    chooses: `otlp` (OTLP/HTTP protobuf), `console` (one JSON object per line
    on stdout) or `none`. Calling it again replaces the previous set-up (whose
    spans are exported first).
    """
    global ENABLED, _sampler, _propagator, _get_span, _SERVER_KIND, _follows_parent
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
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    shutdown()
    name = service_name or os.environ.get(SERVICE_NAME_ENV) or DEFAULT_SERVICE_NAME
    recorder, described = build_recorder(choice, exporter, name, SCOPE, bool(batch), expand)
    # The SDK's sampler, as OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG say.
    from opentelemetry.sdk.trace.sampling import DEFAULT_ON

    _sampler = TracerProvider(shutdown_on_exit=False).sampler
    default_on: Sampler = DEFAULT_ON  # its own get_description() is unannotated
    _follows_parent = _sampler.get_description() == default_on.get_description()
    _propagator = TraceContextTextMapPropagator()
    _get_span = trace.get_current_span
    _SERVER_KIND = trace.SpanKind.SERVER
    spans.recorder = recorder
    ENABLED = True
    log.info(
        "tracing on: service %s, exporter %s, sampler %s",
        name,
        described,
        _sampler.get_description(),
    )
    return True


def flush() -> None:
    """Export the spans still pending (a no-op while off), blocking."""
    if spans.recorder is not None:
        spans.recorder.flush()


async def flush_async() -> None:
    """Export the spans still pending and those in flight, on the serving loop:
    what the gateway does as it stops (a no-op while off)."""
    if spans.recorder is not None:
        await spans.recorder.flush_async()


def shutdown() -> None:
    """Export what is pending and turn tracing off."""
    global ENABLED
    ENABLED = False
    recorder, spans.recorder = spans.recorder, None
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
    span: Span | None = ctx.span
    if span is not None:
        return span.trace_id.hex()
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


def request_span(ctx: Any) -> Span:
    """The request's span, started (back at the request's arrival) on first use."""
    span: Span | None = ctx.span
    if span is not None:
        return span
    context = ctx.trace_parent
    caller = _get_span(context).get_span_context() if context is not None else None
    if caller is not None and caller.is_valid:
        trace_id, parent_id = caller.trace_id, caller.span_id.to_bytes(8, "big")
    else:
        trace_id, parent_id, caller = ids.getrandbits(128) or 1, None, None
    if _follows_parent:  # the default sampler: no need to ask it
        sampled = caller is None or caller.trace_flags.sampled
        state = caller.trace_state if caller is not None else None
    else:
        decision = _sampler.should_sample(context, trace_id, ctx.protocol, _SERVER_KIND)
        sampled = decision.decision.is_sampled()
        state = decision.trace_state
    span = ctx.span = Span(
        None,
        trace_id.to_bytes(16, "big"),
        parent_id,
        state.to_header() if state else "",
        sampled,
        KIND_SERVER,
        start_ns=time.time_ns() - int((time.perf_counter() - ctx.started) * 1e9),
    )
    span.remote_parent = caller is not None and caller.is_remote
    span.children = []
    return span


def start(ctx: Any, name: str) -> Span:
    """A child span of the request's span; end it with `end` (or its `end()`)."""
    parent = ctx.span or request_span(ctx)
    if not parent.sampled:
        return parent  # nothing to record; its end() records nothing
    return child(name, parent)


def step(ctx: Any, name: str, start_ns: int, error: Any = None) -> None:
    """Record a finished child span of the request's span that ran from
    `start_ns` (time.time_ns()) until now: for steps with nothing beneath them
    (validation), no Span object is made."""
    request = ctx.span or request_span(ctx)
    if not request.sampled:
        return
    row: tuple[Any, ...]
    if error is None:
        row = (
            name,
            None,
            request.span_id,
            KIND_INTERNAL,
            start_ns,
            time.time_ns(),
            None,
            None,
            None,
        )
    else:
        reason, message = reason_of(error)
        row = (
            name,
            None,
            request.span_id,
            KIND_INTERNAL,
            start_ns,
            time.time_ns(),
            _reason_pairs(reason),
            message,
            None,
        )
    if request.end_ns:
        gather(request, row)
    else:
        request.children.append(row)  # type: ignore[union-attr]  # request_span gave it a list


def end(span: Span, error: Any = None) -> None:
    """End `span`; with `error` (a GatewayError or a reason word), marked failed."""
    if error is not None and span.sampled:
        span.fail(error)
    span.end()


def finish_request(ctx: Any, code: int, kind: str | None) -> None:
    """End the request's span once the transport answered, and hand it to the
    recorder with its descendants. Its name and attributes are left to the
    encoder (span_record.describe_request): here they are only gathered."""
    span = ctx.span or request_span(ctx)
    recorder = spans.recorder
    if not span.sampled or recorder is None or span.end_ns:
        return
    span.end_ns = time.time_ns()
    span.attributes = (
        kind,
        ctx.protocol,
        code,
        ctx.cache,
        ctx.attempts,
        ctx.model,
        ctx.backend,
        ctx.tenant,
        ctx.request_id,
        ctx.cost_usd,
    )
    if code >= 500:
        span.error = f"answered {code}"
    children = span.children
    recorder.add(span, 1 + len(children) if children else 1)


class Attempt:
    """One backend attempt's span, current while the backend works (so the queue,
    the batcher and vendor calls below it find their parent). It is its own
    span-in-progress: an attempt is on every request's path, so it is kept to
    the few fields a parent needs and one row at its end."""

    __slots__ = (
        "_token",
        "backend",
        "request",
        "sampled",
        "span_id",
        "start_ns",
        "trace_id",
        "trace_state",
    )

    def __init__(self, ctx: Any, backend: str) -> None:
        request = ctx.span or request_span(ctx)
        self.request = request
        self.trace_id = request.trace_id
        self.trace_state = request.trace_state
        self.sampled = request.sampled
        self.backend = backend
        if request.sampled:
            self.span_id = (ids.getrandbits(64) or 1).to_bytes(8, "big")  # new_span_id(), inlined
            self.start_ns = time.time_ns()
            self._token = _CURRENT.set(self)
        else:  # below it, the request's unsampled span carries the decision on
            self._token = _CURRENT.set(request)

    def traceparent(self) -> str:
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-01"

    def end(self, outcome: str, error: Any = None) -> None:
        _CURRENT.reset(self._token)
        if not self.sampled:
            return
        backend = self.backend
        message = None
        if error is None and outcome == "ok":
            attributes = _attempt_pairs(backend, outcome)
        else:
            reason, message = reason_of(outcome if error is None else error)
            attributes = _failed_attempt_pairs(backend, outcome, reason)
        name = _attempt_names.get(backend) or _attempt_name(backend)
        request = self.request
        row = (
            name,
            self.span_id,
            request.span_id,
            KIND_INTERNAL,
            self.start_ns,
            time.time_ns(),
            attributes,
            message,
            None,
        )
        if request.end_ns:
            gather(request, row)
        else:
            request.children.append(row)  # type: ignore[union-attr]  # request_span gave it a list


_attempt_names: dict[str, str] = {}


def _attempt_name(backend: str) -> str:
    name = f"attempt {backend}"
    if len(_attempt_names) < 4096:
        _attempt_names[backend] = name
    return name


class CacheLookup:
    """`ResponseCache.fetch` with a "cache lookup" span: it ends when the answer
    is known (a hit) or when computing starts (a miss), so the backend attempts
    of a miss are its siblings, not its children."""

    __slots__ = ("cache", "ctx")

    def __init__(self, cache: Any, ctx: Any) -> None:
        self.cache = cache
        self.ctx = ctx

    async def fetch(
        self,
        model: str,
        key: bytes,
        ttl_s: float | None,
        codec: Any,
        compute: Callable[[], Awaitable[V]],
        wait_s: float | None,
    ) -> tuple[V, str]:
        span = start(self.ctx, "cache lookup")
        open_ = span.sampled

        async def computing() -> V:
            nonlocal open_
            if open_:
                open_ = False
                span.attributes = _cache_pairs("miss")
                span.end()
            return await compute()

        try:
            value, result = await self.cache.fetch(model, key, ttl_s, codec, computing, wait_s)
        except BaseException as exc:
            if open_:
                end(span, exc if hasattr(exc, "message") else type(exc).__name__)
            raise
        if open_:
            span.attributes = _cache_pairs(result)
            span.end()
        return value, result


# -- local backends: queue wait and batch execution -----------------------------------


def queued() -> tuple[Any, int] | None:
    """Called as a request joins a backend's queue: its attempt's span and the
    time, or None when nothing is recorded for it."""
    parent = _CURRENT.get()
    if parent is None or not parent.sampled:
        return None
    return parent, time.time_ns()


def queue_waited(handle: tuple[Any, int], backend: str) -> None:
    """The request left the queue for execution: record its wait."""
    attempt = handle[0]
    request = attempt.request or attempt
    row = (
        "queue wait",
        None,
        attempt.span_id,
        KIND_INTERNAL,
        handle[1],
        time.time_ns(),
        _backend_pairs(backend),
        None,
        None,
    )
    if request.end_ns:
        gather(request, row)
    else:
        request.children.append(row)


def executed(
    handles: list[tuple[Any, int] | None],
    started_ns: int,
    backend: str,
    rows: int,
    error: Any = None,
) -> None:
    """A batch ran from `started_ns` until now: one span, as OpenTelemetry models
    work done for many requests at once. Its parent is the attempt of the
    first traced request in the batch; it links to the attempts of the others,
    whose own traces show their queue wait ending where it starts."""
    traced = [handle[0] for handle in handles if handle is not None]
    if not traced:
        return
    # A dict: batch sizes vary too much for the encoder to keep each combination.
    attributes = {
        "gateway.backend": backend,
        "gateway.batch.rows": rows,
        "gateway.batch.requests": len(handles),
    }
    message = None
    if error is not None:
        attributes["gateway.error.reason"] = getattr(error, "reason", None) or "error"
        message = getattr(error, "message", None) or str(error)
    links = [(span.trace_id, span.span_id) for span in traced[1:]] or None
    first = traced[0]
    gather(
        first.request or first,
        (
            "batch execution",
            None,
            first.span_id,
            KIND_INTERNAL,
            started_ns,
            time.time_ns(),
            attributes,
            message,
            links,
        ),
    )


# -- vendor calls ---------------------------------------------------------------------


@final  # no __bool__ in a subclass: `traced and traced.headers` is the headers or None
class VendorCall:
    """A client span for one HTTP try to a vendor, and the `traceparent` (and
    `tracestate`) headers that carry it there."""

    __slots__ = ("headers", "span")

    def __init__(self, backend: str, path: str) -> None:
        parent = _CURRENT.get()
        self.span: Span | None = None
        self.headers: dict[str, str] = {}
        if parent is None:
            return  # not within a request's attempt: nothing to continue
        carried = parent
        if parent.sampled:
            carried = self.span = child(
                f"POST {path}",
                parent,
                KIND_CLIENT,
                attributes={
                    "gateway.backend": backend,
                    "http.request.method": "POST",
                    "url.path": path,
                },
            )
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
