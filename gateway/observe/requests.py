"""Per-request metrics, recorded once by each transport when it answers:
`gateway_requests_total{model,protocol,code}`,
`gateway_request_duration_seconds{model,protocol}` and
`gateway_overhead_seconds{model,protocol}` (total minus backend waits).

The model label is a configured model's name or `_none` (unknown or not yet
resolved): never the caller's raw text, so label sets stay bounded.
"""

from __future__ import annotations

import time

from gateway.core.types import RequestContext
from gateway.observe.metrics import OVERHEAD, REQUEST_DURATION, REQUESTS

_NO_MODEL = "_none"
# Label children cached per (model, protocol[, code]): .labels() costs a lock and a
# tuple hash; the cache makes it one dict lookup on the hot path.
_children: dict[tuple[str, ...], object] = {}


def _child(metric: object, *labels: str) -> object:
    key = (id(metric), *labels)
    child = _children.get(key)  # type: ignore[arg-type]
    if child is None:
        child = _children[key] = metric.labels(*labels)  # type: ignore[attr-defined]
    return child


def observe_request(ctx: RequestContext, code: int) -> float:
    """Count one answered request; returns its total duration in seconds."""
    total = time.perf_counter() - ctx.started
    model = ctx.model or _NO_MODEL
    protocol = ctx.protocol
    _child(REQUESTS, model, protocol, str(code)).inc()  # type: ignore[attr-defined]
    _child(REQUEST_DURATION, model, protocol).observe(total)  # type: ignore[attr-defined]
    _child(OVERHEAD, model, protocol).observe(  # type: ignore[attr-defined]
        max(0.0, total - ctx.backend_wait_s))
    return total
