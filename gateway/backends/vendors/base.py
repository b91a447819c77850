"""What every vendor backend shares: its config keys, the key from the
environment, one pooled client with the retry policy, and the life of a stream
(the connection released once it ends, transport failures as gateway errors).
How many calls run at once is admission's (gateway/admission/slots.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

import aiohttp
from pydantic import Field, field_validator

from gateway.backends.vendors.http import RetryPolicy, VendorClient
from gateway.config.schema import BackendCommon, RetryConfig
from gateway.core.errors import BackendFailed, DeadlineExceeded, GatewayError
from gateway.core.llm import Usage
from gateway.observe import redact


class VendorBackendCommon(BackendCommon):
    """A managed API reached over HTTP. The key is read from the environment
    variable named here: never written in the file, never logged."""

    keys_of_other_types: ClassVar[dict[str, str]] = {
        "max_queue_wait_ms": "it predicts waits from local execution times, and a vendor "
        "call's time is the vendor's; waiting is bounded by max_queue and the "
        "request's deadline",
    }

    base_url: str
    api_key_env: str | None = None
    model: str  # the vendor's model name; callers never see or send it
    max_concurrency: int = Field(64, ge=1)
    connect_timeout_ms: int = Field(2000, ge=1)
    # Connection errors, 429 and 5xx are retried within the deadline.
    retries: RetryConfig = RetryConfig()
    # Headers sent to the vendor as they are (e.g. an organisation id); not secrets.
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return url.rstrip("/")


def api_key(env_name: str | None, backend: str) -> str | None:
    """The key from the environment; a named but unset variable fails the load."""
    if env_name is None:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise ValueError(
            f"backend '{backend}': environment variable {env_name} (api_key_env) is not set"
        )
    redact.remember_secret(value)  # blanked out of vendor error text and logs wherever it shows
    return value


class VendorBackend:
    """Base of the `type: openai` and `type: anthropic` backends."""

    def __init__(
        self,
        name: str,
        config: VendorBackendCommon,
        headers: dict[str, str],
        query: dict[str, str] | None = None,
        describe_error: Callable[[int, bytes], str] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.client = VendorClient(
            name,
            config.base_url,
            headers,
            max_connections=config.max_concurrency,
            connect_timeout_s=config.connect_timeout_ms / 1000.0,
            retry=RetryPolicy(config.retries.max, config.retries.backoff_ms / 1000.0),
            query=query,
            describe_error=describe_error,
        )

    def ready(self) -> bool:
        return True

    def busy(self) -> bool:
        return False  # calls in flight are admission's to count (admission/slots.py)

    def io_specs(self) -> None:
        return None

    async def close(self) -> None:
        await self.client.close()

    async def _post(self, path: str, body: bytes, deadline: float) -> Any:
        return await self.client.post(path, body, deadline)

    async def _open_stream(
        self, path: str, body: bytes, deadline: float
    ) -> tuple[aiohttp.ClientResponse, int]:
        return await self.client.open_stream(path, body, deadline)


class VendorStream:
    """A vendor's streamed answer; the connection is released once it ends or is closed."""

    def __init__(
        self,
        backend: str,
        response: aiohttp.ClientResponse,
        tries: int,
    ) -> None:
        self.backend = backend
        self.response = response
        self.tries = tries
        self.usage: Usage | None = None
        self._closed = False

    def broke(self, exc: aiohttp.ClientError | TimeoutError) -> GatewayError:
        """What a transport failure mid-stream means for the caller."""
        if isinstance(exc, TimeoutError):
            return DeadlineExceeded(
                f"backend '{self.backend}': the stream did not finish within the deadline"
            )
        return BackendFailed(
            f"backend '{self.backend}': the stream broke: {redact.redact(str(exc))}"
        )

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.response.release()
