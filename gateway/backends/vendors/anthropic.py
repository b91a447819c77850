"""`type: anthropic`: the Messages API behind the OpenAI chat shape.

The HTTP lives here; the shapes (requests, answers, stop reasons, usage,
stream events) are translated by `anthropic_shape`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import Field

from gateway.backends.registry import BackendType, register
from gateway.backends.vendors.anthropic_shape import (
    AnthropicStreamTranslator,
    UnsupportedRequest,
    VendorProtocolError,
    VendorStreamError,
    anthropic_error_message,
    anthropic_response_to_chat,
    chat_request_to_anthropic,
)
from gateway.backends.vendors.base import (
    VendorBackend,
    VendorBackendCommon,
    VendorStream,
    api_key,
)
from gateway.backends.vendors.sse import parse_sse
from gateway.core.errors import BackendFailed, InvalidInput
from gateway.core.llm import ChatRequest, ChatResult, Usage


class AnthropicBackendConfig(VendorBackendCommon):
    type: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    anthropic_version: str = "2023-06-01"
    # Anthropic requires max_tokens; used when the caller does not say.
    default_max_tokens: int = Field(1024, ge=1)


class AnthropicBackend(VendorBackend):
    config: AnthropicBackendConfig

    def __init__(self, name: str, config: AnthropicBackendConfig) -> None:
        key = api_key(config.api_key_env, name)
        headers = {**config.headers, "anthropic-version": config.anthropic_version}
        if key is not None:
            headers["x-api-key"] = key
        super().__init__(name, config, headers, describe_error=anthropic_error_message)

    def _vendor_body(self, request: ChatRequest) -> bytes:
        try:
            body = chat_request_to_anthropic(
                request.body, self.config.model, self.config.default_max_tokens
            )
        except UnsupportedRequest as exc:
            raise InvalidInput(
                f"{exc.field}: {exc.message} (backend '{self.name}' is Anthropic's Messages API)"
            ) from None
        body["stream"] = request.stream
        return orjson.dumps(body)

    async def chat(self, request: ChatRequest, deadline: float) -> ChatResult:
        reply = await self._post("/v1/messages", self._vendor_body(request), deadline)
        try:
            doc = orjson.loads(reply.body)
            if not isinstance(doc, dict):
                raise VendorProtocolError("the answer is not a JSON object")
            chat = anthropic_response_to_chat(
                doc, str(request.body.get("model", "")), int(time.time())
            )
        except (orjson.JSONDecodeError, VendorProtocolError) as exc:
            raise BackendFailed(
                f"backend '{self.name}': the vendor's answer is not a valid message: {exc}",
                reason="bad_output",
            ) from None
        return ChatResult(chat, _usage(chat), tries=reply.tries)

    async def chat_stream(self, request: ChatRequest, deadline: float) -> AnthropicChatStream:
        response, tries = await self._open_stream(
            "/v1/messages", self._vendor_body(request), deadline
        )
        translator = AnthropicStreamTranslator(
            str(request.body.get("model", "")), int(time.time()), include_usage=True
        )
        return AnthropicChatStream(self.name, response, translator, tries)


class AnthropicChatStream(VendorStream):
    def __init__(
        self,
        backend: str,
        response: aiohttp.ClientResponse,
        translator: AnthropicStreamTranslator,
        tries: int,
    ) -> None:
        super().__init__(backend, response, tries)
        self.translator = translator

    async def __aiter__(self) -> AsyncGenerator[dict[str, Any], None]:
        buffer = b""
        translator = self.translator
        try:
            async for data in self.response.content.iter_any():
                events, buffer = parse_sse(buffer + data)
                for name, payload in events:
                    try:
                        event = orjson.loads(payload)
                        if not isinstance(event, dict):
                            raise VendorProtocolError("an event's data is not a JSON object")
                        chunks = translator.feed(name or str(event.get("type", "")), event)
                    except (orjson.JSONDecodeError, VendorProtocolError, VendorStreamError) as exc:
                        raise BackendFailed(f"backend '{self.backend}': {exc}") from None
                    counted = translator.usage
                    self.usage = Usage(counted.prompt_tokens, counted.completion_tokens)
                    for chunk in chunks:
                        yield chunk
                if translator.finished:
                    break
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.broke(exc) from None
        finally:
            await self.aclose()
        if not translator.finished:
            raise BackendFailed(f"backend '{self.backend}': the stream ended before message_stop")


def _usage(chat: dict[str, Any]) -> Usage | None:
    usage = chat.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))


BACKEND_TYPE = register(
    BackendType(
        name="anthropic",
        config=AnthropicBackendConfig,
        build=lambda name, config, resolve_path: AnthropicBackend(name, config),
        kinds=frozenset({"chat"}),
        # default_max_tokens cuts answers of callers that do not set max_tokens.
        cache_identity=("type", "model", "base_url", "anthropic_version", "default_max_tokens"),
        admission="slots",
        served_model=lambda config: config.model,
    )
)
