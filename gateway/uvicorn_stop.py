"""uvicorn, with the gateway's stop.

Stopping (`server.shutdown`, docs/operations.md#stopping), the same in every
process whether one or N: on SIGTERM (or SIGINT) readiness fails at once, the
listeners keep serving for `drain_s` (answers then say `connection: close`, so
kept-alive clients reconnect, elsewhere once the endpoint is gone), then stop
accepting; requests in flight get `grace_s` to finish, on HTTP and gRPC
together; what still runs is cancelled and answered 503 (gRPC: the call is
cancelled); the backends close and the process exits 0. A second signal cuts
the drain short. With N workers the parent passes SIGTERM on to each worker
(within its 0.5 s supervision tick), which stops as above, and exits 0 once
they all have.

Relies on uvicorn internals (docs/development.md#dependencies): Server's
`handle_exit`, `on_tick`, `shutdown`, `_wait_tasks_to_complete`,
`_captured_signals`, `servers`, `server_state` and `lifespan`, and the
supervisor's `uvicorn.supervisors.multiprocess.Process` with its `server`
property, `_server` and `process` attributes, and the supervisor's
`terminate_all`, `join_all`, `processes`, `sockets` and `signal_queue`. Verified with uvicorn 0.55 (tests/test_shutdown.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.supervisors import multiprocess

from gateway.api.grpc_server import grpc_address
from gateway.api.http_app import InferFastPath, Lifecycle
from gateway.app import READY_LINE
from gateway.config.schema import ShutdownConfig

if TYPE_CHECKING:
    from types import FrameType

    from gateway.api.grpc_server import GrpcServer


log = logging.getLogger("gateway")

# Added to every answer once the drain has begun: kept-alive clients reconnect
# (to another replica once the endpoint is removed) instead of staying on this one.
_CLOSE = (b"connection", b"close")
# Once cancelled, requests answer at their next await; this only bounds a stuck one.
_CANCELLED_ANSWER_S = 2.0


class GatewayServer(uvicorn.Server):
    """uvicorn's server with the gateway's stop (see the module's docstring), and
    READY_LINE logged once the sockets listen, so supervisors and tests can wait
    for it (`announce`; workers log their own in app_from_env).

    `lifecycle` and `grpc` are given in one process; a worker's are found on its
    app once uvicorn has built it from the factory."""

    def __init__(
        self,
        config: uvicorn.Config,
        grpc: GrpcServer | None = None,
        lifecycle: Lifecycle | None = None,
        announce: bool = True,
    ) -> None:
        super().__init__(config)
        self.grpc = grpc
        self.lifecycle = lifecycle
        self.announce = announce
        self.drain_until: float | None = None  # monotonic time the drain ends
        self._drain_logged = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.lifecycle is None:
            self.lifecycle = _lifecycle_of(self.config.loaded_app)
        if self.grpc is None and self.lifecycle is not None:
            self.grpc = self.lifecycle.grpc
        if self.started and self.announce:
            config = self.config
            secure = "s" if config.is_ssl else ""
            grpc = (
                f" and grpc{secure}://{grpc_address(config.host, self.grpc.port)}"
                if self.grpc is not None and self.grpc.port
                else ""
            )
            log.info("%s on http%s://%s:%d%s", READY_LINE, secure, config.host, config.port, grpc)

    def _settings(self) -> ShutdownConfig:
        return self.lifecycle.settings() if self.lifecycle is not None else ShutdownConfig()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: the drain begins (readiness fails now); a second signal, or
        one before the app has started, stops at once as uvicorn would. Runs as a
        signal handler: attribute stores only (on_tick logs and acts)."""
        lifecycle = self.lifecycle
        if lifecycle is None or self.should_exit or self.drain_until is not None:
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)
        lifecycle.drain()
        drain_s = self._settings().drain_s
        self.drain_until = time.monotonic() + drain_s
        if drain_s <= 0:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)  # resets default_headers each second
        if self.drain_until is None:
            return should_exit
        if not self._drain_logged:
            self._drain_logged = True
            log.info(
                "stopping: not ready; serving %g s more before closing the listeners",
                self._settings().drain_s,
            )
        headers = self.server_state.default_headers
        if _CLOSE not in headers:
            self.server_state.default_headers = [*headers, _CLOSE]
        if time.monotonic() >= self.drain_until:
            self.should_exit = True
        return self.should_exit or should_exit

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown with the grace of `server.shutdown.grace_s` shared by
        HTTP and gRPC, and the requests left over answered before the backends close."""
        grace_s = self._settings().grace_s
        if self.lifecycle is not None:
            self.lifecycle.drain()  # also when uvicorn stops for another reason
        # gRPC refuses new calls and gives those in flight the same grace, meanwhile.
        grpc_stopped = (
            asyncio.ensure_future(self.grpc.stop(grace_s)) if self.grpc is not None else None
        )
        connections = list(self.server_state.connections)
        await self._stop_accepting(sockets)
        for connection in connections:
            # A connection with no request read yet may have one on its way: it is
            # answered like the others (then closed: `connection: close`), or closed
            # by server.http.header_timeout_s or the end of the grace period.
            if getattr(connection, "cycle", None) is not None:
                connection.shutdown()  # idle ones close now, busy ones after their answer
        log.info(
            "stopping: listeners closed; %d request(s) in flight get up to %g s",
            len(self.server_state.tasks),
            grace_s,
        )
        try:
            async with asyncio.timeout(grace_s):
                await self._wait_tasks_to_complete()
        except TimeoutError:
            tasks = list(self.server_state.tasks)
            log.warning(
                "stopping: grace period (%g s) over, cancelling %d request(s)", grace_s, len(tasks)
            )
            if self.lifecycle is not None:
                self.lifecycle.cancelling = True  # InferFastPath answers them 503
            for task in tasks:
                task.cancel(msg="the shutdown grace period (server.shutdown.grace_s) ran out")
            if tasks:  # their answers go out before the backends close
                await asyncio.wait(tasks, timeout=_CANCELLED_ANSWER_S)
        if grpc_stopped is not None:
            await grpc_stopped
        if not self.force_exit:
            await self.lifespan.shutdown()
            # A stop that went as planned is a success: exit 0, not uvicorn's
            # re-raised SIGTERM (143), which supervisors would report as a crash.
            self._captured_signals.clear()
        log.info("stopped")

    async def _stop_accepting(self, sockets: list[socket.socket] | None) -> None:
        """Close the listeners, and serve the connections already queued on them.

        Closing a listening socket resets the connections the kernel has queued
        but the loop not yet accepted: under steady load, a few requests sent
        in the drain's last instant. So a duplicate of each listening socket is
        kept while the loop's are closed, the queue is accepted until empty, and
        only then is it closed: the window for a reset shrinks to two syscalls.
        Those last connections are served like the others (answered, closed).
        """
        held: list[socket.socket] = []
        for server in self.servers:
            for sock in server.sockets or ():
                try:
                    held.append(socket.socket(fileno=os.dup(sock.fileno())))
                except OSError:
                    pass
            server.close()  # the loop accepts no more
        for sock in sockets or []:
            sock.close()
        loop = asyncio.get_running_loop()
        accepted = []
        for listener in held:
            listener.setblocking(False)
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:  # BlockingIOError: the queue is empty
                    break
                accepted.append(
                    loop.connect_accepted_socket(self._protocol, connection, ssl=self.config.ssl)
                )
            listener.close()
        if accepted:
            results = await asyncio.gather(*accepted, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                log.warning(
                    "%d connection(s) queued at the close not served: %r", len(failed), failed[0]
                )

    def _protocol(self) -> asyncio.Protocol:
        """A connection's protocol, as uvicorn's startup makes them."""
        return self.config.http_protocol_class(  # type: ignore[call-arg]  # uvicorn's own call
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )


def _lifecycle_of(app: object) -> Lifecycle | None:
    """The Lifecycle of the gateway app under uvicorn's middleware (each has `.app`)."""
    for _ in range(8):
        if isinstance(app, InferFastPath):
            return app.lifecycle
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


