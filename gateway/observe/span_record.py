"""The finished span as a plain tuple: what tracing.py records, otlp.py encodes
and trace_export.py turns into the SDK's ReadableSpans.

    (name, trace_id, span_id, parent_id, remote_parent, kind, start_ns, end_ns,
     attributes, error, trace_state, links)

- ids are bytes in W3C order (16 for a trace, 8 for a span), as OTLP carries
  them, so that encoding copies them; `parent_id` is None for a root span;
- `attributes` is None, a dict, or a tuple of (key, value) pairs: a tuple says
  its values are of bounded variety (a backend, an outcome), so an encoder may
  keep the encoding of the whole (name, attributes, kind) combination;
- a request's span (kind SERVER) has name None and a `RequestSummary` as
  attributes: its name and attributes are derived (`describe_request`), so the
  request path only gathers values and an encoder reuses the bounded part;
- `error` is the status message of a failed span, else None; `trace_state` the
  W3C tracestate header ("" when none); `links` None or (trace_id, span_id) pairs.
"""

from __future__ import annotations

from typing import Any

# SpanKind numbers of opentelemetry/proto/trace/v1/trace.proto.
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT = 1, 2, 3

# A request span's attributes as recorded: a plain tuple of
#   (model kind, protocol, status code, cache, attempts, model, backend, tenant,
#    request id, cost in USD)
# The first eight are of bounded variety (the configured names, a status, a
# cache result) and are the key an encoder keeps the name and their encoding by.
RequestSummary = tuple[
    str | None, str, int, str, int, str | None, str | None, str | None, str, float | None
]
BOUNDED = 8
REQUEST_ID = "gateway.request_id"
COST = "gateway.cost_usd"

# Request span names per model kind: "infer digits", "chat.completions chat".
_OPERATIONS = {"tensor": "infer", "chat": "chat.completions", "embeddings": "embeddings"}


def describe_request(summary: RequestSummary) -> tuple[str, dict[str, Any]]:
    """A request span's name and attributes, in the order they are encoded: the
    bounded ones, then the request id, then the cost (when there is one)."""
    kind, protocol, code, cache, attempts, model, backend, tenant, request_id, cost = summary
    operation = _OPERATIONS.get(kind or "") or ("openai" if protocol == "openai" else "infer")
    attributes: dict[str, Any] = {
        "gateway.protocol": protocol,
        "gateway.status_code": code,
        "gateway.cache": cache,
        "gateway.attempts": attempts,
    }
    if model is not None:
        attributes["gateway.model"] = model
    if backend is not None:
        attributes["gateway.backend"] = backend
    if tenant is not None:
        attributes["gateway.tenant"] = tenant
    attributes[REQUEST_ID] = request_id
    if cost is not None:
        attributes[COST] = cost
    return (f"{operation} {model}" if model else operation), attributes
