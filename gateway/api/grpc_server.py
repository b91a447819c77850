"""One process's gRPC endpoint: the v2 inference service (api/v2_grpc.py),
`grpc.health.v1.Health` (overall and per model name, computed live from
backend readiness) and server reflection, on one of two engines:

    threads  gRPC's threaded server hands each call to the event loop
             (api/grpc_threads.py): about twice grpc.aio's calls/s on one core
    aio      grpc.aio on the event loop itself: streams hold no thread

On both, calls in progress or waiting are at most `server.grpc.max_concurrent_rpcs`
and open streams (ModelStreamInfer, Health.Watch) at most
`server.grpc.max_open_streams`, below it (and below `threads`): past either, a
call is refused at once with RESOURCE_EXHAUSTED, so open streams never leave
unary calls without room. With `server.tls`, the port serves TLS (mTLS with
`client_ca_file`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from gateway.api.grpc_threads import LoopHandoff, StreamLimit, ThreadedBridge, bridge_servicer
from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.api.v2_grpc import (
    SERVICE_NAME,
    STREAM_WINDOW,
    V2GrpcServicer,
    add_inference_servicer,
)
from gateway.config.schema import ServerConfig
from gateway.config.tls import TlsFiles
from gateway.core.errors import GatewayError
from gateway.fd_budget import connection_budget
from gateway.pipeline.service import InferenceService

log = logging.getLogger("gateway.api.grpc_server")

# Our messages live in a descriptor pool of their own (see `make proto`):
# tritonclient defines the same `inference.*` names in protobuf's default pool,
# and both must load in one process. Reflection answers from this pool, so the
# health and reflection services are described there too.
_POOL = pb.DESCRIPTOR.pool
for _file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
    _POOL.AddSerializedFile(_file.serialized_pb)

# How `gateway serve --workers N` hands its gRPC address ("host:port", empty:
# none) to the worker processes, which build their servers in app_from_env.
GRPC_ADDRESS_ENV = "GATEWAY_GRPC_ADDRESS"

UNARY_RPCS = (
    "ServerLive",
    "ServerReady",
    "ServerMetadata",
    "ModelReady",
    "ModelMetadata",
    "ModelInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
)


def limit_streams_aio(
    servicer: object,
    streams: StreamLimit,
    *,
    unary: tuple[str, ...] = (),
    server_stream: tuple[str, ...] = (),
    bidi_stream: tuple[str, ...] = (),
) -> SimpleNamespace:
    """The servicer's methods for grpc.aio, its streams admitted by `streams`
    (the threaded engine admits them in ThreadedBridge, on the call's thread)."""
    methods: dict[str, Any] = {name: getattr(servicer, name) for name in unary}
    for name in server_stream:
        methods[name] = _limited_server_stream(getattr(servicer, name), streams)
    for name in bidi_stream:
        methods[name] = _limited_bidi_stream(getattr(servicer, name), streams)
    return SimpleNamespace(**methods)


def _limited_server_stream(
    method: Callable[[Any, Any], AsyncIterator[Any]], streams: StreamLimit
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def handle(request: Any, context: Any) -> AsyncIterator[Any]:
        if not streams.try_open():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, streams.refusal())
        try:
            async for reply in method(request, context):
                yield reply
        finally:
            streams.close()

    return handle


def _limited_bidi_stream(
    method: Callable[[Any, Any], Awaitable[None]], streams: StreamLimit
) -> Callable[[Any, Any], Awaitable[None]]:
    async def handle(requests: Any, context: Any) -> None:
        if not streams.try_open():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, streams.refusal())
        try:
            await method(requests, context)
        finally:
            streams.close()

    return handle


class ModelHealth:
    """grpc.health.v1, computed on each call from backend readiness.

    Service "" (and the v2 service name): SERVING when every model has a ready
    backend. A model's name: SERVING when that model has one. Anything else:
    NOT_FOUND on Check, SERVICE_UNKNOWN on Watch, as the health protocol says.
    Served through `health_handler`, which registers these methods by name.
    """

    WATCH_POLL_S = 1.0
    _Status = health_pb2.HealthCheckResponse.ServingStatus

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def status(self, name: str) -> int | None:
        if name in ("", SERVICE_NAME):
            ready = self.service.ready()
        else:
            try:
                ready = self.service.model(name).ready()
            except GatewayError:
                return None
        status: int = self._Status.SERVING if ready else self._Status.NOT_SERVING
        return status

    async def Check(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ],
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown service or model '{request.service}'"
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ],
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            status = self.status(request.service)
            if status is None:
                status = self._Status.SERVICE_UNKNOWN
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            await asyncio.sleep(self.WATCH_POLL_S)


HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def health_handler(health: Any) -> grpc.GenericRpcHandler:
    """grpc.health.v1.Health's Check and Watch, registered from the protocol's
    method names and message types, with `health`'s methods (async for grpc.aio,
    sync ones from `bridge_servicer` for the threaded engine).

    Not grpcio-health-checking's `add_HealthServicer_to_server`: it looks up
    every method its release declares, so a release that adds one (Health.List
    in 1.82) stopped the server from starting. Methods registered here are the
    ones the gateway implements; a caller of any other gets UNIMPLEMENTED.
    """
    request, response = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
    return grpc.method_handlers_generic_handler(
        HEALTH_SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                health.Check,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                health.Watch,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            ),
        },
    )