class _WorkerProcess(multiprocess.Process):
    """A `--workers` process that serves with GatewayServer instead of uvicorn's Server, so
    every worker stops as one process does. Pickled by reference into the spawned
    child, which imports this module to unpickle it."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = GatewayServer(config=self.config, announce=False)
        return self._server


class Supervisor(multiprocess.Multiprocess):
    """uvicorn's supervisor of `--workers`, letting go of the listening socket once
    it has passed SIGTERM on: the workers drain on their own copies of it, and the
    parent's copy would otherwise keep it listening after they close theirs,
    queueing connections that nobody accepts until the parent exits."""

    def terminate_all(self) -> None:
        super().terminate_all()
        for sock in self.sockets:
            sock.close()

    def join_all(self) -> None:
        """Wait for the workers, passing on a signal that comes meanwhile: a
        second SIGTERM cuts their drain short, as it does for one process."""
        for worker in self.processes:
            while worker.process.exitcode is None:
                worker.process.join(0.2)
                if self.signal_queue:
                    self.signal_queue.clear()
                    self.terminate_all()


@contextmanager
def gateway_workers() -> Iterator[None]:
    """The supervisor, in this (parent) process, making _WorkerProcess workers: it
    names `Process` from its module in every place it starts one."""
    original = multiprocess.Process
    setattr(multiprocess, "Process", _WorkerProcess)  # noqa: B010 - a class, for mypy
    try:
        yield
    finally:
        setattr(multiprocess, "Process", original)  # noqa: B010
