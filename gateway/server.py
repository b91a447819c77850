"""Runs the servers: one process (on uvloop) or N uvicorn workers on the same ports.

HTTP (uvicorn) and gRPC run in the same process and serve the same runtime on
one event loop (gRPC's calls arrive on its own threads, or on the loop itself
with `server.grpc.engine: aio`; see api/grpc_server.py). With N workers each
worker runs both: uvicorn shares the parent's HTTP socket, and each worker
binds the gRPC port itself with SO_REUSEPORT, the kernel spreading connections
across them.

HTTP is served by uvicorn's httptools protocol with the limits of `server.http`
(api/http_limits.py: each worker sets them from its config in app_from_env),
and both protocols serve TLS with `server.tls`.

Stopping (`server.shutdown`) is uvicorn_stop.py's: the same in one process
and in each of N workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import ssl
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from gateway.api import http_limits
from gateway.api.grpc_server import GRPC_ADDRESS_ENV, GrpcServer, grpc_address
from gateway.app import CONFIG_ENV, Runtime, build_runtime, create_app
from gateway.config.loader import LoadedConfig
from gateway.config.tls import tls_files
from gateway.fd_budget import raise_open_files_limit
from gateway.observe.slo_rings import SLO_FILE_PREFIX
from gateway.uvicorn_stop import GatewayServer, Supervisor, gateway_workers

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal, NotRequired, TypedDict

    class _UvicornOptions(TypedDict):
        """The keyword arguments of uvicorn.Config (and uvicorn.run) set here."""

        host: str
        port: int
        http: type[asyncio.Protocol]
        loop: str
        lifespan: Literal["auto", "on", "off"]
        access_log: bool
        log_level: str
        timeout_keep_alive: int
        log_config: None
        ssl_certfile: NotRequired[str]
        ssl_keyfile: NotRequired[str]
        ssl_ca_certs: NotRequired[str]
        ssl_cert_reqs: NotRequired[int]


log = logging.getLogger("gateway")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _uvicorn_options(loaded: LoadedConfig, host: str, port: int) -> _UvicornOptions:
    server = loaded.config.server
    options: _UvicornOptions = {
        "host": host,
        "port": port,
        # httptools with the limits of server.http (each process sets them:
        # http_limits.configure, here or in app_from_env).
        "http": http_limits.LimitedHttpToolsProtocol,
        "loop": "none",
        "lifespan": "on",
        "access_log": False,
        "log_level": server.log_level,
        "timeout_keep_alive": server.http.keep_alive_timeout_s,
        "log_config": None,
    }
    tls = tls_files(loaded.config.server.tls, loaded.resolve_path)
    if tls is not None:
        options["ssl_certfile"] = str(tls.cert_file)
        options["ssl_keyfile"] = str(tls.key_file)
        if tls.client_ca_file is not None:
            options["ssl_ca_certs"] = str(tls.client_ca_file)
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def serve(loaded: LoadedConfig, host: str, http_port: int, grpc_port: int, workers: int) -> None:
    """Serve HTTP on `http_port` and gRPC on `grpc_port` (0: no gRPC)."""
    before, after = raise_open_files_limit()  # workers inherit it
    if after != before:
        log.info("open-files limit raised from %d to %d", before, after)
    if workers > 1:
        _serve_workers(loaded, host, http_port, grpc_port, workers)
        return
    http_limits.configure(
        http_limits.HttpLimits.from_config(loaded.config.server.http, grpc=bool(grpc_port))
    )
    runtime = build_runtime(loaded)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve_one(runtime, loaded, host, http_port, grpc_port))


async def _serve_one(
    runtime: Runtime, loaded: LoadedConfig, host: str, port: int, grpc_port: int = 0
) -> None:
    app = create_app(runtime)
    config = uvicorn.Config(app, **_uvicorn_options(loaded, host, port))
    grpc: GrpcServer | None = None
    if grpc_port:
        # Started before uvicorn, so READY_LINE means both protocols listen.
        grpc = GrpcServer(
            runtime.service,
            loaded.config.server,
            grpc_address(host, grpc_port),
            tls=tls_files(loaded.config.server.tls, loaded.resolve_path),
        )
        await grpc.start()
    log.info("serving %d model(s)", len(runtime.service.models))
    try:
        await GatewayServer(config, grpc, app.lifecycle).serve()
    finally:
        if grpc is not None:
            await grpc.stop(0)  # already stopped unless uvicorn failed to start


def _serve_workers(
    loaded: LoadedConfig, host: str, port: int, grpc_port: int, workers: int
) -> None:
    # Each worker process builds its own runtime (and its own ONNX sessions)
    # from the same file; the parent has already validated it.
    if loaded.source is not None:
        os.environ[CONFIG_ENV] = str(Path(loaded.source))
    # The command line's gRPC address, which the workers' config may not say.
    os.environ[GRPC_ADDRESS_ENV] = grpc_address(host, grpc_port) if grpc_port else ""
    metrics_dir = _shared_metrics_dir()
    options = _uvicorn_options(loaded, host, port)
    options["loop"] = "uvloop"
    log.info("metrics of all workers aggregated through %s", metrics_dir)
    secure = "s" if loaded.config.server.tls is not None else ""
    log.info(
        "serving on http%s://%s:%d%s with %d workers",
        secure,
        host,
        port,
        f" and grpc{secure}://{grpc_address(host, grpc_port)}" if grpc_port else "",
        workers,
    )
    try:
        # What uvicorn.run does for workers, with the gateway's supervisor and workers.
        config = uvicorn.Config(
            "gateway.app:app_from_env", factory=True, workers=workers, **options
        )
        with gateway_workers():
            Supervisor(config, sockets=[config.bind_socket()]).run()
    finally:
        if metrics_dir.startswith(tempfile.gettempdir()) and "gateway-metrics-" in metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _shared_metrics_dir() -> str:
    """prometheus-client's multiprocess mode: each worker writes its samples to
    files in one directory and /metrics sums them, whichever worker answers.
    Set before the workers start (they import prometheus-client afresh)."""
    chosen = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if chosen:
        directory = Path(chosen)
        directory.mkdir(parents=True, exist_ok=True)
        # An earlier run's samples and SLO counts (observe/slo_rings.py).
        for stale in [*directory.glob("*.db"), *directory.glob(f"{SLO_FILE_PREFIX}*")]:
            stale.unlink()
        return chosen
    made = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made