# -- the server ----------------------------------------------------------------------


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcServer:
    """One process's gRPC endpoint beside the HTTP server, serving the same
    InferenceService on the running event loop: gRPC's threaded server handing
    each call to the loop (engine "threads", see api/grpc_threads.py), or a
    grpc.aio server on the loop itself (engine "aio").

    `reuse_port` lets N worker processes bind the same port (SO_REUSEPORT, the
    kernel spreads connections across them); a single process leaves it off so
    that a port already in use fails loudly instead of being shared. `tls`:
    serve TLS with those files (`server.tls`, resolved: config/tls.py).
    """

    def __init__(
        self,
        service: InferenceService,
        config: ServerConfig,
        address: str,
        reuse_port: bool = False,
        tls: TlsFiles | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self.address = address
        self.reuse_port = reuse_port
        self.tls = tls
        self.streams = StreamLimit(config.grpc.open_streams_limit())
        self.port: int | None = None
        self._server: grpc.Server | grpc.aio.Server | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._starting: asyncio.Task[None] | None = None

    def options(self) -> list[tuple[str, Any]]:
        tuning = self.config.grpc
        return [
            # Oversized requests are refused by gRPC itself with RESOURCE_EXHAUSTED.
            ("grpc.max_receive_message_length", self.config.max_request_bytes),
            # Answers are not capped (HTTP does not cap them either).
            ("grpc.max_send_message_length", -1),
            ("grpc.max_concurrent_streams", tuning.max_concurrent_streams),
            ("grpc.keepalive_time_ms", tuning.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", tuning.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            # Accept client keep-alive pings down to every 10 s (the default
            # policy answers anything under 5 min with GOAWAY too_many_pings).
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            # Past it, gRPC closes a new connection as soon as it is accepted, so
            # that idle connections cannot take every file descriptor.
            ("grpc.max_allowed_incoming_connections", self.max_connections()),
        ]

    def max_connections(self) -> int:
        return self.config.grpc.max_connections or connection_budget(grpc=True)[1]

    def bind(self) -> int:
        """Build the server on the running loop and bind its port; raises if it cannot."""
        # The threaded engine serves them through sync stand-ins (bridge_servicer).
        servicer: V2GrpcServicer | SimpleNamespace
        health: ModelHealth | SimpleNamespace
        servicer, health = V2GrpcServicer(self.service), ModelHealth(self.service)
        server: grpc.Server | grpc.aio.Server
        tuning = self.config.grpc
        if tuning.engine == "threads":
            self._pool = ThreadPoolExecutor(tuning.threads, thread_name_prefix="grpc-call")
            server = grpc.server(
                self._pool,
                options=self.options(),
                maximum_concurrent_rpcs=tuning.max_concurrent_rpcs,
            )
            bridge = ThreadedBridge(
                LoopHandoff(asyncio.get_running_loop()), STREAM_WINDOW, self.streams
            )
            servicer = bridge_servicer(
                bridge, servicer, unary=UNARY_RPCS, bidi_stream=("ModelStreamInfer",)
            )
            health = bridge_servicer(bridge, health, unary=("Check",), server_stream=("Watch",))
        else:
            server = grpc.aio.server(
                options=self.options(), maximum_concurrent_rpcs=tuning.max_concurrent_rpcs
            )
            servicer = limit_streams_aio(
                servicer, self.streams, unary=UNARY_RPCS, bidi_stream=("ModelStreamInfer",)
            )
            health = limit_streams_aio(
                health, self.streams, unary=("Check",), server_stream=("Watch",)
            )
        add_inference_servicer(servicer, server)  # malformed infer messages: INVALID_ARGUMENT
        server.add_generic_rpc_handlers((health_handler(health),))
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                HEALTH_SERVICE,
                reflection.SERVICE_NAME,
            ),
            server,
            pool=_POOL,
        )
        try:
            if self.tls is None:
                self.port = server.add_insecure_port(self.address)
            else:
                self.port = server.add_secure_port(self.address, self.credentials(self.tls))
        except RuntimeError as exc:
            raise OSError(f"gRPC cannot listen on {self.address}: {exc}") from exc
        self._server = server
        return self.port

    @staticmethod
    def credentials(tls: TlsFiles) -> grpc.ServerCredentials:
        """TLS with the files of `server.tls`; with client CAs, clients must present
        a certificate one of them signed."""
        cert, key, client_ca = tls.read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )

    async def start(self) -> int:
        """Bind (unless done) and serve; returns the port."""
        if self._server is None:
            self.bind()
        assert self._server is not None and self.port is not None
        await self._start_server()
        log.info("gRPC on %s (%s)", self._listening(), self._engine())
        return self.port

    async def _start_server(self) -> None:
        assert self._server is not None
        if isinstance(self._server, grpc.aio.Server):
            await self._server.start()
        else:
            self._server.start()

    def _engine(self) -> str:
        tuning = self.config.grpc
        engine = f"{tuning.threads} threads" if tuning.engine == "threads" else "grpc.aio"
        return (
            f"{engine}, {tuning.max_concurrent_rpcs} calls, {self.streams.limit} open streams, "
            f"{self.max_connections()} connections{', TLS' if self.tls else ''}"
        )

    def start_soon(self) -> int:
        """For a synchronous startup hook on the running loop: bind now (so a
        port in use fails the startup), serve from the loop's next turn."""
        port = self.bind()
        self._starting = asyncio.get_running_loop().create_task(self._start_server())
        self._starting.add_done_callback(self._started)
        return port

    def _started(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("gRPC server on %s did not start", self.address, exc_info=task.exception())
        else:
            log.info("gRPC on %s (%s)", self._listening(), self._engine())

    def _listening(self) -> str:
        return grpc_address(self.address.rsplit(":", 1)[0].strip("[]"), self.port or 0)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new calls, let those in flight finish for up to `grace_s`."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._starting is not None and not self._starting.done():
            await self._starting
        if isinstance(server, grpc.aio.Server):
            await server.stop(grace_s)
            return
        # The threaded server's calls finish on this loop: wait off it.
        stopped = server.stop(grace_s)
        await asyncio.get_running_loop().run_in_executor(None, stopped.wait)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
