"""KServe v2 over gRPC: `inference.GRPCInferenceService` on the one InferenceService.

A transport only: it turns `ModelInferRequest` messages into core
`InferRequest`s (numpy arrays via `np.frombuffer` on raw contents), calls the
same `InferenceService` object the HTTP app calls, and encodes the answer back.
Validation, routing, batching and metrics all happen in the pipeline.

Tensors travel either as typed `contents` or as `raw_input_contents` (one entry
per input, little-endian; BYTES elements each prefixed by a 4-byte
little-endian length). The answer uses `raw_output_contents` when the request
used raw inputs, as Triton does, and typed contents otherwise.

The servicer is written against grpc.aio's ServicerContext; api/grpc_server.py
serves it (with health and reflection) on either engine.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from gateway import __version__
from gateway.api.http_errors import HTTP_STATUS, error_headers
from gateway.api.http_request import gateway_headers
from gateway.api.plumbing import GRPC_METADATA, build_request_context, grpc_internal_error
from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.api.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from gateway.api.triton_docs import model_config, repository_index, statistics, to_message
from gateway.api.v2_grpc_codec import decode_infer_request, encode_infer_response
from gateway.api.v2_http import EXTENSIONS, PLATFORM
from gateway.core.errors import ErrorKind, GatewayError, InvalidInput
from gateway.core.types import RequestContext
from gateway.observe import tracing
from gateway.pipeline.entry import ModelEntry
from gateway.pipeline.service import InferenceService

PROTOCOL = "v2_grpc"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

# docs/contracts.md#errors, the gRPC column; the HTTP column is api/http_errors.HTTP_STATUS.
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

# Requests of one stream in flight at once; past it the stream is not read,
# so HTTP/2 flow control pushes back on the client.
STREAM_WINDOW = 64

# -- messages in: a malformed one is the caller's error, not gRPC's ------------------


class MalformedRequest:
    """Bytes that do not parse as a ModelInferRequest. gRPC answers a message its
    deserializer cannot parse with INTERNAL (threaded server) or UNKNOWN (grpc.aio);
    this stands in for it so the servicer answers INVALID_ARGUMENT instead."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


InferMessage = pb.ModelInferRequest | MalformedRequest


def parse_infer_request(data: bytes) -> InferMessage:
    """ModelInfer's and ModelStreamInfer's request deserializer: never raises."""
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        return MalformedRequest(str(exc))


def add_inference_servicer(servicer: Any, server: grpc.Server | grpc.aio.Server) -> None:
    """Serve `inference.GRPCInferenceService` with `servicer`'s methods: protoc's
    add_GRPCInferenceServiceServicer_to_server, except that infer requests are
    parsed by parse_infer_request."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        parse = (
            parse_infer_request if request_type is pb.ModelInferRequest else request_type.FromString
        )
        make = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=parse,
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


# -- the request's context: metadata in, metadata out -----------------------------------


def request_context(context: grpc.aio.ServicerContext[Any, Any]) -> RequestContext:
    """The call's context from its metadata (api/plumbing.py reads it, with the
    keys of the HTTP headers: docs/contracts.md#headers); the deadline is the call's own."""
    # Values are str, but for keys ending in "-bin" (bytes): none of those read here.
    metadata: dict[str, Any] = dict(context.invocation_metadata() or ())
    return build_request_context(metadata, PROTOCOL, GRPC_METADATA, context.time_remaining())


def response_metadata(
    ctx: RequestContext, error: GatewayError | None = None
) -> tuple[tuple[str, str], ...]:
    """The HTTP surface's response headers (x-request-id, x-gateway-*), as metadata."""
    pairs = gateway_headers(ctx)
    if error is not None:
        pairs += error_headers(error)
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in pairs)


def model_metadata(entry: ModelEntry) -> pb.ModelMetadataResponse:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    signature = entry.signature
    return pb.ModelMetadataResponse(
        name=entry.name,
        versions=[entry.version],
        platform=PLATFORM,
        inputs=[
            tensor(name=s.name, datatype=s.datatype, shape=s.shape)
            for s in (signature.inputs if signature else ())
        ],
        outputs=[
            tensor(name=s.name, datatype=s.datatype, shape=s.shape)
            for s in (signature.outputs if signature else ())
        ],
    )


# -- the service ---------------------------------------------------------------------


