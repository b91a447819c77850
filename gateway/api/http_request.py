"""What every HTTP surface does with a request before and after the core:
request id, deadline and cache headers in, body read under a size limit,
gateway headers out."""

from __future__ import annotations

import os
import time

from starlette.requests import Request

from gateway.core.errors import InvalidInput, PayloadTooLarge
from gateway.core.types import RequestContext

_MAX_REQUEST_ID = 128


def request_context(request: Request, protocol: str) -> RequestContext:
    headers = request.headers
    request_id = headers.get("x-request-id")
    if not request_id or len(request_id) > _MAX_REQUEST_ID:
        request_id = os.urandom(12).hex()
    ctx = RequestContext(request_id=request_id, protocol=protocol)
    timeout = headers.get("x-request-timeout-ms")
    if timeout is not None:
        ctx.deadline = time.monotonic() + _timeout_ms(timeout) / 1000.0
    cache_control = headers.get("cache-control")
    if cache_control and "no-cache" in cache_control.lower():
        ctx.no_cache = True
    return ctx


def _timeout_ms(value: str) -> float:
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not ms > 0 or ms == float("inf"):
        raise InvalidInput(
            f"header x-request-timeout-ms: expected a positive number of milliseconds, got {value!r}"
        )
    return ms


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput(f"header content-length: expected an integer, got {declared!r}") from None
        if size > limit:
            raise PayloadTooLarge(
                f"request body is {size} bytes, the limit is {limit} bytes (server.max_request_bytes)"
            )
        return await request.body()
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(
                f"request body exceeds the limit of {limit} bytes (server.max_request_bytes)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def response_headers(ctx: RequestContext) -> dict[str, str]:
    headers = {
        "x-request-id": ctx.request_id,
        "x-gateway-cache": ctx.cache,
        "x-gateway-attempts": str(ctx.attempts),
        "x-gateway-overhead-ms": f"{ctx.overhead_s() * 1000.0:.3f}",
    }
    if ctx.backend is not None:
        headers["x-gateway-backend"] = ctx.backend
    return headers
