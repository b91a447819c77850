"""One pooled keep-alive HTTP client per vendor backend, with the retry policy.

Retries (exponential backoff with jitter, `Retry-After` honoured) happen on
connection errors, 429 and 5xx, and only while the deadline leaves room for
another try; a stream is only retried before its response has started. The
API key goes into the request headers and nowhere else: error messages name
the backend and the vendor's status, never headers, and the vendor's own text
in them passes through `gateway.observe.redact` (vendors and the proxies in
front of them have echoed credentials in error bodies).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.core.errors import (
    BackendFailed,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    Overloaded,
)
from gateway.observe import tracing
from gateway.observe.redact import redact

log = logging.getLogger("gateway.backends.vendor")

_MAX_ERROR_TEXT = 300

# (url, body, headers, deadline) -> the headers to send: for a vendor whose
# requests are signed over their URL, body, headers and time (AWS SigV4), once per try
# (the URL without `query`: a signed client has none).
Signer = Callable[[str, bytes, dict[str, str], float], Awaitable[dict[str, str]]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 0
    backoff_s: float = 0.1

    def delay_s(self, retry: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Full jitter around an exponential step; never sooner than Retry-After."""
        step: float = self.backoff_s * (2**retry) * (0.5 + rng.random())
        return max(step, retry_after_s or 0.0)


@dataclass(slots=True)
class VendorReply:
    status: int
    body: bytes
    tries: int


