"""KServe v2 over gRPC: `inference.GRPCInferenceService` on the one InferenceService.

A transport only: it turns `ModelInferRequest` messages into core
`InferRequest`s (numpy arrays via `np.frombuffer` on raw contents), calls the
same `InferenceService` object the HTTP app calls, and encodes the answer back.
Validation, routing, batching and metrics all happen in the pipeline.

Tensors travel either as typed `contents` or as `raw_input_contents` (one entry
per input, little-endian; BYTES elements each prefixed by a 4-byte
little-endian length). The answer uses `raw_output_contents` when the request
used raw inputs, as Triton does, and typed contents otherwise.

Beside it the server carries `grpc.health.v1.Health` (overall and per model
name, computed live from backend readiness) and server reflection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from gateway import __version__
from gateway.api.grpc_threads import LoopHandoff, ThreadedBridge, bridge_servicer
from gateway.api.http_errors import HTTP_STATUS, error_headers
from gateway.api.http_request import gateway_headers, new_request_id
from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.api.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from gateway.api.v2_grpc_codec import decode_infer_request, encode_infer_response
from gateway.api.v2_http import EXTENSIONS, PLATFORM
from gateway.config.schema import ServerConfig
from gateway.core.errors import ErrorKind, GatewayError
from gateway.core.service import InferenceService, ModelEntry
from gateway.observe import tracing
from gateway.observe.logs import CURRENT_REQUEST
from gateway.core.types import RequestContext

log = logging.getLogger("gateway.api.v2_grpc")

PROTOCOL = "v2_grpc"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

# design.md §1.6, the gRPC column; the HTTP column is api/http_errors.HTTP_STATUS.
GRPC_STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.PAYLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.OVERLOADED: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.BACKEND_FAILED: grpc.StatusCode.UNAVAILABLE,
}

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

_MAX_REQUEST_ID = 128
# Requests of one stream in flight at once; past it the stream is not read,
# so HTTP/2 flow control pushes back on the client.
STREAM_WINDOW = 64
UNARY_RPCS = ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata",
              "ModelInfer")

# -- the request's context: metadata in, metadata out -----------------------------------


def request_context(context: grpc.aio.ServicerContext) -> RequestContext:
    """Request id, API key, cache bypass and deadline from the call's metadata.

    Keys match the HTTP headers (design.md §1.5); the deadline is the call's own.
    """
    metadata = dict(context.invocation_metadata() or ())
    given = metadata.get("x-request-id")
    request_id = given if given and len(given) <= _MAX_REQUEST_ID else new_request_id()
    ctx = RequestContext(request_id=request_id, protocol=PROTOCOL)
    CURRENT_REQUEST.set(ctx)  # log lines of this call carry its id (and trace id)
    if tracing.ENABLED and "traceparent" in metadata:
        ctx.trace_parent = tracing.context_from_headers(metadata)
    remaining = context.time_remaining()
    if remaining is not None:
        ctx.deadline = time.monotonic() + remaining
    authorization = metadata.get("authorization")
    if authorization is not None and authorization[:7].lower() == "bearer ":
        ctx.api_key = authorization[7:].strip()
    elif "x-api-key" in metadata:
        ctx.api_key = metadata["x-api-key"]
    cache_control = metadata.get("cache-control")
    if cache_control and "no-cache" in cache_control.lower():
        ctx.no_cache = True
    return ctx


def response_metadata(ctx: RequestContext,
                      error: GatewayError | None = None) -> tuple[tuple[str, str], ...]:
    """The HTTP surface's response headers (x-request-id, x-gateway-*), as metadata."""
    pairs = gateway_headers(ctx)
    if error is not None:
        pairs += error_headers(error)
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in pairs)


def internal_error_message(exc: BaseException, request_id: str) -> str:
    """A bug: logged with its traceback, answered without internals."""
    log.error("internal error on request %s", request_id, exc_info=exc)
    return f"internal error (request id {request_id}); this is a gateway bug"


def model_metadata(entry: ModelEntry) -> pb.ModelMetadataResponse:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    signature = entry.signature
    return pb.ModelMetadataResponse(
        name=entry.name, versions=[entry.version], platform=PLATFORM,
        inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in (signature.inputs if signature else ())],
        outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape)
                 for s in (signature.outputs if signature else ())],
    )


# -- the service ---------------------------------------------------------------------


