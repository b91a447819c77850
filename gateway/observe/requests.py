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
from gateway.observe.metrics import (
    OVERHEAD,
    REQUEST_DURATION,
    REQUESTS,
    FastChildren,
    fast_inc,
    fast_observe,
)

_NO_MODEL = "_none"
_count = FastChildren(REQUESTS, fast_inc)
_duration = FastChildren(REQUEST_DURATION, fast_observe)
_overhead = FastChildren(OVERHEAD, fast_observe)


def observe_request(ctx: RequestContext, code: int) -> float:
    """Count one answered request; returns its total duration in seconds."""
    total = time.perf_counter() - ctx.started
    model = ctx.model or _NO_MODEL
    protocol = ctx.protocol
    _count(model, protocol, str(code))(1)
    _duration(model, protocol)(total)
    own = total - ctx.backend_wait_s
    _overhead(model, protocol)(own if own > 0.0 else 0.0)
    return total
