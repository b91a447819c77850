"""What every vendor backend shares: the key from the environment, one pooled
client with the retry policy, the concurrency limiter, and the life of a
stream (a slot held until it ends, transport failures as gateway errors)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import aiohttp

from gateway.admission.slots import ConcurrencyLimiter
from gateway.backends.vendors.http import RetryPolicy, VendorClient
from gateway.config.schema import VendorBackendCommon
from gateway.core.errors import BackendFailed, DeadlineExceeded, GatewayError
from gateway.core.llm import Usage
from gateway.observe import redact


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
        self.limiter = ConcurrencyLimiter(name, config.max_concurrency, config.max_queue)

    def ready(self) -> bool:
        return True

    def busy(self) -> bool:
        return self.limiter.busy()

    def io_specs(self) -> None:
        return None

    async def close(self) -> None:
        await self.client.close()

    async def _post(self, path: str, body: bytes, timeout_s: float, deadline: float) -> Any:
        """One call within a limiter slot (the slot is not held while queued)."""
        await self.limiter.acquire(timeout_s)
        try:
            return await self.client.post(path, body, deadline)
        finally:
            self.limiter.release()

    async def _open_stream(
        self, path: str, body: bytes, timeout_s: float, deadline: float
    ) -> tuple[aiohttp.ClientResponse, int]:
        """A started stream holding a limiter slot: the stream object releases it."""
        await self.limiter.acquire(timeout_s)
        try:
            return await self.client.open_stream(path, body, deadline)
        except BaseException:
            self.limiter.release()
            raise


class VendorStream:
    """A vendor's streamed answer: holds its backend slot until it ends or is closed."""

    def __init__(
        self,
        backend: str,
        response: aiohttp.ClientResponse,
        limiter: ConcurrencyLimiter,
        tries: int,
    ) -> None:
        self.backend = backend
        self.response = response
        self.limiter = limiter
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
            self.limiter.release()
