"""The OpenAI-compatible surface: `POST /v1/chat/completions` (whole or as
server-sent events), `POST /v1/embeddings`, `GET /v1/models`.

`model` names a gateway model (kind `chat` or `embeddings`), never a vendor
model: moving a model between vendors, or to a local backend, is a config
change the caller never sees. The POST endpoints run on raw ASGI like v2
infer; errors use OpenAI's shape with the statuses of the one taxonomy.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.api.http_errors import HTTP_STATUS, error_headers, openai_error_body, openai_error_doc
from gateway.api.http_request import (
    gateway_headers,
    header_map,
    id_only_context,
    read_body,
    request_context,
    send_response,
)
from gateway.api.plumbing import http_internal_error, method_not_allowed, while_connected
from gateway.core.errors import GatewayError, InvalidInput
from gateway.core.llm import ChatRequest, ChatStream, EmbeddingRequest
from gateway.core.types import RequestContext
from gateway.pipeline.service import InferenceService

log = logging.getLogger("gateway.api.openai")

JSON = b"application/json"
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_DONE = b"data: [DONE]\n\n"
_EVENT_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

# A route handler answers the request and returns the status it counts as (a
# stream that ended with an error event counts as that error's status).
Handler = Callable[[Scope, Receive, Send, dict[bytes, bytes], RequestContext], Awaitable[int]]


class OpenAIApi:
    def __init__(self, service: InferenceService, max_request_bytes: int) -> None:
        self.service = service
        self.max_request_bytes = max_request_bytes
        self.post_routes: dict[str, Handler] = {
            "/v1/chat/completions": self._chat,
            "/v1/embeddings": self._embeddings,
        }

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one POST route; every error is answered here, never raised."""
        headers = header_map(scope)
        ctx: RequestContext | None = None
        code = 500
        try:
            ctx = request_context(headers, "openai")
            if scope["method"] != "POST":
                code, body, extra = method_not_allowed(
                    scope["method"], scope["path"], "POST", openai=True
                )
                await send_response(send, code, body, JSON, gateway_headers(ctx) + extra)
                return
            # The key first: nothing of the body is read or parsed for an unknown caller.
            self.service.authenticate(ctx)
            code = await self.post_routes[scope["path"]](scope, receive, send, headers, ctx)
        except GatewayError as error:
            ctx = ctx or id_only_context(headers, "openai")
            code, body = openai_error_body(error)
            await send_response(send, code, body, JSON, gateway_headers(ctx) + error_headers(error))
        except asyncio.CancelledError:
            # Only a stop past its grace period cancels a request (a caller who left
            # is 499, from while_connected); it is answered 503 (api/http_app.py).
            code = 503
            raise
        except Exception as exc:  # noqa: BLE001 - a bug; never let it take the process down
            code, body, out = http_internal_error(exc, ctx, openai=True)
            await send_response(send, code, body, JSON, out)
        finally:
            if ctx is not None:
                self.service.observe(ctx, code)

    # -- chat ------------------------------------------------------------------

    async def _chat(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        ctx: RequestContext,
    ) -> int:
        body = _json_body(await read_body(receive, headers, self.max_request_bytes, ctx))
        request = chat_request(body)
        model = request.model
        if not request.stream:
            result = await while_connected(receive, self.service.chat(request, ctx), ctx.request_id)
            if result is None:
                return 499
            answer = result.body
            answer["model"] = model
            if "usage" not in answer and result.usage is not None:
                answer["usage"] = result.usage.to_openai()
            await send_response(send, 200, orjson.dumps(answer), JSON, gateway_headers(ctx))
            return 200
        stream = await while_connected(
            receive, self.service.chat_stream(request, ctx), ctx.request_id
        )
        if stream is None:
            return 499
        # From here on the status is sent: failures become an error event.
        code = await while_connected(
            receive,
            self._relay(send, model, request, stream, ctx),
            ctx.request_id,
            on_cancel=stream.aclose,
        )
        return 499 if code is None else code

    async def _relay(
        self, send: Send, model: str, request: ChatRequest, stream: ChatStream, ctx: RequestContext
    ) -> int:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": gateway_headers(ctx) + _EVENT_STREAM_HEADERS,
            }
        )
        dumps = orjson.dumps
        chunks = stream.__aiter__()
        try:
            async for chunk in chunks:
                if not request.include_usage:
                    if not chunk.get("choices"):
                        continue  # the usage chunk we asked the vendor for, not the caller
                    chunk.pop("usage", None)
                chunk["model"] = model
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + dumps(chunk) + b"\n\n",
                        "more_body": True,
                    }
                )
            tail = _DONE
            code = 200
        except GatewayError as error:
            log.warning(
                "request %s: stream from %s failed: %s", ctx.request_id, ctx.backend, error.message
            )
            tail = b"data: " + dumps(openai_error_doc(error)) + b"\n\n"
            code = HTTP_STATUS[error.kind]
        finally:
            await chunks.aclose()
            await stream.aclose()
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        return code

    # -- embeddings --------------------------------------------------------------

    async def _embeddings(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        ctx: RequestContext,
    ) -> int:
        body = _json_body(await read_body(receive, headers, self.max_request_bytes, ctx))
        model = _model_field(body)
        texts = _embedding_inputs(body.get("input"))
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise InvalidInput(f"encoding_format: expected 'float' or 'base64', got {encoding!r}")
        dimensions = body.get("dimensions")
        if dimensions is not None and (
            not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
        ):
            raise InvalidInput(f"dimensions: expected an integer >= 1, got {dimensions!r}")
        result = await while_connected(
            receive,
            self.service.embed(EmbeddingRequest(model, texts, dimensions), ctx),
            ctx.request_id,
        )
        if result is None:
            return 499
        vectors = result.vectors
        if encoding == "base64":
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode(),
                }
                for i, row in enumerate(vectors)
            ]
        else:
            data = [
                {"object": "embedding", "index": i, "embedding": row}
                for i, row in enumerate(vectors)
            ]
        prompt = result.usage.prompt_tokens if result.usage else 0
        answer = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        payload = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        await send_response(send, 200, payload, JSON, gateway_headers(ctx))
        return 200

    # -- models ------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [Route("/v1/models", self.list_models, methods=["GET"])]

    async def list_models(self, request: Request) -> Response:
        raw_headers = header_map(request.scope)
        ctx: RequestContext | None = None
        try:
            ctx = request_context(raw_headers, "openai")  # a bad header is a 400 here too
            headers = {k.decode(): v.decode() for k, v in gateway_headers(ctx)}
            models = self.service.models_for(ctx)
        except GatewayError as error:
            status, body = openai_error_body(error)
            ctx = ctx or id_only_context(raw_headers, "openai")
            headers = {k.decode(): v.decode() for k, v in gateway_headers(ctx)}
            return Response(
                body, status_code=status, headers=headers, media_type="application/json"
            )
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "inference-gateway"}
            for m in models
            if m.kind in ("chat", "embeddings")
        ]
        return Response(
            orjson.dumps({"object": "list", "data": data}),
            headers=headers,
            media_type="application/json",
        )


