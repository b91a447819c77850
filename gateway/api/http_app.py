"""The ASGI application: every HTTP surface mounted on one FastAPI app."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

import orjson
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway import __version__
from gateway.api.v2_http import V2HttpApi
from gateway.core.service import InferenceService


def create_http_app(
    service: InferenceService,
    max_request_bytes: int,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            await on_shutdown()

    app = FastAPI(
        title="inference-gateway", version=__version__, lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    for route in V2HttpApi(service, max_request_bytes).routes():
        app.router.routes.append(route)

    async def http_error(request: Request, exc: Exception) -> Response:
        # Unknown paths and wrong methods answer in the protocol's error shape too.
        assert isinstance(exc, HTTPException)
        message = {404: f"no route for {request.url.path}",
                   405: f"method {request.method} not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail))
        return Response(orjson.dumps({"error": message}), status_code=exc.status_code,
                        media_type="application/json", headers=exc.headers)

    app.add_exception_handler(HTTPException, http_error)
    return app
