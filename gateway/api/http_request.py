"""What every HTTP surface does around the core: request id, deadline and cache
headers in, the body read under a size limit, gateway headers out.

Works on raw ASGI (`scope["headers"]` as a bytes dict, `receive`, `send`) so
the hot path builds no framework objects per request.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping

from starlette.types import Receive, Scope, Send

from gateway.core.errors import InvalidInput, PayloadTooLarge
from gateway.core.types import RequestContext
from gateway.observe import tracing
from gateway.observe.logs import CURRENT_REQUEST

Headers = Mapping[bytes, bytes]

_MAX_REQUEST_ID = 128
# Generated ids: a random per-process prefix and a counter. Unique across
# replicas without a syscall per request (os.urandom is one).
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def header_map(scope: Scope) -> dict[bytes, bytes]:
    """ASGI headers as a dict; names are already lower-case per the ASGI spec."""
    return dict(scope["headers"])


def new_request_id() -> str:
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def request_id_of(headers: Headers) -> str:
    """The caller's x-request-id if it is one we can echo (at most 128 printable
    ASCII characters: it goes back in a header, in logs and in audit records),
    else a new one."""
    raw_id = headers.get(b"x-request-id")
    if raw_id and len(raw_id) <= _MAX_REQUEST_ID:
        text = raw_id.decode("latin-1")
        if text.isascii() and text.isprintable():
            return text
    return new_request_id()


def request_context(headers: Headers, protocol: str) -> RequestContext:
    ctx = RequestContext(request_id=request_id_of(headers), protocol=protocol, headers=headers)
    CURRENT_REQUEST.set(ctx)  # log lines of this request carry its id (and trace id)
    if tracing.ENABLED and b"traceparent" in headers:
        ctx.trace_parent = tracing.context_from_headers(headers)
    timeout = headers.get(b"x-request-timeout-ms")
    if timeout is not None:
        ctx.deadline = time.monotonic() + _timeout_ms(timeout) / 1000.0
    authorization = headers.get(b"authorization")
    if authorization is not None and authorization[:7].lower() == b"bearer ":
        ctx.api_key = authorization[7:].strip().decode("latin-1")
    else:
        key = headers.get(b"x-api-key")
        if key is not None:
            ctx.api_key = key.decode("latin-1")
    cache_control = headers.get(b"cache-control")
    if cache_control and b"no-cache" in cache_control.lower():
        ctx.no_cache = True
    return ctx


def _timeout_ms(value: bytes) -> float:
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not 0 < ms < float("inf"):
        raise InvalidInput(
            "header x-request-timeout-ms: expected a positive number of milliseconds, "
            f"got {value.decode('latin-1')!r}"
        )
    return ms


async def read_body(receive: Receive, headers: Headers, limit: int, ctx: RequestContext) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed `limit`:
    from content-length before reading anything, else while reading chunks.
    Its size goes into `ctx.request_bytes` (audit records)."""
    declared = headers.get(b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput(
                f"header content-length: expected an integer, got {declared.decode('latin-1')!r}"
            ) from None
        if size > limit:
            raise PayloadTooLarge(
                f"request body is {size} bytes, the limit is {limit} bytes (server.max_request_bytes)"
            )
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away; what was read is all there is
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(
                    f"request body exceeds the limit of {limit} bytes (server.max_request_bytes)"
                )
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    ctx.request_bytes = total
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def gateway_headers(ctx: RequestContext) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-request-id", ctx.request_id.encode("latin-1")),
        (b"x-gateway-cache", ctx.cache.encode()),
        (b"x-gateway-attempts", str(ctx.attempts).encode()),
        (b"x-gateway-overhead-ms", f"{ctx.overhead_s() * 1000.0:.3f}".encode()),
    ]
    if ctx.backend is not None:
        headers.append((b"x-gateway-backend", ctx.backend.encode()))
    if ctx.cost_usd is not None:
        headers.append((b"x-gateway-cost-usd", f"{ctx.cost_usd:.8f}".encode()))
    return headers


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    headers.append((b"content-type", content_type))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
