"""`type: openai`: any OpenAI-compatible API (OpenAI, Azure OpenAI, vLLM,
Together, Ollama...). Chat bodies pass through with the vendor's model name
substituted; streams are parsed only as far as needed to re-label and count.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import orjson

from gateway.backends.vendors.http import RetryPolicy, VendorClient
from gateway.backends.vendors.sse import parse_sse
from gateway.config.schema import OpenAIBackendConfig
from gateway.core.errors import BackendFailed, DeadlineExceeded
from gateway.core.llm import ChatRequest, ChatResult, EmbeddingResult, Usage
from gateway.routing.limits import ConcurrencyLimiter

_DONE = b"[DONE]"


def api_key(env_name: str | None, backend: str) -> str | None:
    """The key from the environment; a named but unset variable fails the load."""
    if env_name is None:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise ValueError(f"backend '{backend}': environment variable {env_name} (api_key_env) "
                         "is not set")
    return value


def usage_of(doc: dict[str, Any], prompt: str = "prompt_tokens",
             completion: str = "completion_tokens") -> Usage | None:
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        return None
    p, c = usage.get(prompt, 0), usage.get(completion, 0)
    return Usage(p if isinstance(p, int) else 0, c if isinstance(c, int) else 0)


class OpenAIBackend:
    def __init__(self, name: str, config: OpenAIBackendConfig) -> None:
        self.name = name
        self.config = config
        key = api_key(config.api_key_env, name)
        headers = dict(config.headers)
        if key is not None:
            if config.auth_header == "api-key":
                headers["api-key"] = key
            else:
                headers["authorization"] = f"Bearer {key}"
        self.client = VendorClient(
            name, config.base_url, headers, max_connections=config.max_concurrency,
            connect_timeout_s=config.connect_timeout_ms / 1000.0,
            retry=RetryPolicy(config.retries.max, config.retries.backoff_ms / 1000.0),
            query=dict(config.query))
        self.limiter = ConcurrencyLimiter(name, config.max_concurrency, config.max_queue)

    def ready(self) -> bool:
        return True

    def busy(self) -> bool:
        return self.limiter.busy()

    def io_specs(self) -> None:
        return None

    async def close(self) -> None:
        await self.client.close()

    # -- chat ------------------------------------------------------------------

    def _vendor_body(self, request: ChatRequest) -> bytes:
        body = dict(request.body)
        body["model"] = self.config.model
        if request.stream:
            # Ask for usage always: tokens and cost must be counted even when the
            # caller did not ask to see them (the usage chunk is then not passed on).
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                      "include_usage": True}
        return orjson.dumps(body)

    async def chat(self, request: ChatRequest, timeout_s: float) -> ChatResult:
        deadline = time.monotonic() + timeout_s
        await self.limiter.acquire(timeout_s)
        try:
            reply = await self.client.post("/chat/completions", self._vendor_body(request),
                                           deadline)
        finally:
            self.limiter.release()
        doc = _json_object(reply.body, self.name)
        choices = doc.get("choices")
        if not isinstance(choices, list) or not choices:
            raise BackendFailed(f"backend '{self.name}': the vendor's answer has no choices",
                                reason="bad_output")
        return ChatResult(doc, usage_of(doc), tries=reply.tries)

    async def chat_stream(self, request: ChatRequest, timeout_s: float) -> "OpenAIChatStream":
        deadline = time.monotonic() + timeout_s
        await self.limiter.acquire(timeout_s)
        try:
            response, tries = await self.client.open_stream(
                "/chat/completions", self._vendor_body(request), deadline)
        except BaseException:
            self.limiter.release()
            raise
        return OpenAIChatStream(self.name, response, self.limiter, tries)

    # -- embeddings --------------------------------------------------------------

    async def embed(self, texts: list[str], timeout_s: float,
                    dimensions: int | None = None) -> EmbeddingResult:
        deadline = time.monotonic() + timeout_s
        request: dict[str, Any] = {"model": self.config.model, "input": texts,
                                   "encoding_format": "base64"}
        if dimensions is not None:
            request["dimensions"] = dimensions  # e.g. text-embedding-3 shortens its vectors
        body = orjson.dumps(request)
        await self.limiter.acquire(timeout_s)
        try:
            reply = await self.client.post("/embeddings", body, deadline)
        finally:
            self.limiter.release()
        doc = _json_object(reply.body, self.name)
        return EmbeddingResult(_vectors(doc, len(texts), self.name), usage_of(doc),
                               tries=reply.tries)


class OpenAIChatStream:
    """The vendor's chunks as dicts; holds the backend slot until it ends."""

    def __init__(self, backend: str, response: aiohttp.ClientResponse,
                 limiter: ConcurrencyLimiter, tries: int) -> None:
        self.backend = backend
        self.response = response
        self.limiter = limiter
        self.tries = tries
        self.usage: Usage | None = None
        self.chunks = 0
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        buffer = b""
        done = False
        try:
            async for data in self.response.content.iter_any():
                events, buffer = parse_sse(buffer + data)
                for _, payload in events:
                    if payload == _DONE:
                        done = True
                        break
                    chunk = _json_object(payload, self.backend)
                    usage = usage_of(chunk)
                    if usage is not None:
                        self.usage = usage
                    self.chunks += 1
                    yield chunk
                if done:
                    break
        except (aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                raise DeadlineExceeded(
                    f"backend '{self.backend}': the stream did not finish within the deadline"
                ) from None
            raise BackendFailed(f"backend '{self.backend}': the stream broke: {exc}") from None
        finally:
            await self.aclose()
        if not done:
            raise BackendFailed(f"backend '{self.backend}': the stream ended before [DONE]")

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.response.release()
            self.limiter.release()


def _json_object(payload: bytes, backend: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise BackendFailed(f"backend '{backend}': the vendor answered something that is not "
                            f"JSON: {payload[:80]!r}", reason="bad_output") from None
    if not isinstance(doc, dict):
        raise BackendFailed(f"backend '{backend}': the vendor answered JSON that is not an object",
                            reason="bad_output")
    return doc


def _vectors(doc: dict[str, Any], count: int, backend: str) -> np.ndarray:
    data = doc.get("data")
    if not isinstance(data, list) or len(data) != count:
        raise BackendFailed(f"backend '{backend}': expected {count} embeddings, the vendor "
                            f"answered {len(data) if isinstance(data, list) else 'none'}")
    rows: list[np.ndarray | None] = [None] * count
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count:
            raise BackendFailed(f"backend '{backend}': an embedding has a bad index {index!r}")
        if isinstance(vector, str):
            rows[index] = np.frombuffer(base64.b64decode(vector), dtype="<f4")
        elif isinstance(vector, list):
            rows[index] = np.asarray(vector, dtype=np.float32)
        else:
            raise BackendFailed(f"backend '{backend}': embedding {index} is not a vector")
    dims = {len(r) for r in rows if r is not None}
    if len(dims) != 1 or any(r is None for r in rows):
        raise BackendFailed(f"backend '{backend}': the vendor's embeddings differ in length")
    return np.stack(rows).astype(np.float32, copy=False)  # type: ignore[arg-type]
