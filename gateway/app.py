"""Composition root: config -> runtime objects (backends, routes, service) -> servers."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from gateway.api import http_limits
from gateway.api.grpc_server import GRPC_ADDRESS_ENV, GrpcServer, grpc_address
from gateway.api.http_app import InferFastPath, Lifecycle, create_http_app
from gateway.config.loader import ConfigError, LoadedConfig, load_config
from gateway.config.tls import tls_files
from gateway.gcfreeze import freeze_long_lived
from gateway.observe import tracing

# The runtime is built in gateway.runtime; Runtime and build_runtime stay importable here.
from gateway.runtime import Runtime as Runtime
from gateway.runtime import build_runtime as build_runtime

log = logging.getLogger("gateway")

CONFIG_ENV = "GATEWAY_CONFIG"
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def default_config_path() -> Path:
    """$GATEWAY_CONFIG, else config/gateway.yaml here or beside the package."""
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    local = Path("config/gateway.yaml")
    return local if local.exists() else _PACKAGE_ROOT / "config" / "gateway.yaml"


def check_config(path: str | os.PathLike[str]) -> tuple[LoadedConfig | None, list[str]]:
    """What `gateway check` reports: every problem, or none."""
    try:
        loaded = load_config(path)
        runtime = build_runtime(loaded)
    except ConfigError as exc:
        return None, exc.problems
    asyncio.run(runtime.close())
    return loaded, []


READY_LINE = "gateway ready"


def create_app(
    runtime: Runtime, on_startup: Callable[[], None] | None = None, grpc: GrpcServer | None = None
) -> InferFastPath:
    """The ASGI app over `runtime`; with `grpc`, its lifespan also starts that
    gRPC server (on the app's event loop) and stops it before the backends close."""
    from gateway.promotion.manager import Promotions
    from gateway.reload import ConfigManager

    server = runtime.loaded.config.server
    manager = ConfigManager(runtime)  # the admin key is the running config's (reload.py)
    manager.promotions = Promotions(manager)  # POST /admin/models/{model}/promote

    async def started() -> None:
        if grpc is not None:
            grpc.start_soon()  # binds now: a port it cannot have fails the startup
        await manager.start(server.watch_config_s)
        freeze_long_lived()  # the runtime is built: what lives from now on is per request
        if on_startup is not None:
            on_startup()

    async def stopped() -> None:
        if grpc is not None:
            await grpc.stop()
        await manager.stop()
        await manager.runtime.close()  # the running config's, whichever reload it came from
        # Now, on the loop its last batches are posted from (the loop ends next).
        await tracing.flush_async()

    # What SIGTERM does (gateway/uvicorn_stop.py): the running config's server.shutdown.
    lifecycle = Lifecycle(
        runtime.service, lambda: manager.runtime.loaded.config.server.shutdown, grpc
    )
    return create_http_app(
        runtime.service,
        server.max_request_bytes,
        on_shutdown=stopped,
        on_startup=started,
        control=manager,
        lifecycle=lifecycle,
    )


def worker_grpc_server(runtime: Runtime) -> GrpcServer | None:
    """One worker's gRPC server: on the address `gateway serve --workers N` passed
    down (else the config's), the port shared with the other workers."""
    server = runtime.loaded.config.server
    address = os.environ.get(GRPC_ADDRESS_ENV)
    if address is None:
        address = grpc_address(server.host, server.grpc_port) if server.grpc_port else ""
    if not address:
        return None
    return GrpcServer(
        runtime.service,
        server,
        address,
        reuse_port=True,
        tls=tls_files(runtime.loaded.config.server.tls, runtime.loaded.resolve_path),
    )


def app_from_env() -> InferFastPath:
    """ASGI factory for multi-worker serving: each worker builds its own runtime."""
    from gateway.observe.logs import setup_logging

    loaded = load_config(default_config_path())
    setup_logging(loaded.config.server.log_level, loaded.config.server.log_format)
    tracing.setup()  # as the OTEL_* variables say; off by default
    # The parent process already listens on the shared socket, so a worker is
    # ready as soon as its application has started.
    runtime = build_runtime(loaded)
    grpc = worker_grpc_server(runtime)
    # This worker's connections get the limits of its config (server.http).
    http_limits.configure(
        http_limits.HttpLimits.from_config(loaded.config.server.http, grpc=grpc is not None)
    )
    return create_app(
        runtime,
        on_startup=lambda: log.info("%s (worker %d)", READY_LINE, os.getpid()),
        grpc=grpc,
    )
