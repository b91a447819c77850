"""The error taxonomy mapped to HTTP, once for every HTTP surface."""

from __future__ import annotations

import logging
import math

import orjson
from starlette.responses import Response

from gateway.core.errors import ErrorKind, GatewayError

log = logging.getLogger("gateway.api")

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_INPUT: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.PAYLOAD_TOO_LARGE: 413,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.DEADLINE_EXCEEDED: 504,
    ErrorKind.BACKEND_FAILED: 502,
}

# Retry-After is always sent with these, even when the error did not say when.
_RETRYABLE = {ErrorKind.RATE_LIMITED: 1.0, ErrorKind.OVERLOADED: 1.0}


def error_headers(error: GatewayError) -> dict[str, str]:
    default = _RETRYABLE.get(error.kind)
    if default is None:
        return {}
    seconds = error.retry_after_s if error.retry_after_s is not None else default
    return {"retry-after": str(max(1, math.ceil(seconds)))}


def v2_error_response(error: GatewayError, headers: dict[str, str]) -> Response:
    """KServe v2 error body: {"error": "..."}."""
    return Response(
        orjson.dumps({"error": error.message}),
        status_code=HTTP_STATUS[error.kind],
        headers={**headers, **error_headers(error)},
        media_type="application/json",
    )


def internal_error_response(exc: BaseException, request_id: str, headers: dict[str, str]) -> Response:
    """A bug: logged with its traceback, answered without internals."""
    log.error("internal error on request %s", request_id, exc_info=exc)
    return Response(
        orjson.dumps({"error": f"internal error (request id {request_id}); this is a gateway bug"}),
        status_code=500,
        headers=headers,
        media_type="application/json",
    )