class VendorClient:
    """POSTs JSON to one vendor base URL over a pooled keep-alive session."""

    def __init__(
        self,
        backend: str,
        base_url: str,
        headers: dict[str, str],
        max_connections: int,
        connect_timeout_s: float,
        retry: RetryPolicy,
        query: dict[str, str] | None = None,
        describe_error: Any = None,
        sign: Signer | None = None,
    ) -> None:
        self.backend = backend
        self.base_url = base_url
        self.headers = {"content-type": "application/json", **headers}
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.retry = retry
        self.query = query or None
        # (status, body) -> short text for messages; vendors shape errors differently.
        self.describe_error = describe_error or _error_text
        self.sign = sign
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: a session belongs to the event loop that serves requests.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, keepalive_timeout=30, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self.headers,
                skip_auto_headers=("User-Agent",),
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def post(
        self, path: str, body: bytes, deadline: float, headers: dict[str, str] | None = None
    ) -> VendorReply:
        """The vendor's 2xx answer, read whole; failures as GatewayErrors.
        `headers` add to (or replace) the client's own for this call."""
        response, payload, tries = await self._exchange(path, body, deadline, True, headers)
        return VendorReply(response.status, payload, tries)

    async def open_stream(
        self, path: str, body: bytes, deadline: float
    ) -> tuple[aiohttp.ClientResponse, int]:
        """A 2xx streaming response whose body is still to be read (the caller
        releases it), and the number of tries it took."""
        response, _, tries = await self._exchange(path, body, deadline, whole=False)
        return response, tries

    async def _exchange(
        self,
        path: str,
        body: bytes,
        deadline: float,
        whole: bool,
        headers: dict[str, str] | None = None,
    ) -> tuple[aiohttp.ClientResponse, bytes, int]:
        """POST with the retry policy until a 2xx: its response, its body when
        `whole` (a stream's is left to read), and the number of tries."""
        tries = 0
        while True:
            tries += 1
            # A client span per try; its traceparent goes to the vendor.
            traced = tracing.VendorCall(self.backend, path) if tracing.ENABLED else None
            sent = headers
            if self.sign is not None:
                # Signed per try: a signature carries its time, and credentials rotate.
                sent = await self.sign(self.base_url + path, body, headers or {}, deadline)
            if traced is not None:  # after signing: trace context is not the vendor's to verify
                sent = {**sent, **traced.headers} if sent else traced.headers
            payload = b""
            try:
                response = await self._client().post(
                    self.base_url + path,
                    data=body,
                    params=self.query,
                    timeout=self._timeout(deadline),
                    headers=sent,
                )
                if whole:
                    try:
                        payload = await response.read()
                    finally:
                        response.release()
            except (aiohttp.ClientError, TimeoutError) as exc:
                if traced is not None:
                    traced.end(None, exc)
                error = self._transport_error(exc, deadline)
                if isinstance(error, DeadlineExceeded) or not await self._backoff(
                    tries, None, deadline
                ):
                    error.tries = tries
                    raise error from None
                continue
            status = response.status
            if traced is not None:
                traced.end(status)  # for a stream: until the headers came
            if 200 <= status < 300:
                return response, payload, tries
            if not whole:
                try:
                    payload = await response.read()
                except (aiohttp.ClientError, TimeoutError):
                    payload = b""
                finally:
                    response.release()
            retry_after = _retry_after_s(response.headers.get("retry-after"))
            error = self.status_error(status, payload, retry_after)
            if not _retryable(status) or not await self._backoff(tries, retry_after, deadline):
                error.tries = tries
                raise error

    def status_error(self, status: int, payload: bytes, retry_after: float | None) -> GatewayError:
        text = redact(self.describe_error(status, payload))
        if status == 429:
            return Overloaded(
                f"backend '{self.backend}': the vendor is rate limiting (HTTP 429): {text}",
                retry_after_s=retry_after or 1.0,
                reason="429",
            )
        if status in (400, 413, 422):
            # The vendor judged the caller's request: no other backend would take it.
            return InvalidInput(f"backend '{self.backend}' refused the request: {text}")
        if status in (401, 403):
            log.error(
                "backend %s: the vendor refused our credentials (HTTP %d); "
                "check the key in its api_key_env",
                self.backend,
                status,
            )
        return BackendFailed(
            f"backend '{self.backend}': the vendor answered HTTP {status}: {text}",
            reason="5xx" if status >= 500 else "error",
        )

    def _timeout(self, deadline: float) -> aiohttp.ClientTimeout:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._deadline_error()
        return aiohttp.ClientTimeout(
            total=remaining, connect=min(remaining, self.connect_timeout_s)
        )

    def _transport_error(self, exc: BaseException, deadline: float) -> GatewayError:
        """A timeout with the deadline spent is the caller's 504; anything else
        (refused, reset, a connect timeout shorter than the deadline) is the
        vendor's failure, which a retry or the next backend may get past."""
        if isinstance(exc, TimeoutError) and time.monotonic() >= deadline - 0.001:
            return self._deadline_error()
        return BackendFailed(
            f"backend '{self.backend}': cannot reach the vendor: {_describe(exc)}",
            reason="connection",
        )

    def _deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"backend '{self.backend}' did not answer within the deadline")

    async def _backoff(self, tries: int, retry_after: float | None, deadline: float) -> bool:
        """Sleep before the next try; False when no try is left or there is no time."""
        if tries > self.retry.max_retries:
            return False
        delay = self.retry.delay_s(tries - 1, retry_after, self._rng)
        if time.monotonic() + delay >= deadline:
            return False
        await asyncio.sleep(delay)
        return True


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare from APIs; the backoff step applies
    return seconds if seconds >= 0 else None


def _describe(exc: BaseException) -> str:
    return _excerpt(str(exc) or type(exc).__name__)


def _excerpt(text: str) -> str:
    """Redacted first, then cut: a cut must not leave the head of a key unrecognised."""
    return redact(text)[:_MAX_ERROR_TEXT]


def _error_text(status: int, payload: bytes) -> str:
    """OpenAI-shaped error bodies give their message; anything else a short excerpt.
    Either is redacted (`gateway.observe.redact`)."""
    try:
        doc = orjson.loads(payload)
        error = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _excerpt(error["message"])
        if isinstance(error, str):
            return _excerpt(error)
    except orjson.JSONDecodeError:
        pass
    text = _excerpt(payload[: 8 * _MAX_ERROR_TEXT].decode("utf-8", "replace").strip())
    return text or f"HTTP {status} with an empty body"
