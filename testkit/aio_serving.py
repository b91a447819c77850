"""Serve an aiohttp application on loopback until SIGINT or SIGTERM: the fake
vendor's and the stand-in OTLP collector's command lines share it."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web


async def serve_until_signalled(
    app: web.Application, host: str, port: int, ready_line: str, **site_options: object
) -> None:
    """Listen, print `ready_line` with the bound address (harnesses wait for it),
    and serve until a SIGINT or SIGTERM."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, host, port, **site_options).start()  # type: ignore[arg-type]
    print(f"{ready_line} on http://{host}:{runner.addresses[0][1]}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        await runner.cleanup()