# -- request checks: each names the field, what was expected and what came ------


def _json_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidInput("request body is empty: expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"request body: expected a JSON object, got {_type(body)}")
    return body


def _model_field(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput(
            f"model: expected the name of a gateway model (a string), "
            f"got {_type(model) if model is not None else 'nothing'}"
        )
    return model


def chat_request(body: dict[str, Any]) -> ChatRequest:
    model = _model_field(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        got = (
            "nothing"
            if messages is None
            else ("an empty list" if messages == [] else _type(messages))
        )
        raise InvalidInput(f"messages: expected a non-empty list of messages, got {got}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidInput(f"messages[{i}]: expected an object, got {_type(message)}")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidInput(
                f"messages[{i}].role: expected one of {', '.join(ROLES)}, got {role!r}"
            )
        content = message.get("content")
        if not (isinstance(content, (str, list)) or (content is None and role == "assistant")):
            raise InvalidInput(
                f"messages[{i}].content: expected a string or a list of parts, got {_type(content)}"
            )
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise InvalidInput(f"stream: expected true or false, got {_type(stream)}")
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise InvalidInput(f"{name}: expected an integer >= 1, got {value!r}")
    for name, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not low <= value <= high
        ):
            raise InvalidInput(f"{name}: expected a number from {low:g} to {high:g}, got {value!r}")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidInput(f"stream_options: expected an object, got {_type(options)}")
    include_usage = bool(options and options.get("include_usage"))
    return ChatRequest(model, body, stream=bool(stream), include_usage=include_usage)


# Texts per /v1/embeddings request: OpenAI's own limit, which its SDKs and
# LangChain already respect (docs/configuration.md#request-limits).
MAX_EMBEDDING_INPUTS = 2048


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if len(value) > MAX_EMBEDDING_INPUTS:
            raise InvalidInput(
                f"input: at most {MAX_EMBEDDING_INPUTS} texts per request, got {len(value)}"
            )
        return value
    if isinstance(value, list) and value and all(isinstance(v, (int, list)) for v in value):
        raise InvalidInput(
            "input: expected text (a string or a list of strings), got token ids; "
            "the gateway tokenizes for its models"
        )
    got = "nothing" if value is None else ("an empty list" if value == [] else _type(value))
    raise InvalidInput(f"input: expected a string or a non-empty list of strings, got {got}")


def _type(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
