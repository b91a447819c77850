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
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from gateway import __version__
from gateway.api.http_errors import HTTP_STATUS, error_headers
from gateway.api.http_request import gateway_headers, new_request_id
from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.api.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from gateway.api.v2_codec import _decode_bytes_elements, encode_binary
from gateway.api.v2_http import EXTENSIONS, PLATFORM
from gateway.config.schema import ServerConfig
from gateway.core.datatypes import DATATYPES, NUMPY_DTYPES, datatype_of
from gateway.core.errors import ErrorKind, GatewayError, InvalidInput
from gateway.core.service import InferenceService, ModelEntry
from gateway.core.signature import format_shape
from gateway.observe import tracing
from gateway.observe.logs import CURRENT_REQUEST
from gateway.core.types import InferRequest, InferResponse, RequestedOutput, RequestContext

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

# -- tensors: wire <-> numpy ----------------------------------------------------------

# The typed `contents` field of each datatype (FP16 has none: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS = tuple(sorted(set(CONTENTS_FIELD.values())))
# What numpy reads each contents field as, before narrowing to the datatype.
_FIELD_DTYPE = {
    "bool_contents": np.dtype(np.bool_), "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64), "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64), "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}
_NARROW = frozenset({"INT8", "INT16", "UINT8", "UINT16"})


def decode_infer_request(request: pb.ModelInferRequest) -> tuple[InferRequest, bool]:
    """The core request, and whether its tensors came as raw contents."""
    tensors = request.inputs
    raw_contents = request.raw_input_contents
    raw = len(raw_contents) > 0
    if not tensors:
        raise InvalidInput("'inputs': expected a non-empty list of tensors, got an empty list")
    if raw and len(raw_contents) != len(tensors):
        raise InvalidInput(
            f"request has {len(raw_contents)} raw_input_contents for {len(tensors)} inputs "
            f"{[t.name for t in tensors]}: send one per input, in the order of 'inputs'"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if not name:
            raise InvalidInput(f"inputs[{index}]: 'name' must be a non-empty string")
        if name in inputs:
            raise InvalidInput(f"input '{name}' is given twice")
        datatype = tensor.datatype
        if datatype not in DATATYPES:
            raise InvalidInput(
                f"input '{name}': unknown datatype {datatype!r} (expected one of "
                f"{sorted(DATATYPES)})"
            )
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidInput(
                f"input '{name}': 'shape' must be non-negative integers, got {format_shape(shape)}"
            )
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{name}': has both 'contents' and raw_input_contents[{index}]: "
                    "send one of them"
                )
            inputs[name] = decode_raw(name, datatype, shape, raw_contents[index], index)
        else:
            inputs[name] = decode_contents(name, datatype, shape, tensor)
    outputs = tuple(RequestedOutput(o.name) for o in request.outputs) if request.outputs else None
    parameters = ({k: _parameter(v) for k, v in request.parameters.items()}
                  if request.parameters else None)
    core = InferRequest(
        model=request.model_name, version=request.model_version or None, inputs=inputs,
        outputs=outputs, id=request.id or None, parameters=parameters,
    )
    return core, raw


def decode_raw(name: str, datatype: str, shape: tuple[int, ...], data: bytes,
               index: int) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes_elements(name, shape, count, memoryview(data))
    dtype = NUMPY_DTYPES[datatype]
    if len(data) != count * dtype.itemsize:
        raise InvalidInput(
            f"input '{name}': {datatype} {format_shape(shape)} needs {count * dtype.itemsize} "
            f"bytes, raw_input_contents[{index}] has {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def decode_contents(name: str, datatype: str, shape: tuple[int, ...],
                    tensor: pb.ModelInferRequest.InferInputTensor) -> np.ndarray:
    count = math.prod(shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input '{name}': {datatype} has no typed contents field: send it in raw_input_contents"
        )
    if not tensor.HasField("contents"):
        if count == 0:
            return np.empty(shape, dtype=NUMPY_DTYPES[datatype])
        raise InvalidInput(f"input '{name}': no 'contents' and no raw_input_contents")
    contents = tensor.contents
    for other in _ALL_CONTENTS:
        if other != field and len(getattr(contents, other)):
            raise InvalidInput(
                f"input '{name}': {datatype} elements go in contents.{field}, "
                f"got contents.{other}"
            )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {format_shape(shape)} needs {count} elements, "
            f"contents.{field} has {len(values)}"
        )
    if datatype == "BYTES":
        elements = np.empty(count, dtype=object)
        elements[:] = list(values)
        return elements.reshape(shape)
    array = np.array(values, dtype=_FIELD_DTYPE[field])
    if datatype in _NARROW and array.size:
        info = np.iinfo(NUMPY_DTYPES[datatype])
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise InvalidInput(
                f"input '{name}': value {low if low < info.min else high} is out of range "
                f"for {datatype} [{info.min}, {info.max}]"
            )
    return array.astype(NUMPY_DTYPES[datatype], copy=False).reshape(shape)


def _parameter(value: pb.InferParameter) -> Any:
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


def encode_infer_response(response: InferResponse, raw: bool) -> pb.ModelInferResponse:
    """The answer; raw contents if the request was raw or an output has no typed field."""
    outputs = response.outputs
    datatypes = [datatype_of(array) for array in outputs.values()]
    message = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id or "",
    )
    tensors = message.outputs
    if raw or any(dt not in CONTENTS_FIELD for dt in datatypes):
        message.raw_output_contents.extend(
            encode_binary(array, dt) for array, dt in zip(outputs.values(), datatypes))
        for (name, array), datatype in zip(outputs.items(), datatypes):
            tensors.add(name=name, datatype=datatype, shape=array.shape)
        return message
    for (name, array), datatype in zip(outputs.items(), datatypes):
        tensor = tensors.add(name=name, datatype=datatype, shape=array.shape)
        values = getattr(tensor.contents, CONTENTS_FIELD[datatype])
        if datatype == "BYTES":
            values.extend(v if isinstance(v, bytes) else str(v).encode("utf-8")
                          for v in array.flat)
        else:
            values.extend(array.ravel().tolist())
    return message


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
    """One process's gRPC endpoint: a grpc.aio server on the running event loop,
    beside the HTTP server, serving the same InferenceService.

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
        self._server: grpc.aio.Server | None = None
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
        server = grpc.aio.server(options=self.options())
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(V2GrpcServicer(self.service), server)
        health_pb2_grpc.add_HealthServicer_to_server(ModelHealth(self.service), server)
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
        await self._server.start()
        log.info("gRPC on %s", self._listening())
        return self.port

    def start_soon(self) -> int:
        """For a synchronous startup hook on the running loop: bind now (so a
        port in use fails the startup), serve from the loop's next turn."""
        port = self.bind()
        assert self._server is not None
        self._starting = asyncio.get_running_loop().create_task(self._server.start())
        self._starting.add_done_callback(self._started)
        return port

    def _started(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("gRPC server on %s did not start", self.address, exc_info=task.exception())
        else:
            log.info("gRPC on %s", self._listening())

    def _listening(self) -> str:
        return grpc_address(self.address.rsplit(":", 1)[0].strip("[]"), self.port or 0)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new calls, let those in flight finish for up to `grace_s`."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._starting is not None and not self._starting.done():
            await self._starting
        await server.stop(grace_s)
