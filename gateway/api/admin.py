"""Operations endpoints: Prometheus metrics, the running config, reload,
roll-back and the per-backend kill switch.

Admin endpoints need the admin key (`server.admin_key_env`) once one is
configured; /metrics stays open for scrapers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.http_errors import HTTP_STATUS, error_headers
from gateway.api.http_request import header_map, request_context
from gateway.core.errors import GatewayError, Unauthenticated
from gateway.observe.metrics import exposition


class ConfigControl(Protocol):
    """What the admin endpoints drive (gateway.reload.ConfigManager)."""

    admin_key: str | None

    async def reload(self, trigger: str = ...) -> dict[str, Any]: ...

    async def rollback(self) -> dict[str, Any]: ...

    def set_enabled(self, backend: str, enabled: bool) -> dict[str, Any]: ...

    def config_view(self) -> dict[str, Any]: ...


class SloSource(Protocol):
    """gateway.observe.slo.SloTracker, as the service holds it (swapped on reload)."""

    def export(self) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(doc), status_code=status, media_type="application/json", headers=headers
    )


def admin_routes(
    control: ConfigControl | None = None, slo: Callable[[], SloSource] | None = None
) -> list[Route]:
    async def metrics(request: Request) -> Response:
        if slo is not None:
            slo().export()  # SLO gauges are computed when scraped, not per request
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    async def slo_status(request: Request) -> Response:
        return _json(200, slo().snapshot() if slo is not None else {"models": {}})

    routes = [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/slo", slo_status, methods=["GET"]),
    ]
    if control is None:
        return routes

    def endpoint(
        handler: Callable[[Request], Awaitable[Any]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                ctx = request_context(header_map(request.scope), "admin")
                if control.admin_key is not None and ctx.api_key != control.admin_key:
                    raise Unauthenticated(
                        "admin endpoints need the admin key ('Authorization: "
                        "Bearer <key>' or 'x-api-key: <key>')"
                    )
                return _json(200, await handler(request))
            except GatewayError as error:
                headers = {k.decode(): v.decode() for k, v in error_headers(error)}
                return _json(HTTP_STATUS[error.kind], {"error": error.message}, headers)
            except Exception as exc:  # ReloadRefused: the config was bad, nothing changed
                problems = getattr(exc, "problems", None)
                if problems is None:
                    raise
                return _json(
                    422, {"error": "config refused; the running config stays", "problems": problems}
                )

        run.__name__ = handler.__name__
        return run

    async def show_config(request: Request) -> Any:
        return control.config_view()

    async def reload(request: Request) -> Any:
        return await control.reload("admin")

    async def rollback(request: Request) -> Any:
        return await control.rollback()

    async def disable(request: Request) -> Any:
        return control.set_enabled(request.path_params["backend"], False)

    async def enable(request: Request) -> Any:
        return control.set_enabled(request.path_params["backend"], True)

    return [
        *routes,
        Route("/admin/config", endpoint(show_config), methods=["GET"]),
        Route("/admin/reload", endpoint(reload), methods=["POST"]),
        Route("/admin/rollback", endpoint(rollback), methods=["POST"]),
        Route("/admin/backends/{backend}/disable", endpoint(disable), methods=["POST"]),
        Route("/admin/backends/{backend}/enable", endpoint(enable), methods=["POST"]),
    ]