class V2GrpcServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The v2 rpcs over one InferenceService.

    Holds the service object itself, never a copy of its models: a config
    reload swaps what the object serves, and this servicer follows.
    """

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=PLATFORM, version=__version__, extensions=EXTENSIONS)

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        entry = await self._model(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=entry.ready())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        return model_metadata(await self._model(request.name, request.version, context))

    async def _model(self, name: str, version: str,
                     context: grpc.aio.ServicerContext) -> ModelEntry:
        # As on HTTP, metadata and readiness need no API key.
        try:
            return self.service.model(name, version or None)
        except GatewayError as error:
            ctx = request_context(context)
            await context.abort(GRPC_STATUS[error.kind], error.message,
                                trailing_metadata=response_metadata(ctx, error))
            raise  # not reached: abort raises

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        ctx = request_context(context)
        code = 500  # counted under the HTTP status of the outcome, as on every transport
        try:
            message = await self._infer(request, ctx)
            code = 200
        except GatewayError as error:
            code = HTTP_STATUS[error.kind]
            await context.abort(GRPC_STATUS[error.kind], error.message,
                                trailing_metadata=response_metadata(ctx, error))
        except asyncio.CancelledError:
            code = 499  # the caller went away (or its deadline passed): work dropped
            raise
        except Exception as exc:  # a bug; never let it take the server down
            await context.abort(grpc.StatusCode.INTERNAL,
                                internal_error_message(exc, ctx.request_id),
                                trailing_metadata=(("x-request-id", ctx.request_id),))
        finally:
            self.service.observe(ctx, code)
        context.set_trailing_metadata(response_metadata(ctx))
        return message

    async def _infer(self, request: pb.ModelInferRequest,
                     ctx: RequestContext) -> pb.ModelInferResponse:
        # Resolve the model (and the caller) first, as HTTP does: an unknown
        # model is NOT_FOUND whatever the tensors.
        self.service.admit(request.model_name, ctx, request.model_version or None)
        core, raw = decode_infer_request(request)
        return encode_infer_response(await self.service.infer(core, ctx), raw)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],
                               context: grpc.aio.ServicerContext) -> None:
        """Each request is served as it arrives (up to STREAM_WINDOW at once) and
        answered as it completes: match answers to requests by `id`. A failed
        request answers with `error_message`; the stream goes on."""
        stream = request_context(context)
        await context.send_initial_metadata((("x-request-id", stream.request_id),))
        window = asyncio.Semaphore(STREAM_WINDOW)
        writing = asyncio.Lock()  # one write at a time on the call
        pending: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest, ctx: RequestContext) -> None:
            try:
                reply = await self._stream_reply(request, ctx)
                async with writing:
                    await context.write(reply)
            finally:
                window.release()

        try:
            for n in itertools.count(1):
                await window.acquire()
                request = await anext(request_iterator, None)
                if request is None:
                    break
                ctx = replace(stream, request_id=f"{stream.request_id}.{n}",
                              started=time.perf_counter())
                task = asyncio.get_running_loop().create_task(answer(request, ctx))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()

    async def _stream_reply(self, request: pb.ModelInferRequest,
                            ctx: RequestContext) -> pb.ModelStreamInferResponse:
        code = 500
        try:
            reply = pb.ModelStreamInferResponse(infer_response=await self._infer(request, ctx))
            code = 200
            return reply
        except GatewayError as error:
            code = HTTP_STATUS[error.kind]
            message = error.message
        except asyncio.CancelledError:
            code = 499
            raise
        except Exception as exc:  # a bug: answered in the stream, which goes on
            message = internal_error_message(exc, ctx.request_id)
        finally:
            self.service.observe(ctx, code)
        return pb.ModelStreamInferResponse(
            error_message=message,
            infer_response=pb.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id),
        )


class ModelHealth(health_pb2_grpc.HealthServicer):
    """grpc.health.v1, computed on each call from backend readiness.

    Service "" (and the v2 service name): SERVING when every model has a ready
    backend. A model's name: SERVING when that model has one. Anything else:
    NOT_FOUND on Check, SERVICE_UNKNOWN on Watch, as the health protocol says.
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
        return self._Status.SERVING if ready else self._Status.NOT_SERVING

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown service or model '{request.service}'")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext
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
    that a port already in use fails loudly instead of being shared.
    """

    def __init__(self, service: InferenceService, config: ServerConfig, address: str,
                 reuse_port: bool = False) -> None:
        self.service = service
        self.config = config
        self.address = address
        self.reuse_port = reuse_port
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
        ]

    def bind(self) -> int:
        """Build the server on the running loop and bind its port; raises if it cannot."""
        servicer, health = V2GrpcServicer(self.service), ModelHealth(self.service)
        server: grpc.Server | grpc.aio.Server
        if self.config.grpc.engine == "threads":
            self._pool = ThreadPoolExecutor(self.config.grpc.threads,
                                            thread_name_prefix="grpc-call")
            server = grpc.server(self._pool, options=self.options())
            bridge = ThreadedBridge(LoopHandoff(asyncio.get_running_loop()), STREAM_WINDOW)
            servicer = bridge_servicer(bridge, servicer, unary=UNARY_RPCS,
                                       bidi_stream=("ModelStreamInfer",))
            health = bridge_servicer(bridge, health, unary=("Check",), server_stream=("Watch",))
        else:
            server = grpc.aio.server(options=self.options())
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            server, pool=_POOL,
        )
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise OSError(f"gRPC cannot listen on {self.address}: {exc}") from exc
        self._server = server
        return self.port

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
        return f"{tuning.threads} threads" if tuning.engine == "threads" else "grpc.aio"

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
