"""The ASGI application: every HTTP surface mounted on one FastAPI app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway import __version__
from gateway.api.admin import ConfigControl, admin_routes
from gateway.api.grpc_server import GrpcServer
from gateway.api.http_errors import error_headers, message_body, openai_error_body, v2_error_body
from gateway.api.openai import OpenAIApi
from gateway.api.openapi import INFER_PATHS, OPENAPI_PATH, OpenApiEndpoint, served_operations
from gateway.api.openapi_docs import docs_routes
from gateway.api.plumbing import method_not_allowed
from gateway.api.v2_http import V2HttpApi
from gateway.config.schema import ShutdownConfig
from gateway.core.errors import Overloaded
from gateway.pipeline.service import InferenceService

InferAsgi = Callable[[Scope, Receive, Send, dict[str, str]], Awaitable[None]]


class Lifecycle:
    """One serving process's stop, driven by gateway/uvicorn_stop.py on SIGTERM.

    `drain()` makes readiness fail at once: HTTP /v2/health/ready, gRPC
    ServerReady and grpc.health.v1 all ask `InferenceService.ready()`, which
    answers False once the service is `stopping` (the same object across
    reloads: reload.py replaces its contents); liveness is not touched. `cancelling` is set when the grace period is over and the
    requests still running are cancelled: InferFastPath then answers them 503
    in the surface's error shape instead of uvicorn's bare 500.
    `settings` is read when the stop begins, so a reload's values apply.
    """

    def __init__(
        self,
        service: InferenceService,
        settings: Callable[[], ShutdownConfig] = ShutdownConfig,
        grpc: GrpcServer | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.grpc = grpc  # a worker's gRPC server (started by the app's lifespan)
        self.draining = False
        self.cancelling = False

    def drain(self) -> None:
        """Readiness fails from now on. Attribute stores only: safe in a signal handler."""
        self.draining = True
        self.service.stopping = True

    async def answer_cancelled(self, scope: Scope, send: Send) -> bool:
        """Answer a request cancelled at the end of the grace period: 503 (overloaded,
        so clients retry elsewhere) with the error body of its surface. False when
        an answer had already started (uvicorn then closes the connection)."""
        error = Overloaded(
            "the gateway stopped before this request finished (its shutdown grace "
            "period, server.shutdown.grace_s, ran out); retry it"
        )
        openai = scope.get("path", "").startswith("/v1/")
        status, body = openai_error_body(error) if openai else v2_error_body(error)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *error_headers(error),
        ]
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except RuntimeError:  # uvicorn: the response had started (a stream) or was sent
            return False
        return True


class InferFastPath:
    """ASGI front door: `/v2/models/{m}[/versions/{v}]/infer` goes straight to the
    v2 infer endpoint; everything else (and lifespan) goes to FastAPI.

    The infer endpoint maps every error itself, so FastAPI's middleware stack
    and its route scan add nothing there but cost per request.
    """

    def __init__(
        self,
        app: FastAPI,
        infer: InferAsgi,
        openai: OpenAIApi | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.app = app
        self.infer = infer
        self.openai = openai
        self.openai_paths = frozenset(openai.post_routes) if openai else frozenset()
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The try costs nothing until something raises (zero-cost exceptions).
        try:
            if scope["type"] == "http":
                path = scope["path"]
                if path in self.openai_paths:
                    await self.openai.handle(scope, receive, send)  # type: ignore[union-attr]  # openai_paths is empty without it
                    return
                params = infer_path_params(path)
                if params is not None:
                    await self.infer(scope, receive, send, params)
                    return
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            # Only the server cancels a request task, and only once the shutdown's
            # grace period is over: answer it cleanly if it can still be answered.
            lifecycle = self.lifecycle
            if (
                lifecycle is None
                or not lifecycle.cancelling
                or scope["type"] != "http"
                or not await lifecycle.answer_cancelled(scope, send)
            ):
                raise


def infer_path_params(path: str) -> dict[str, str] | None:
    """{'model': m} or {'model': m, 'version': v} for an infer path, else None."""
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    parts = path[len("/v2/models/") : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return {"model": parts[0]}
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return {"model": parts[0], "version": parts[2]}
    return None


def create_http_app(
    service: InferenceService,
    max_request_bytes: int,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    on_startup: Callable[[], Awaitable[None] | None] | None = None,
    control: ConfigControl | None = None,
    lifecycle: Lifecycle | None = None,
) -> InferFastPath:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            started = on_startup()
            if started is not None:
                await started
        yield
        if on_shutdown is not None:
            await on_shutdown()

    app = FastAPI(
        title="inference-gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    v2 = V2HttpApi(service, max_request_bytes)
    openai = OpenAIApi(service, max_request_bytes)
    for route in [*v2.routes(), *openai.routes(), *admin_routes(control, slo=lambda: service.slo)]:
        app.router.routes.append(route)
    # Our own document (api/openapi.py), not FastAPI's: infer and the OpenAI POST
    # routes never reach FastAPI. It covers every operation served (FastAPI's
    # routes, and the paths InferFastPath serves on raw ASGI).
    raw_posts = [*INFER_PATHS, *openai.post_routes]
    document = OpenApiEndpoint(
        service,
        max_request_bytes,
        served=lambda: served_operations(app.router.routes, raw_posts),
        control=control,
    )
    app.router.routes.append(Route(OPENAPI_PATH, document.handle, methods=["GET"]))
    app.router.routes.extend(docs_routes())  # /docs, /redoc and their assets, offline

    async def http_error(request: Request, exc: Exception) -> Response:
        # Unknown paths and wrong methods answer in the surface's error shape too
        # (docs/contracts.md#endpoints): OpenAI's under /v1/, KServe v2's elsewhere.
        assert isinstance(exc, HTTPException)
        path = request.url.path
        openai = path.startswith("/v1/")
        allow = exc.headers.get("Allow") if exc.headers else None
        headers: Mapping[str, str] | None
        if exc.status_code == 405 and allow is not None:
            status, body, extra = method_not_allowed(request.method, path, allow, openai)
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in extra}
        else:
            message = f"no route for {path}" if exc.status_code == 404 else str(exc.detail)
            status, body, headers = exc.status_code, message_body(message, openai), exc.headers
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    app.add_exception_handler(HTTPException, http_error)
    return InferFastPath(app, v2.infer, openai, lifecycle or Lifecycle(service))
