"""The gRPC floor: the cheapest Python gRPC service that answers ModelInfer.

`inference.GRPCInferenceService/ModelInfer` registered with no (de)serializers:
it answers every call with one fixed, pre-serialized reply and never looks at
the request, on either of the gateway's engines: gRPC's threaded server
(`--engine threads`, a pool of the gateway's default size) or grpc.aio on uvloop
(`--engine aio`). Whatever the gateway costs above this is its own work; no
Python gRPC service on that engine can answer faster on the same core.

    python -m loadtests.grpc_floor --port 8124 [--engine aio]
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc

from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.config.schema import GrpcServerConfig

READY_LINE = "grpc floor ready"  # printed once the port listens: the harness waits for it


def _answer() -> bytes:
    reply = pb.ModelInferResponse(model_name="digits", model_version="1")
    reply.outputs.add(name="probabilities", datatype="FP32", shape=[1, 10])
    reply.raw_output_contents.append(bytes(40))
    return reply.SerializeToString()


def _handlers(infer: object) -> tuple[grpc.GenericRpcHandler, ...]:
    return (
        grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService",
            {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
        ),
    )


async def serve_aio(host: str, port: int) -> None:
    answer = _answer()

    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(_handlers(infer))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"{READY_LINE} on {host}:{port} (grpc.aio)", flush=True)
    await server.wait_for_termination()


def serve_threads(host: str, port: int) -> None:
    answer = _answer()

    def infer(request: bytes, context: grpc.ServicerContext) -> bytes:
        return answer

    threads = GrpcServerConfig().threads
    server = grpc.server(ThreadPoolExecutor(threads))
    server.add_generic_rpc_handlers(_handlers(infer))
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    print(f"{READY_LINE} on {host}:{port} ({threads} threads)", flush=True)
    server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine", choices=("threads", "aio"), default="threads")
    args = parser.parse_args()
    if args.engine == "threads":
        serve_threads(args.host, args.port)
        return
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve_aio(args.host, args.port))


if __name__ == "__main__":
    main()
