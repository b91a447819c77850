"""KServe v2 / Open Inference Protocol over HTTP (with the binary tensor extension).

Infer is served on raw ASGI (see `InferFastPath` in http_app.py): it reads the
body bytes, decodes them straight into numpy arrays and builds no framework or
pydantic objects per request. Metadata and health are ordinary Starlette routes,
and so are Triton's extensions: model configuration, statistics and the
repository index (their documents: api/triton_docs.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway import __version__
from gateway.api.http_errors import error_headers, v2_error_body
from gateway.api.http_request import (
    gateway_headers,
    header_map,
    id_only_context,
    read_body,
    request_context,
    send_response,
)
from gateway.api.plumbing import http_internal_error, method_not_allowed, while_connected
from gateway.api.triton_docs import model_config, repository_index, statistics
from gateway.api.v2_codec import decode_infer_request, encode_infer_response
from gateway.core.errors import GatewayError, InvalidInput
from gateway.core.types import RequestContext
from gateway.observe import tracing
from gateway.pipeline.entry import ModelEntry
from gateway.pipeline.service import InferenceService

EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
PLATFORM = "inference-gateway"
JSON = b"application/json"
OCTETS = b"application/octet-stream"

MetadataHandler = Callable[[dict[str, str]], tuple[int, Any]]
BodyHandler = Callable[[dict[str, str], bytes], tuple[int, Any]]
Endpoint = Callable[[Request], Awaitable[Response]]


def model_metadata(entry: ModelEntry) -> dict[str, Any]:
    signature = entry.signature
    return {
        "name": entry.name,
        "versions": [entry.version],
        "platform": PLATFORM,
        "inputs": [s.to_dict() for s in signature.inputs] if signature else [],
        "outputs": [s.to_dict() for s in signature.outputs] if signature else [],
    }


class V2HttpApi:
    """The v2 endpoints over one InferenceService."""

    def __init__(self, service: InferenceService, max_request_bytes: int) -> None:
        self.service = service
        self.max_request_bytes = max_request_bytes

    # -- infer: the hot path -------------------------------------------------

    async def infer(
        self, scope: Scope, receive: Receive, send: Send, params: dict[str, str]
    ) -> None:
        """Serve one infer call; every error is answered here, never raised."""
        headers = header_map(scope)
        ctx: RequestContext | None = None
        code = 500
        try:
            ctx = request_context(headers, "v2_http")
            if scope["method"] != "POST":
                code, body, extra = method_not_allowed(
                    scope["method"], scope["path"], "POST", openai=False
                )
                await send_response(send, code, body, JSON, gateway_headers(ctx) + extra)
                return
            model, version = params["model"], params.get("version")
            # Resolve the model first: an unknown model is a 404 whatever the body.
            entry = self.service.admit(model, ctx, version)
            ctx.model = entry.name
            body = await read_body(receive, headers, self.max_request_bytes, ctx)
            started_ns = time.time_ns() if tracing.ENABLED else 0
            try:
                # Inputs are checked against the signature as they are decoded.
                request, options = decode_infer_request(
                    body,
                    _text(headers.get(b"inference-header-content-length")),
                    model,
                    version,
                    entry.signature if entry.kind == "tensor" else None,
                )
            except GatewayError as exc:
                if started_ns:
                    tracing.step(ctx, "validate", started_ns, exc)
                raise
            call = self.service.infer_call(request, ctx)
            response = call.answer
            if response is None:
                # A caller who goes away meanwhile: its queued work is dropped, not executed.
                response = await while_connected(receive, call.run(), ctx.request_id)
            if response is None:
                code = 499  # the caller went away: nobody to answer (nginx's convention)
                return
            payload, header_length = encode_infer_response(response, request.outputs, options)
            out = gateway_headers(ctx)
            code = 200
            if header_length is None:
                await send_response(send, 200, payload, JSON, out)
            else:
                out.append((b"inference-header-content-length", str(header_length).encode()))
                await send_response(send, 200, payload, OCTETS, out)
        except GatewayError as error:
            ctx = ctx or id_only_context(headers, "v2_http")
            code, body = v2_error_body(error)
            await send_response(send, code, body, JSON, gateway_headers(ctx) + error_headers(error))
        except asyncio.CancelledError:
            # Only a stop past its grace period cancels a request (a caller who left
            # is 499, from while_connected); it is answered 503 (api/http_app.py).
            code = 503
            raise
        except Exception as exc:  # noqa: BLE001 - a bug; never let it take the process down
            code, body, out = http_internal_error(exc, ctx, openai=False)
            await send_response(send, code, body, JSON, out)
        finally:
            if ctx is not None:
                self.service.observe(ctx, code)

    # -- metadata and health -------------------------------------------------

    def routes(self) -> list[Route]:
        wrap = self._json_endpoint
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        return [
            Route("/v2", wrap(self.server_metadata), methods=["GET"]),
            Route("/v2/health/live", wrap(self.live), methods=["GET"]),
            Route("/v2/health/ready", wrap(self.ready), methods=["GET"]),
            # Before /v2/models/{model}, which would take "stats" for a model's name.
            Route("/v2/models/stats", wrap(self.model_statistics), methods=["GET"]),
            Route(model, wrap(self.model_metadata), methods=["GET"]),
            Route(versioned, wrap(self.model_metadata), methods=["GET"]),
            Route(model + "/ready", wrap(self.model_ready), methods=["GET"]),
            Route(versioned + "/ready", wrap(self.model_ready), methods=["GET"]),
            Route(model + "/config", wrap(self.model_config), methods=["GET"]),
            Route(versioned + "/config", wrap(self.model_config), methods=["GET"]),
            Route(model + "/stats", wrap(self.model_statistics), methods=["GET"]),
            Route(versioned + "/stats", wrap(self.model_statistics), methods=["GET"]),
            Route(
                "/v2/repository/index",
                self._json_body_endpoint(self.repository_index),
                methods=["POST"],
            ),
        ]

    @staticmethod
    def _json_endpoint(handler: MetadataHandler) -> Endpoint:
        async def answer(request: Request, ctx: RequestContext) -> tuple[int, Any]:
            return handler(request.path_params)

        return _json_route(answer, handler.__name__)

    def _json_body_endpoint(self, handler: BodyHandler) -> Endpoint:
        limit = self.max_request_bytes

        async def answer(request: Request, ctx: RequestContext) -> tuple[int, Any]:
            body = await read_body(request.receive, header_map(request.scope), limit, ctx)
            return handler(request.path_params, body)

        return _json_route(answer, handler.__name__)

    def server_metadata(self, params: dict[str, str]) -> tuple[int, Any]:
        return 200, {"name": PLATFORM, "version": __version__, "extensions": EXTENSIONS}

    def live(self, params: dict[str, str]) -> tuple[int, Any]:
        return 200, {"live": True}

    def ready(self, params: dict[str, str]) -> tuple[int, Any]:
        ready = self.service.ready()
        return (200 if ready else 503), {"ready": ready}

    def model_metadata(self, params: dict[str, str]) -> tuple[int, Any]:
        return 200, model_metadata(self.service.model(params["model"], params.get("version")))

    def model_ready(self, params: dict[str, str]) -> tuple[int, Any]:
        entry = self.service.model(params["model"], params.get("version"))
        ready = entry.ready()
        return (200 if ready else 503), {"name": entry.name, "ready": ready}

    # -- Triton's extensions (need no API key, as metadata) ------------------

    def model_config(self, params: dict[str, str]) -> tuple[int, Any]:
        entry = self.service.model(params["model"], params.get("version"))
        return 200, model_config(entry, PLATFORM)

    def model_statistics(self, params: dict[str, str]) -> tuple[int, Any]:
        return 200, statistics(self.service.statistics(params.get("model"), params.get("version")))

    def repository_index(self, params: dict[str, str], body: bytes) -> tuple[int, Any]:
        """POST /v2/repository/index: an empty body, or {"ready": true|false}."""
        ready = False
        if body.strip():
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"request body: not valid JSON ({exc})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("ready", False), bool):
                raise InvalidInput(
                    'request body: expected a JSON object such as {"ready": true}, '
                    f"got {body[:100].decode('utf-8', 'replace')!r}"
                )
            ready = doc.get("ready", False)
        return 200, repository_index(list(self.service.models.values()), ready)


def _json_route(
    answer: Callable[[Request, RequestContext], Awaitable[tuple[int, Any]]], name: str
) -> Endpoint:
    """A JSON endpoint: `answer`'s status and document, or the v2 error shape for
    a GatewayError, with the gateway's headers either way."""

    async def endpoint(request: Request) -> Response:
        raw_headers = header_map(request.scope)
        ctx: RequestContext | None = None
        try:
            ctx = request_context(raw_headers, "v2_http")  # a bad header is a 400 here too
            status, doc = await answer(request, ctx)
            body = orjson.dumps(doc)
            extra: list[tuple[bytes, bytes]] = []
        except GatewayError as error:
            status, body = v2_error_body(error)
            extra = error_headers(error)
        if ctx is None:
            ctx = id_only_context(raw_headers, "v2_http")
        headers = {k.decode(): v.decode() for k, v in gateway_headers(ctx) + extra}
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    endpoint.__name__ = name
    return endpoint


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
