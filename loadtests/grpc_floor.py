"""The gRPC floor: the cheapest grpc.aio service that answers ModelInfer.

`inference.GRPCInferenceService/ModelInfer` registered with no (de)serializers:
it answers every call with one fixed, pre-serialized reply and never looks at
the request, served like the gateway's gRPC (grpc.aio on uvloop). Whatever the
gateway costs above this is its own work; no Python gRPC service can answer
faster on the same core.

    python -m loadtests.grpc_floor --port 8124
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from gateway.api.proto import grpc_predict_v2_pb2 as pb

READY_LINE = "grpc floor ready"  # printed once the port listens: the harness waits for it


def _answer() -> bytes:
    reply = pb.ModelInferResponse(model_name="digits", model_version="1")
    reply.outputs.add(name="probabilities", datatype="FP32", shape=[1, 10])
    reply.raw_output_contents.append(bytes(40))
    return reply.SerializeToString()


async def serve(host: str, port: int) -> None:
    answer = _answer()

    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"{READY_LINE} on {host}:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
