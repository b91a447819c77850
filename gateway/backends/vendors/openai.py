"""`type: openai`: any OpenAI-compatible API (OpenAI, Azure OpenAI, vLLM,
Together, Ollama...). Chat bodies pass through with the vendor's model name
substituted; streams are parsed only as far as needed to re-label and count.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator
from typing import Any, Literal

import aiohttp
import numpy as np
import orjson
from pydantic import Field

from gateway.backends.registry import BackendType, register
from gateway.backends.vendors.base import (
    VendorBackend,
    VendorBackendCommon,
    VendorStream,
    api_key,
)
from gateway.backends.vendors.sse import parse_sse
from gateway.core.errors import BackendFailed
from gateway.core.llm import ChatRequest, ChatResult, EmbeddingResult, Usage
from gateway.observe.redact import redact


class OpenAIBackendConfig(VendorBackendCommon):
    """Any OpenAI-compatible API: OpenAI, Azure OpenAI, vLLM, Together, Ollama..."""

    type: Literal["openai"]
    # Azure OpenAI authenticates with `api-key: <key>`; the others with a bearer token.
    auth_header: Literal["bearer", "api-key"] = "bearer"
    # Azure OpenAI wants ?api-version=... on every call.
    query: dict[str, str] = Field(default_factory=dict)


_DONE = b"[DONE]"


def usage_of(
    doc: dict[str, Any], prompt: str = "prompt_tokens", completion: str = "completion_tokens"
) -> Usage | None:
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        return None
    p, c = usage.get(prompt, 0), usage.get(completion, 0)
    return Usage(p if isinstance(p, int) else 0, c if isinstance(c, int) else 0)


class OpenAIBackend(VendorBackend):
    config: OpenAIBackendConfig

    def __init__(self, name: str, config: OpenAIBackendConfig) -> None:
        key = api_key(config.api_key_env, name)
        headers = dict(config.headers)
        if key is not None:
            if config.auth_header == "api-key":
                headers["api-key"] = key
            else:
                headers["authorization"] = f"Bearer {key}"
        super().__init__(name, config, headers, query=dict(config.query))

    # -- chat ------------------------------------------------------------------

    def _vendor_body(self, request: ChatRequest) -> bytes:
        body = dict(request.body)
        body["model"] = self.config.model
        if request.stream:
            # Ask for usage always: tokens and cost must be counted even when the
            # caller did not ask to see them (the usage chunk is then not passed on).
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        return orjson.dumps(body)

    async def chat(self, request: ChatRequest, deadline: float) -> ChatResult:
        reply = await self._post("/chat/completions", self._vendor_body(request), deadline)
        doc = _json_object(reply.body, self.name)
        choices = doc.get("choices")
        if not isinstance(choices, list) or not choices:
            raise BackendFailed(
                f"backend '{self.name}': the vendor's answer has no choices", reason="bad_output"
            )
        return ChatResult(doc, usage_of(doc), tries=reply.tries)

    async def chat_stream(self, request: ChatRequest, deadline: float) -> OpenAIChatStream:
        response, tries = await self._open_stream(
            "/chat/completions", self._vendor_body(request), deadline
        )
        return OpenAIChatStream(self.name, response, tries)

    # -- embeddings --------------------------------------------------------------

    async def embed(
        self, texts: list[str], deadline: float, dimensions: int | None = None
    ) -> EmbeddingResult:
        request: dict[str, Any] = {
            "model": self.config.model,
            "input": texts,
            "encoding_format": "base64",
        }
        if dimensions is not None:
            request["dimensions"] = dimensions  # e.g. text-embedding-3 shortens its vectors
        reply = await self._post("/embeddings", orjson.dumps(request), deadline)
        doc = _json_object(reply.body, self.name)
        return EmbeddingResult(
            _vectors(doc, len(texts), self.name), usage_of(doc), tries=reply.tries
        )


class OpenAIChatStream(VendorStream):
    """The vendor's chunks as dicts; holds the backend slot until it ends."""

    async def __aiter__(self) -> AsyncGenerator[dict[str, Any], None]:
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
                    if "error" in chunk and not chunk.get("choices"):
                        raise BackendFailed(
                            f"backend '{self.backend}': stream error: {_stream_error(chunk)}"
                        )
                    usage = usage_of(chunk)
                    if usage is not None:
                        self.usage = usage
                    yield chunk
                if done:
                    break
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.broke(exc) from None
        finally:
            await self.aclose()
        if not done:
            raise BackendFailed(f"backend '{self.backend}': the stream ended before [DONE]")


def _stream_error(chunk: dict[str, Any]) -> str:
    """The message of an error event in an OpenAI-compatible stream (vLLM and
    others send `data: {"error": {...}}` mid-stream), redacted and cut short."""
    error = chunk.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    text = message if isinstance(message, str) else orjson.dumps(error).decode()
    return redact(text)[:300]


def _json_object(payload: bytes, backend: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        excerpt = redact(payload[:400].decode("utf-8", "replace"))[:80]
        raise BackendFailed(
            f"backend '{backend}': the vendor answered something that is not JSON: {excerpt!r}",
            reason="bad_output",
        ) from None
    if not isinstance(doc, dict):
        raise BackendFailed(
            f"backend '{backend}': the vendor answered JSON that is not an object",
            reason="bad_output",
        )
    return doc


def _vectors(doc: dict[str, Any], count: int, backend: str) -> np.ndarray:
    data = doc.get("data")
    if not isinstance(data, list) or len(data) != count:
        raise BackendFailed(
            f"backend '{backend}': expected {count} embeddings, the vendor "
            f"answered {len(data) if isinstance(data, list) else 'none'}"
        )
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
    return np.stack(rows).astype(np.float32, copy=False)  # type: ignore[arg-type]  # no None left (checked above)


BACKEND_TYPE = register(
    BackendType(
        name="openai",
        config=OpenAIBackendConfig,
        build=lambda name, config, resolve_path: OpenAIBackend(name, config),
        kinds=frozenset({"chat", "embeddings"}),
        # `query` carries Azure's api-version, which changes the answers' shape.
        cache_identity=("type", "model", "base_url", "query"),
        admission="slots",
        served_model=lambda config: config.model,
    )
)
