"""KServe v2 / Open Inference Protocol over HTTP (with the binary tensor extension).

Routes are plain Starlette endpoints on purpose: the infer path reads raw
bytes and does no per-request pydantic work.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import __version__
from gateway.api.http_errors import internal_error_response, v2_error_response
from gateway.api.http_request import read_body, request_context, response_headers
from gateway.api.v2_codec import decode_infer_request, encode_infer_response
from gateway.core.errors import GatewayError
from gateway.core.service import InferenceService, ModelEntry
from gateway.core.types import RequestContext

EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "inference-gateway"

Handler = Callable[[Request, RequestContext], Awaitable[Response]]


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, headers=headers,
                    media_type="application/json")


def model_metadata(entry: ModelEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": entry.name,
        "versions": [entry.version],
        "platform": PLATFORM,
    }
    if entry.signature is not None:
        doc["inputs"] = [s.to_dict() for s in entry.signature.inputs]
        doc["outputs"] = [s.to_dict() for s in entry.signature.outputs]
    else:
        doc["inputs"], doc["outputs"] = [], []
    return doc


class V2HttpApi:
    """Builds the v2 routes over one InferenceService."""

    def __init__(self, service: InferenceService, max_request_bytes: int) -> None:
        self.service = service
        self.max_request_bytes = max_request_bytes

    def routes(self) -> list[Route]:
        wrap = self._endpoint
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        return [
            Route("/v2", wrap(self.server_metadata), methods=["GET"]),
            Route("/v2/health/live", wrap(self.live), methods=["GET"]),
            Route("/v2/health/ready", wrap(self.ready), methods=["GET"]),
            Route(model, wrap(self.model_metadata), methods=["GET"]),
            Route(versioned, wrap(self.model_metadata), methods=["GET"]),
            Route(model + "/ready", wrap(self.model_ready), methods=["GET"]),
            Route(versioned + "/ready", wrap(self.model_ready), methods=["GET"]),
            Route(model + "/infer", wrap(self.infer), methods=["POST"]),
            Route(versioned + "/infer", wrap(self.infer), methods=["POST"]),
        ]

    @staticmethod
    def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Maps errors once: GatewayError to its status, anything else to a logged 500."""

        async def endpoint(request: Request) -> Response:
            ctx = None
            try:
                ctx = request_context(request, "v2_http")
                return await handler(request, ctx)
            except GatewayError as error:
                if ctx is None:
                    ctx = RequestContext(request_id=request.headers.get("x-request-id") or "-",
                                         protocol="v2_http")
                return v2_error_response(error, response_headers(ctx))
            except Exception as exc:  # a bug; never let it take the process down
                request_id = ctx.request_id if ctx else "-"
                return internal_error_response(exc, request_id, {"x-request-id": request_id})

        endpoint.__name__ = handler.__name__
        return endpoint

    async def server_metadata(self, request: Request, ctx: RequestContext) -> Response:
        return _json({"name": PLATFORM, "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Request, ctx: RequestContext) -> Response:
        return _json({"live": True})

    async def ready(self, request: Request, ctx: RequestContext) -> Response:
        ready = self.service.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    async def model_metadata(self, request: Request, ctx: RequestContext) -> Response:
        params = request.path_params
        entry = self.service.model(params["model"], params.get("version"))
        return _json(model_metadata(entry))

    async def model_ready(self, request: Request, ctx: RequestContext) -> Response:
        params = request.path_params
        entry = self.service.model(params["model"], params.get("version"))
        ready = entry.ready()
        return _json({"name": entry.name, "ready": ready}, 200 if ready else 503)

    async def infer(self, request: Request, ctx: RequestContext) -> Response:
        params = request.path_params
        # Resolve the model first: an unknown model is a 404 whatever the body holds.
        self.service.model(params["model"], params.get("version"))
        body = await read_body(request, self.max_request_bytes)
        infer_request, options = decode_infer_request(
            body,
            request.headers.get("inference-header-content-length"),
            params["model"],
            params.get("version"),
        )
        response = await self.service.infer(infer_request, ctx)
        payload, header_length = encode_infer_response(response, infer_request.outputs, options)
        headers = response_headers(ctx)
        if header_length is None:
            return Response(payload, headers=headers, media_type="application/json")
        headers["inference-header-content-length"] = str(header_length)
        return Response(payload, headers=headers, media_type="application/octet-stream")
