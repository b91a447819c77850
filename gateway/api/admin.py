"""Operations endpoints: Prometheus metrics, the running config, reload,
roll-back and the per-backend kill switch.

Admin endpoints need the admin key (`server.admin_key_env`) once one is
configured; a config with tenants must configure one (config.loader refuses
it otherwise). The key is the running config's: one added, changed or removed
by a reload applies from the next admin call. It is held as its sha256 digest
and compared in constant time. /metrics stays open for scrapers.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.http_errors import HTTP_STATUS, error_headers
from gateway.api.http_request import header_map, request_context
from gateway.config.schema import ServerConfig
from gateway.core.auth import admin_key_matches
from gateway.core.errors import GatewayError, InvalidInput, NotFound, Unauthenticated
from gateway.observe.metrics import exposition

log = logging.getLogger("gateway.admin")


class PromotionControl(Protocol):
    """What the promotion endpoints drive (gateway.promotion.Promotions)."""

    async def promote(self, model: str, version: str) -> dict[str, Any]: ...

    def status(self, model: str) -> dict[str, Any]: ...

    async def abort(self, model: str) -> dict[str, Any]: ...

    async def stop(self) -> None: ...


class ConfigControl(Protocol):
    """What the admin endpoints drive (gateway.reload.ConfigManager)."""

    @property
    def promotions(self) -> PromotionControl | None: ...

    @property
    def admin_key_digest(self) -> bytes | None:
        """The running config's admin key, as its sha256 digest (None: no key needed)."""
        ...

    @property
    def config_sha256(self) -> str: ...

    def audit_admin(
        self,
        action: str,
        caller: dict[str, Any],
        status: int,
        config_before: str,
        target: str | None = None,
        error: str | None = None,
    ) -> None: ...

    async def reload(self, trigger: str = ...) -> dict[str, Any]: ...

    async def rollback(self) -> dict[str, Any]: ...

    def set_enabled(self, backend: str, enabled: bool) -> dict[str, Any]: ...

    def config_view(self) -> dict[str, Any]: ...


class SloSource(Protocol):
    """gateway.observe.slo.SloTracker, as the service holds it (swapped on reload)."""

    def export(self) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


def is_loopback(host: str) -> bool:
    """Whether `host` (an address to bind) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def warn_if_admin_open(server: ServerConfig, host: str) -> bool:
    """Log a warning when the admin endpoints need no key and `host` is not a
    loopback address; whether it did."""
    if server.admin_key_env or is_loopback(host):
        return False
    log.warning(
        "SECURITY: the admin endpoints are OPEN on %s: no server.admin_key_env is set, so "
        "anyone who reaches this address can read the config, reload it, roll it back "
        "and disable backends (POST /admin/...). Set server.admin_key_env, or bind "
        "127.0.0.1 (--host, server.host, GATEWAY_HOST in the default config)",
        host,
    )
    return True


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

    def check_admin_key(request: Request) -> None:
        """Unauthenticated unless the running config needs no admin key or the
        request carries it."""
        expected = control.admin_key_digest  # the running config's, read per call
        if expected is None:
            return
        ctx = request_context(header_map(request.scope), "admin")
        if not admin_key_matches(expected, ctx.api_key):
            raise Unauthenticated(
                "admin endpoints need the admin key ('Authorization: "
                "Bearer <key>' or 'x-api-key: <key>')"
            )

    def endpoint(
        handler: Callable[[Request], Awaitable[Any]], action: str
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            # Every call is audited, refused ones too: who (address, and whether
            # it held the admin key), what, and the config before and after.
            before = control.config_sha256
            caller: dict[str, Any] = {
                "address": request.client.host if request.client else None,
                "admin_key": False,
            }
            status, error_text = 500, None
            try:
                check_admin_key(request)
                caller["admin_key"] = control.admin_key_digest is not None
                response = _json(200, await handler(request))
                status = 200
                return response
            except GatewayError as error:
                status, error_text = HTTP_STATUS[error.kind], error.message
                headers = {k.decode(): v.decode() for k, v in error_headers(error)}
                return _json(status, {"error": error.message}, headers)
            except Exception as exc:  # ReloadRefused: the config was bad, nothing changed
                problems = getattr(exc, "problems", None)
                if problems is None:
                    raise
                status, error_text = 422, "; ".join(problems)
                return _json(
                    422, {"error": "config refused; the running config stays", "problems": problems}
                )
            finally:
                control.audit_admin(
                    action,
                    caller,
                    status,
                    before,
                    target=request.path_params.get("backend") or request.path_params.get("model"),
                    error=error_text,
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

    def promotions() -> PromotionControl:
        if control.promotions is None:
            raise NotFound("this gateway has no promotion gate")
        return control.promotions

    async def promote(request: Request) -> Any:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        version = body.get("version") if isinstance(body, dict) else None
        if isinstance(version, int) and not isinstance(version, bool):
            version = str(version)
        if not isinstance(version, str) or not version:
            raise InvalidInput('the body must be {"version": "<the version to promote>"}')
        return await promotions().promote(request.path_params["model"], version)

    async def promotion_status(request: Request) -> Any:
        return promotions().status(request.path_params["model"])

    async def abort_promotion(request: Request) -> Any:
        return await promotions().abort(request.path_params["model"])

    return [
        *routes,
        Route("/admin/config", endpoint(show_config, "config"), methods=["GET"]),
        Route("/admin/reload", endpoint(reload, "reload"), methods=["POST"]),
        Route("/admin/rollback", endpoint(rollback, "rollback"), methods=["POST"]),
        Route("/admin/backends/{backend}/disable", endpoint(disable, "disable"), methods=["POST"]),
        Route("/admin/backends/{backend}/enable", endpoint(enable, "enable"), methods=["POST"]),
        Route("/admin/models/{model}/promote", endpoint(promote, "promote"), methods=["POST"]),
        Route(
            "/admin/models/{model}/promotion",
            endpoint(promotion_status, "promotion"),
            methods=["GET"],
        ),
        Route(
            "/admin/models/{model}/promotion/abort",
            endpoint(abort_promotion, "promotion_abort"),
            methods=["POST"],
        ),
    ]
