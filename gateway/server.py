"""Runs the servers: one process (on uvloop) or N uvicorn workers on the same ports."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import uvicorn

from gateway.app import CONFIG_ENV, READY_LINE, Runtime, build_runtime, create_app
from gateway.config.loader import LoadedConfig

log = logging.getLogger("gateway")


def _loop_factory():  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _uvicorn_options(loaded: LoadedConfig, host: str, port: int) -> dict[str, object]:
    return dict(
        host=host, port=port, http="httptools", loop="none", lifespan="on",
        access_log=False, log_level=loaded.config.server.log_level,
        timeout_keep_alive=30, log_config=None,
    )


def serve(loaded: LoadedConfig, host: str, http_port: int, grpc_port: int, workers: int) -> None:
    if grpc_port:
        log.info("gRPC is not served yet (issue 6); ignoring grpc_port %d", grpc_port)
    if workers > 1:
        _serve_workers(loaded, host, http_port, workers)
        return
    runtime = build_runtime(loaded)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve_one(runtime, loaded, host, http_port))


class _Server(uvicorn.Server):
    """Logs READY_LINE once the sockets listen, so supervisors and tests can wait for it."""

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await super().startup(sockets)
        if self.started:
            config = self.config
            log.info("%s on http://%s:%d", READY_LINE, config.host, config.port)


async def _serve_one(runtime: Runtime, loaded: LoadedConfig, host: str, port: int) -> None:
    config = uvicorn.Config(create_app(runtime), **_uvicorn_options(loaded, host, port))
    log.info("serving %d model(s)", len(runtime.service.models))
    await _Server(config).serve()


def _serve_workers(loaded: LoadedConfig, host: str, port: int, workers: int) -> None:
    # Each worker process builds its own runtime (and its own ONNX sessions)
    # from the same file; the parent has already validated it.
    if loaded.source is not None:
        os.environ[CONFIG_ENV] = str(Path(loaded.source))
    options = _uvicorn_options(loaded, host, port)
    options["loop"] = "uvloop"
    log.info("serving on http://%s:%d with %d workers", host, port, workers)
    uvicorn.run("gateway.app:app_from_env", factory=True, workers=workers, **options)  # type: ignore[arg-type]
