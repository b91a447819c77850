"""The AWS side of `type: sagemaker` (vendors/sagemaker.py): credentials from
botocore's standard chain, a SigV4 signature on every try of every call, and
what SageMaker's error statuses mean for the gateway.

Nothing secret leaves: the secret key and session token go into the HMAC and
the `X-Amz-Security-Token` header only; error text from SageMaker or from a
container passes through `gateway.observe.redact` and has the current
credentials blanked out (a container may echo the headers it got).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import orjson

from gateway.backends.base import BackendLoadError
from gateway.backends.vendors.http import RetryPolicy, VendorClient
from gateway.core.errors import (
    BackendFailed,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
)
from gateway.observe import redact

log = logging.getLogger("gateway.backends.sagemaker")

_MAX_ERROR_TEXT = 300
SIGNING_NAME = "sagemaker"  # the service in the credential scope
_SIGNATURE = re.compile(r"Signature=[0-9a-fA-F]+")


class AwsCredentials:
    """One backend's AWS credentials from botocore's standard chain, frozen per request.

    Static credentials (environment, shared files) never change. Temporary
    ones (SSO, assumed roles, web identity, container and instance roles,
    credential_process) are botocore's RefreshableCredentials, which refresh
    inside `get_frozen_credentials()` once they enter their last 15 minutes;
    that refresh is network I/O (STS, the SSO portal, a metadata service) or
    a process, so it runs in a worker thread, never on the event loop, one
    at a time: requests that arrive meanwhile wait for it within their
    deadline. Outside that window `get_frozen_credentials()` does no I/O.
    """

    def __init__(self, backend: str, credentials: Any) -> None:
        self.backend = backend
        self.method: str = getattr(credentials, "method", "unknown")
        self._credentials = credentials
        self._refresh: asyncio.Future[Any] | None = None
        # At load (blocking is fine there): fetches deferred credentials (SSO,
        # assumed roles), so that a chain that cannot deliver refuses the config.
        self._last: Any = credentials.get_frozen_credentials()
        if self._last is None or not self._last.access_key or not self._last.secret_key:
            raise BackendLoadError(
                f"backend '{backend}': the AWS credential chain ({self.method}) gave no keys"
            )
        redact.remember_secret(self._last.secret_key)
        redact.remember_secret(self._last.token)

    @classmethod
    def from_chain(cls, backend: str, profile: str | None) -> AwsCredentials:
        """Resolve the standard chain now (at load); BackendLoadError when it finds nothing."""
        import botocore.exceptions
        import botocore.session

        where = f"profile '{profile}'" if profile else "the default chain"
        try:
            found = botocore.session.Session(profile=profile).get_credentials()
            if found is None:
                raise BackendLoadError(
                    f"backend '{backend}': no AWS credentials found ({where}: environment "
                    "variables, shared credentials and config files, SSO, web identity, "
                    "container or instance role); SageMaker requests must be signed"
                )
            return cls(backend, found)
        # ClientError: a service of the chain refused (STS AssumeRole, SSO).
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise BackendLoadError(
                f"backend '{backend}': cannot get AWS credentials from {where}: "
                f"{redact.redact(str(exc))[:_MAX_ERROR_TEXT]}"
            ) from None

    async def frozen(self, deadline: float) -> Any:
        """Credentials to sign one request with (botocore's ReadOnlyCredentials)."""
        credentials = self._credentials
        refresh_needed = getattr(credentials, "refresh_needed", None)
        if refresh_needed is None or not refresh_needed():
            self._last = credentials.get_frozen_credentials()  # nothing due: no I/O
            return self._last
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(
                asyncio.to_thread(credentials.get_frozen_credentials)
            )
            # Retrieved even when every waiter gave up first (no "never retrieved" log).
            self._refresh.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            self._last = await asyncio.wait_for(
                asyncio.shield(self._refresh), deadline - time.monotonic()
            )
        except TimeoutError:
            raise DeadlineExceeded(
                f"backend '{self.backend}': its AWS credentials were still being refreshed "
                "at the deadline; the request was not sent"
            ) from None
        except Exception as exc:  # noqa: BLE001 - any failure of botocore's refresh
            raise BackendFailed(
                f"backend '{self.backend}': cannot refresh its AWS credentials "
                f"({self.method}): {type(exc).__name__}: "
                f"{self.scrub(redact.redact(str(exc)))[:_MAX_ERROR_TEXT]}"
            ) from None
        return self._last

    def scrub(self, text: str) -> str:
        """`text` without the current credentials' secret parts (refreshed ones
        are not in redact's list, which only grows) nor a SigV4 signature (the
        request it signs could be replayed for 5 minutes)."""
        for secret in (self._last.secret_key, self._last.token):
            if secret:
                text = text.replace(secret, redact.REDACTED)
        return _SIGNATURE.sub("Signature=" + redact.REDACTED, text)


class SageMakerClient(VendorClient):
    """The vendor client with SageMaker's meaning of statuses."""

    def __init__(
        self,
        backend: str,
        base_url: str,
        region: str,
        credentials: AwsCredentials,
        max_connections: int,
        connect_timeout_s: float,
        retry: RetryPolicy,
    ) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        self._sigv4 = SigV4Auth
        self._aws_request = AWSRequest
        self.credentials = credentials
        self.region = region
        super().__init__(
            backend,
            base_url,
            {},
            max_connections=max_connections,
            connect_timeout_s=connect_timeout_s,
            retry=retry,
            describe_error=_error_text,
            sign=self._sign,
        )

    async def _sign(
        self, url: str, body: bytes, headers: dict[str, str], deadline: float
    ) -> dict[str, str]:
        """SigV4 over the method, URL, the headers given, x-amz-date and the body's
        sha256 (the signed headers are exactly the ones sent)."""
        credentials = await self.credentials.frozen(deadline)
        request = self._aws_request(method="POST", url=url, data=body, headers=headers)
        self._sigv4(credentials, SIGNING_NAME, self.region).add_auth(request)
        # aiohttp writes Host from the URL itself, as botocore signed it.
        return {k: v for k, v in request.headers.items() if k.lower() != "host"}

    def status_error(self, status: int, payload: bytes, retry_after: float | None) -> GatewayError:
        error = _error_of(payload)
        text = self.credentials.scrub(redact.redact(error.text))[:_MAX_ERROR_TEXT]
        backend = self.backend
        if status == 429:  # ModelNotReadyException, throttling
            return Overloaded(
                f"backend '{backend}': the endpoint is throttling or not ready (HTTP 429): {text}",
                retry_after_s=retry_after or 1.0,
                reason="429",
            )
        if status == 424:  # ModelError: the container answered an error status
            original = error.original_status
            if original in (400, 413, 422):
                return ModelRefused(
                    f"backend '{backend}': the model refused the request (HTTP {original} "
                    f"from its container): {text}"
                )
            return BackendFailed(
                f"backend '{backend}': the model failed (HTTP {original or 'unknown'} from "
                f"its container): {text}",
                reason="5xx" if original is not None and original >= 500 else "error",
            )
        if status == 413:
            return PayloadTooLarge(f"backend '{backend}': the request is too large: {text}")
        if status in (401, 403):
            log.error(
                "backend %s: SageMaker refused our AWS credentials (%s) or their permissions "
                "(HTTP %d); they need sagemaker:InvokeEndpoint on the endpoint",
                backend,
                self.credentials.method,
                status,
            )
        return BackendFailed(
            f"backend '{backend}': SageMaker answered HTTP {status}: {text}",
            reason="5xx" if status >= 500 else "error",
        )


class ModelRefused(InvalidInput):
    """The model's container answered 400/413/422: the caller's request, for chat."""


class _ErrorDoc:
    __slots__ = ("original_status", "text")

    def __init__(self, text: str, original_status: int | None = None) -> None:
        self.text = text
        self.original_status = original_status


def _error_of(payload: bytes) -> _ErrorDoc:
    """An AWS JSON error body ({"message"} or ModelError's {"Message",
    "OriginalStatusCode", "OriginalMessage"}), or a short excerpt of anything else."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        original = doc.get("OriginalStatusCode")
        message = doc.get("OriginalMessage") or doc.get("Message") or doc.get("message")
        if isinstance(message, str):
            return _ErrorDoc(message, original if isinstance(original, int) else None)
    excerpt = payload[: 4 * _MAX_ERROR_TEXT].decode("utf-8", "replace").strip()
    return _ErrorDoc(excerpt or "an empty body")


def _error_text(status: int, payload: bytes) -> str:
    return _error_of(payload).text