class V2GrpcServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The v2 rpcs over one InferenceService.

    Holds the service object itself, never a copy of its models: a config
    reload swaps what the object serves, and this servicer follows.
    """

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def ServerLive(
        self,
        request: pb.ServerLiveRequest,
        context: grpc.aio.ServicerContext[pb.ServerLiveRequest, pb.ServerLiveResponse],
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self,
        request: pb.ServerReadyRequest,
        context: grpc.aio.ServicerContext[pb.ServerReadyRequest, pb.ServerReadyResponse],
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready())

    async def ServerMetadata(
        self,
        request: pb.ServerMetadataRequest,
        context: grpc.aio.ServicerContext[pb.ServerMetadataRequest, pb.ServerMetadataResponse],
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=PLATFORM, version=__version__, extensions=EXTENSIONS)

    async def ModelReady(
        self,
        request: pb.ModelReadyRequest,
        context: grpc.aio.ServicerContext[pb.ModelReadyRequest, pb.ModelReadyResponse],
    ) -> pb.ModelReadyResponse:
        entry = await self._model(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=entry.ready())

    async def ModelMetadata(
        self,
        request: pb.ModelMetadataRequest,
        context: grpc.aio.ServicerContext[pb.ModelMetadataRequest, pb.ModelMetadataResponse],
    ) -> pb.ModelMetadataResponse:
        return model_metadata(await self._model(request.name, request.version, context))

    # Triton's extensions: the documents HTTP answers with (api/triton_docs.py), as messages.

    async def ModelConfig(
        self,
        request: pb.ModelConfigRequest,
        context: grpc.aio.ServicerContext[pb.ModelConfigRequest, pb.ModelConfigResponse],
    ) -> pb.ModelConfigResponse:
        entry = await self._model(request.name, request.version, context)
        return pb.ModelConfigResponse(
            config=to_message(model_config(entry, PLATFORM), pb.ModelConfig())
        )

    async def ModelStatistics(
        self,
        request: pb.ModelStatisticsRequest,
        context: grpc.aio.ServicerContext[pb.ModelStatisticsRequest, pb.ModelStatisticsResponse],
    ) -> pb.ModelStatisticsResponse:
        try:
            rows = self.service.statistics(request.name or None, request.version or None)
        except GatewayError as error:
            await self._abort(error, context)
            raise  # not reached: abort raises
        return to_message(statistics(rows), pb.ModelStatisticsResponse())

    async def RepositoryIndex(
        self,
        request: pb.RepositoryIndexRequest,
        context: grpc.aio.ServicerContext[pb.RepositoryIndexRequest, pb.RepositoryIndexResponse],
    ) -> pb.RepositoryIndexResponse:
        index = repository_index(list(self.service.models.values()), request.ready)
        return to_message({"models": index}, pb.RepositoryIndexResponse())

    async def _model(
        self, name: str, version: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ModelEntry:
        # As on HTTP, metadata, readiness and Triton's extensions need no API key.
        try:
            return self.service.model(name, version or None)
        except GatewayError as error:
            await self._abort(error, context)
            raise  # not reached: abort raises

    @staticmethod
    async def _abort(error: GatewayError, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        ctx = request_context(context)
        await context.abort(
            GRPC_STATUS[error.kind], error.message, trailing_metadata=response_metadata(ctx, error)
        )

    async def ModelInfer(
        self,
        request: InferMessage,
        context: grpc.aio.ServicerContext[pb.ModelInferRequest, pb.ModelInferResponse],
    ) -> pb.ModelInferResponse:
        ctx = request_context(context)
        code = 500  # counted under the HTTP status of the outcome, as on every transport
        # grpc.aio's abort() sends the status before it raises: the request is
        # counted first, so that a caller who has its answer finds it counted.
        abort: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None
        try:
            message = await self._infer(request, ctx)
            code = 200
        except GatewayError as error:
            code = HTTP_STATUS[error.kind]
            abort = (GRPC_STATUS[error.kind], error.message, response_metadata(ctx, error))
        except asyncio.CancelledError:
            code = 499  # the caller went away (or its deadline passed): work dropped
            raise
        except Exception as exc:  # noqa: BLE001 - a bug; never let it take the server down
            status, details = grpc_internal_error(exc, ctx.request_id)
            abort = (status, details, (("x-request-id", ctx.request_id),))
        finally:
            self.service.observe(ctx, code)
        if abort is not None:
            await context.abort(abort[0], abort[1], trailing_metadata=abort[2])
        context.set_trailing_metadata(response_metadata(ctx))
        return message

    async def _infer(self, request: InferMessage, ctx: RequestContext) -> pb.ModelInferResponse:
        if isinstance(request, MalformedRequest):
            raise InvalidInput(
                f"request: not a valid inference.ModelInferRequest message ({request.reason})"
            )
        # Resolve the model (and the caller) first, as HTTP does: an unknown
        # model is NOT_FOUND whatever the tensors.
        entry = self.service.admit(request.model_name, ctx, request.model_version or None)
        if entry.audit_payload:  # the message's size, for the audit record (computed, not free)
            ctx.request_bytes = request.ByteSize()
        started_ns = time.time_ns() if tracing.ENABLED else 0
        try:
            # Inputs are checked against the signature as they are decoded.
            core, raw = decode_infer_request(
                request, entry.signature if entry.kind == "tensor" else None
            )
        except GatewayError as exc:
            if started_ns:
                tracing.step(ctx, "validate", started_ns, exc)
            raise
        return encode_infer_response(await self.service.infer(core, ctx), raw)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[InferMessage],
        context: grpc.aio.ServicerContext[pb.ModelInferRequest, pb.ModelStreamInferResponse],
    ) -> None:
        """Each request is served as it arrives (up to STREAM_WINDOW at once) and
        answered as it completes: match answers to requests by `id`. A failed
        request answers with `error_message`; the stream goes on."""
        stream = request_context(context)
        await context.send_initial_metadata((("x-request-id", stream.request_id),))
        window = asyncio.Semaphore(STREAM_WINDOW)
        writing = asyncio.Lock()  # one write at a time on the call
        pending: set[asyncio.Task[None]] = set()

        async def answer(request: InferMessage, ctx: RequestContext) -> None:
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
                ctx = replace(
                    stream, request_id=f"{stream.request_id}.{n}", started=time.perf_counter()
                )
                task = asyncio.get_running_loop().create_task(answer(request, ctx))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()

    async def _stream_reply(
        self, request: InferMessage, ctx: RequestContext
    ) -> pb.ModelStreamInferResponse:
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
        except Exception as exc:  # noqa: BLE001 - a bug: answered in the stream, which goes on
            _, message = grpc_internal_error(exc, ctx.request_id)
        finally:
            self.service.observe(ctx, code)
        if isinstance(request, MalformedRequest):
            return pb.ModelStreamInferResponse(error_message=message)
        return pb.ModelStreamInferResponse(
            error_message=message,
            infer_response=pb.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            ),
        )
