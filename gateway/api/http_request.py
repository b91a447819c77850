"""What every HTTP surface does around the core: the request context from the
headers (read by api/plumbing.py, shared with gRPC), the body read under a size
limit, gateway headers out.

Works on raw ASGI (`scope["headers"]` as a bytes dict, `receive`, `send`) so
the hot path builds no framework objects per request.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import Receive, Scope, Send

from gateway.api.plumbing import HTTP_HEADERS, build_request_context, request_id_of
from gateway.core.errors import InvalidInput, PayloadTooLarge
from gateway.core.types import RequestContext

Headers = Mapping[bytes, bytes]


def header_map(scope: Scope) -> dict[bytes, bytes]:
    """ASGI headers as a dict; names are already lower-case per the ASGI spec."""
    return dict(scope["headers"])


def request_context(headers: Headers, protocol: str) -> RequestContext:
    """The request's context from its headers (api/plumbing.py reads them; the
    deadline is x-request-timeout-ms, a bad one a 400)."""
    return build_request_context(headers, protocol, HTTP_HEADERS)


def id_only_context(headers: Headers, protocol: str) -> RequestContext:
    """For a request whose headers `request_context` refused: only its id, so
    that the error answer carries it and the request is counted."""
    return RequestContext(request_id=request_id_of(headers, HTTP_HEADERS), protocol=protocol)


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
