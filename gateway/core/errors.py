"""The one error taxonomy of the gateway.

Every failure a caller can see is a `GatewayError` carrying an `ErrorKind`;
each transport maps kinds to its own status codes exactly once
(`api/http_errors.py`, later the gRPC servicer). Anything else that escapes is
a bug and is reported as such.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID_INPUT = "invalid_input"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    BACKEND_FAILED = "backend_failed"


class GatewayError(Exception):
    """A failure with a kind and a message meant for the caller.

    `reason` says more precisely what happened to a backend (`connection`,
    `5xx`, `429`, `timeout`, `overloaded`, `circuit_open`, `bad_output`...):
    routes choose on it whether to fall back, and metrics count by it.
    """

    kind: ErrorKind = ErrorKind.BACKEND_FAILED
    default_reason: str = "error"
    tries: int = 1  # HTTP tries a backend made before giving up (its retries included)
    # Set by pipeline.plan on the failure of a hedged pair (where the plan goes on);
    # declared only, so unset elsewhere: read them with getattr and a default.
    plan_next: int
    plan_backend: str

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.reason = reason or self.default_reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidInput(GatewayError):
    kind = ErrorKind.INVALID_INPUT


class Unauthenticated(GatewayError):
    kind = ErrorKind.UNAUTHENTICATED


class Forbidden(GatewayError):
    kind = ErrorKind.FORBIDDEN


class NotFound(GatewayError):
    kind = ErrorKind.NOT_FOUND


class PayloadTooLarge(GatewayError):
    kind = ErrorKind.PAYLOAD_TOO_LARGE


class RateLimited(GatewayError):
    kind = ErrorKind.RATE_LIMITED


class Overloaded(GatewayError):
    kind = ErrorKind.OVERLOADED
    default_reason = "overloaded"


class DeadlineExceeded(GatewayError):
    kind = ErrorKind.DEADLINE_EXCEEDED
    default_reason = "timeout"


class BackendFailed(GatewayError):
    """A backend failed or answered something that breaks the signature."""

    kind = ErrorKind.BACKEND_FAILED
