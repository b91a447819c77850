"""Open gRPC streams never starve unary calls (server.grpc.max_open_streams),
on both engines, against real `gateway serve` processes.

On the threaded engine each open stream (Health.Watch, ModelStreamInfer) holds
one of `threads` threads: without a cap, as many idle streams as threads leave
every unary call waiting until its deadline.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.api.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from gateway.config.loader import ConfigError, parse_config
from tests.conftest import digits_config, free_port, start_gateway

THREADS = 8
MAX_OPEN_STREAMS = 4
SERVING = health_pb2.HealthCheckResponse.SERVING


def digits_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    return request


def refusal(call: Iterator[object]) -> grpc.RpcError:
    """The error a stream call ends with before its first message."""
    with pytest.raises(grpc.RpcError) as refused:
        next(call)
    return refused.value


@pytest.mark.parametrize("engine", ["threads", "aio"])
def test_open_streams_past_the_cap_are_refused_and_unary_calls_go_on(
    engine: str, tmp_path: Path
) -> None:
    port = free_port()
    config = digits_config(
        grpc={"engine": engine, "threads": THREADS, "max_open_streams": MAX_OPEN_STREAMS}
    )
    gateway = start_gateway(config, tmp_path, "--grpc-port", str(port))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    v2 = pb_grpc.GRPCInferenceServiceStub(channel)
    requests: queue.SimpleQueue[pb.ModelInferRequest | None] = queue.SimpleQueue()
    watches: list = []  # the Watch calls, to cancel
    try:
        # The cap's worth of idle streams: Watches and a ModelStreamInfer, each
        # known to be open on the server by what it sent first.
        for _ in range(MAX_OPEN_STREAMS - 1):
            watch = health.Watch(health_pb2.HealthCheckRequest())
            assert next(watch).status == SERVING
            watches.append(watch)
        stream = v2.ModelStreamInfer(iter(requests.get, None))
        assert dict(stream.initial_metadata())["x-request-id"]
        # As many more as the threads left: refused at once, naming the setting.
        for _ in range(THREADS - MAX_OPEN_STREAMS):
            error = refusal(health.Watch(health_pb2.HealthCheckRequest(), timeout=5))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert "server.grpc.max_open_streams" in (error.details() or "")
        error = refusal(v2.ModelStreamInfer(iter(()), timeout=5))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        # Unary calls still have room, one after another and at once.
        for _ in range(5):
            reply = v2.ModelInfer(digits_request(), timeout=2)
            assert reply.outputs[0].shape == [1, 10]
        with ThreadPoolExecutor(16) as pool:
            calls = [pool.submit(v2.ModelInfer, digits_request(), timeout=5) for _ in range(32)]
            assert all(call.result().outputs[0].shape == [1, 10] for call in calls)
        # The open stream still answers.
        request = digits_request()
        request.id = "in-stream"
        requests.put(request)
        assert next(stream).infer_response.id == "in-stream"
        # A stream that ends gives its place back.
        watches.pop().cancel()
        deadline = time.monotonic() + 10
        while True:
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
            try:
                assert next(watch).status == SERVING
                break
            except grpc.RpcError as refused:  # until the server has seen the cancel
                assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "a cancelled stream kept its place"
        watches.append(watch)
        assert gateway.process.poll() is None
    finally:
        requests.put(None)
        for watch in watches:
            watch.cancel()
        channel.close()
        gateway.stop()


def test_max_open_streams_must_leave_threads_for_unary_calls() -> None:
    config = digits_config(grpc={"threads": 8, "max_open_streams": 8})
    with pytest.raises(ConfigError) as refused:
        parse_config(yaml.safe_dump(config))
    assert "max_open_streams: 8 must be below threads (8)" in str(refused.value)
