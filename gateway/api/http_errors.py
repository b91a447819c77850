"""The error taxonomy mapped to HTTP, once for every HTTP surface."""

from __future__ import annotations

import math

import orjson

from gateway.core.errors import ErrorKind, GatewayError

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
_RETRY_AFTER_DEFAULT_S = {ErrorKind.RATE_LIMITED: 1.0, ErrorKind.OVERLOADED: 1.0}


def error_headers(error: GatewayError) -> list[tuple[bytes, bytes]]:
    default = _RETRY_AFTER_DEFAULT_S.get(error.kind)
    if default is None:
        return []
    seconds = error.retry_after_s if error.retry_after_s is not None else default
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]


def v2_error_body(error: GatewayError) -> tuple[int, bytes]:
    """KServe v2 error: status and {"error": "..."}."""
    return HTTP_STATUS[error.kind], orjson.dumps({"error": error.message})


# OpenAI's error `type` and `code` per kind, as its SDKs and callers expect them.
_OPENAI_TYPE: dict[ErrorKind, tuple[str, str | None]] = {
    ErrorKind.INVALID_INPUT: ("invalid_request_error", None),
    ErrorKind.UNAUTHENTICATED: ("authentication_error", "invalid_api_key"),
    ErrorKind.FORBIDDEN: ("permission_error", "model_not_allowed"),
    ErrorKind.NOT_FOUND: ("invalid_request_error", "model_not_found"),
    ErrorKind.PAYLOAD_TOO_LARGE: ("invalid_request_error", "request_too_large"),
    ErrorKind.RATE_LIMITED: ("rate_limit_error", "rate_limit_exceeded"),
    ErrorKind.OVERLOADED: ("server_error", "overloaded"),
    ErrorKind.DEADLINE_EXCEEDED: ("server_error", "timeout"),
    ErrorKind.BACKEND_FAILED: ("server_error", "backend_failed"),
}


def openai_error_doc(error: GatewayError) -> dict[str, object]:
    kind, code = _OPENAI_TYPE[error.kind]
    return {"error": {"message": error.message, "type": kind, "param": None, "code": code}}


def openai_error_body(error: GatewayError) -> tuple[int, bytes]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return HTTP_STATUS[error.kind], orjson.dumps(openai_error_doc(error))


def message_body(message: str, openai: bool, openai_type: str = "invalid_request_error") -> bytes:
    """An error that is no GatewayError (a wrong method, an unknown path, a bug) in
    the surface's shape: OpenAI's under /v1/ (`openai_type`, no code), else KServe v2's."""
    if openai:
        return orjson.dumps(
            {"error": {"message": message, "type": openai_type, "param": None, "code": None}}
        )
    return orjson.dumps({"error": message})
