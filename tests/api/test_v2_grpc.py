"""KServe v2 over gRPC against a real `gateway serve` process: tritonclient.grpc
(sync and aio, unary and streaming), our own stubs over a plain channel for
typed contents and malformed requests, health checking and reflection."""

from __future__ import annotations

import asyncio
import json
import queue
import struct
import subprocess
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.api.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.conftest import DIGITS_MODEL, GatewayProcess, digits_config, free_port, start_gateway
from tests.metrics_reader import value
from tests.onnx_models import ONNX_ELEMENT, identity_model, rows_lasting, slow_model

DATATYPES = sorted(ONNX_ELEMENT)
WIDTH = 256  # the slow model's row width
LONG_RUN_S = 1.5  # how long the long execution holds the slow model's only slot
MAX_REQUEST_BYTES = 8 << 20


class Served:
    """A gateway process and its gRPC address."""

    def __init__(self, process: GatewayProcess, grpc_port: int, long_rows: int = 0) -> None:
        self.process = process
        self.grpc_url = f"127.0.0.1:{grpc_port}"
        self.long_rows = long_rows

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc_url)


# Every test runs on both gRPC engines: the threaded server handing calls to the
# loop (the default) and grpc.aio on the loop. The servicer is one; the engines
# differ in how calls, streams, aborts and cancellations reach it.
@pytest.fixture(scope="module", params=["threads", "aio"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp(f"grpc-{request.param}")
    identity = identity_model(workdir / "identity.onnx", DATATYPES)
    typed_only = [dt for dt in DATATYPES if dt != "FP16"]
    identity_typed = identity_model(workdir / "identity_typed.onnx", typed_only)
    # Many layers per row: a long execution stays well under the request size limit.
    slow = slow_model(workdir / "slow.onnx", WIDTH, repeats=512)
    spec = lambda side, dt: {"name": f"{side}_{dt}", "datatype": dt, "shape": [-1, 3]}  # noqa: E731
    config = digits_config(
        max_request_bytes=MAX_REQUEST_BYTES, grpc={"engine": request.param, "threads": 8}
    )
    config["backends"].update(
        {
            "identity": {"type": "onnx", "path": str(identity), "max_concurrency": 1},
            "identity-typed": {"type": "onnx", "path": str(identity_typed), "max_concurrency": 1},
            "slow": {
                "type": "onnx",
                "path": str(slow),
                "max_concurrency": 1,
                "max_queue": 1,
                "intra_op_threads": 1,
                "timeout_ms": 60000,
            },
        }
    )
    config["models"].update(
        {
            "typed": {
                "signature": {
                    "inputs": [spec("in", dt) for dt in DATATYPES],
                    "outputs": [spec("out", dt) for dt in DATATYPES],
                },
                "route": {"backends": ["identity"]},
            },
            "typed_contents": {
                "signature": {
                    "inputs": [spec("in", dt) for dt in typed_only],
                    "outputs": [spec("out", dt) for dt in typed_only],
                },
                "route": {"backends": ["identity-typed"]},
            },
            "slow": {
                "signature": {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, WIDTH]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, WIDTH]}],
                },
                "route": {"backends": ["slow"]},
            },
        }
    )
    grpc_port = free_port()
    # start_gateway passes --grpc-port 0 first; argparse keeps the last one.
    process = start_gateway(config, workdir, "--grpc-port", str(grpc_port))
    yield Served(process, grpc_port, rows_lasting(slow, WIDTH, LONG_RUN_S))
    alive = process.process.poll() is None
    process.stop()
    assert alive, f"the gateway died during the tests:\n{process.logs()}"


def digits_rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, size=(n, 64)).astype(np.float32)


def onnxruntime_digits(rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(DIGITS_MODEL), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"pixels": rows})[0]


def sample(datatype: str, rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":
        return np.array(
            [[b"", b"caf\xc3\xa9", b"x" * 40], [b"\xe2\x82\xac 5", b"a", b"bc"]], dtype=object
        )
    if datatype == "BOOL":
        return rng.integers(0, 2, size=(2, 3)).astype(bool)
    dtype = np.dtype(grpcclient.triton_to_np_dtype(datatype))
    if dtype.kind == "f":
        return (rng.standard_normal((2, 3)) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, 0, info.max], [1, info.max - 1, info.min + 1]], dtype=dtype)


def raw_request(model: str, tensors: dict[str, np.ndarray], datatype: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name, array in tensors.items():
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def status_of(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


# -- metadata, readiness, unary infer ---------------------------------------------------


def test_metadata_and_readiness_through_tritonclient(served) -> None:
    client = grpcclient.InferenceServerClient(served.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    server = client.get_server_metadata()
    assert server.name == "inference-gateway" and "binary_tensor_data" in server.extensions
    meta = client.get_model_metadata("digits", as_json=True)
    assert meta["name"] == "digits" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "10"]}]
    with pytest.raises(grpcclient.InferenceServerException) as unknown:
        client.get_model_metadata("nope")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in unknown.value.message()
    with pytest.raises(grpcclient.InferenceServerException) as version:
        client.is_model_ready("digits", "7")
    assert version.value.status() == "StatusCode.NOT_FOUND"
    assert "no version '7'" in version.value.message()
    client.close()


def test_raw_infer_equals_onnxruntime_and_http(served) -> None:
    rows = digits_rows(5)
    client = grpcclient.InferenceServerClient(served.grpc_url)
    tensor = grpcclient.InferInput("pixels", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)  # raw_input_contents
    result = client.infer("digits", [tensor], request_id="req-7")
    got = result.as_numpy("probabilities")
    assert result.get_response().id == "req-7"
    assert len(result.get_response().raw_output_contents) == 1  # raw in, raw out
    np.testing.assert_allclose(got, onnxruntime_digits(rows), rtol=1e-5, atol=1e-7)

    http = httpclient.InferenceServerClient(served.process.url)
    http_tensor = httpclient.InferInput("pixels", list(rows.shape), "FP32")
    http_tensor.set_data_from_numpy(rows, binary_data=True)
    over_http = http.infer("digits", [http_tensor]).as_numpy("probabilities")
    np.testing.assert_array_equal(got, over_http)
    client.close()


def test_typed_contents_answer_in_typed_contents_with_gateway_metadata(served) -> None:
    rows = digits_rows(3, seed=1)
    request = pb.ModelInferRequest(model_name="digits", model_version="1", id="typed-1")
    tensor = request.inputs.add(name="pixels", datatype="FP32", shape=rows.shape)
    tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    requests_before = value(
        served.process.port,
        "gateway_requests_total",
        model="digits",
        protocol="v2_grpc",
        code="200",
    )
    with served.channel() as channel:
        response, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
            request, metadata=[("x-request-id", "trace-42")], timeout=10
        )
    assert (response.model_name, response.model_version, response.id) == ("digits", "1", "typed-1")
    assert len(response.raw_output_contents) == 0
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("probabilities", "FP32", [3, 10])
    got = np.array(output.contents.fp32_contents, np.float32).reshape(3, 10)
    np.testing.assert_allclose(got, onnxruntime_digits(rows), rtol=1e-5, atol=1e-7)
    trailing = dict(call.trailing_metadata())
    assert trailing["x-request-id"] == "trace-42"
    assert trailing["x-gateway-backend"] == "digits-cpu"
    assert trailing["x-gateway-attempts"] == "1"
    assert float(trailing["x-gateway-overhead-ms"]) >= 0
    # Counted once, under its protocol, by the same pipeline as HTTP.
    assert (
        value(
            served.process.port,
            "gateway_requests_total",
            model="digits",
            protocol="v2_grpc",
            code="200",
        )
        == requests_before + 1
    )


def test_every_datatype_round_trips_exactly_as_raw_contents(served) -> None:
    rng = np.random.default_rng(3)
    tensors = {dt: sample(dt, rng) for dt in DATATYPES}
    client = grpcclient.InferenceServerClient(served.grpc_url)
    inputs = []
    for dt, array in tensors.items():
        tensor = grpcclient.InferInput(f"in_{dt}", list(array.shape), dt)
        tensor.set_data_from_numpy(array)  # BYTES: 4-byte little-endian length prefixes
        inputs.append(tensor)
    result = client.infer("typed", inputs)
    client.close()
    for dt, sent in tensors.items():
        got = result.as_numpy(f"out_{dt}")
        assert result.get_output(f"out_{dt}").datatype == dt
        assert got.shape == sent.shape and (dt == "BYTES" or got.dtype == sent.dtype), dt
        np.testing.assert_array_equal(got, sent, err_msg=dt)


def test_every_typed_datatype_round_trips_exactly_as_typed_contents(served) -> None:
    rng = np.random.default_rng(4)
    datatypes = [dt for dt in DATATYPES if dt != "FP16"]  # FP16 travels raw only
    tensors = {dt: sample(dt, rng) for dt in datatypes}
    request = pb.ModelInferRequest(model_name="typed_contents")
    for dt, array in tensors.items():
        tensor = request.inputs.add(name=f"in_{dt}", datatype=dt, shape=array.shape)
        getattr(tensor.contents, CONTENTS[dt]).extend(array.ravel().tolist())
    with served.channel() as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert len(response.raw_output_contents) == 0
    outputs = {o.name: o for o in response.outputs}
    for dt, sent in tensors.items():
        output = outputs[f"out_{dt}"]
        assert (output.datatype, list(output.shape)) == (dt, [2, 3]), dt
        values = list(getattr(output.contents, CONTENTS[dt]))
        got = np.array(values, dtype=object if dt == "BYTES" else sent.dtype).reshape(2, 3)
        np.testing.assert_array_equal(got, sent, err_msg=dt)


CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def test_the_aio_client_serves_metadata_and_infer(served) -> None:
    rows = digits_rows(2, seed=5)

    async def scenario() -> np.ndarray:
        client = aioclient.InferenceServerClient(served.grpc_url)
        try:
            assert await client.is_server_ready()
            assert await client.is_model_ready("digits")
            meta = await client.get_model_metadata("digits", as_json=True)
            assert meta["inputs"][0]["name"] == "pixels"
            tensor = aioclient.InferInput("pixels", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            outputs = [aioclient.InferRequestedOutput("probabilities")]
            result = await client.infer("digits", [tensor], outputs=outputs)
            return result.as_numpy("probabilities")
        finally:
            await client.close()

    np.testing.assert_allclose(
        asyncio.run(scenario()), onnxruntime_digits(rows), rtol=1e-5, atol=1e-7
    )


# -- streaming ---------------------------------------------------------------------------


def digits_input(rows: np.ndarray, module=grpcclient):  # type: ignore[no-untyped-def]
    tensor = module.InferInput("pixels", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return tensor


def test_a_stream_answers_every_request_and_an_error_does_not_end_it(served) -> None:
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(served.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    good = {f"ok-{i}": digits_rows(1, seed=10 + i) for i in range(3)}
    client.async_stream_infer("digits", [digits_input(good["ok-0"])], request_id="ok-0")
    client.async_stream_infer("nope", [digits_input(good["ok-0"])], request_id="bad-model")
    client.async_stream_infer("digits", [digits_input(good["ok-1"])], request_id="ok-1")
    bad_shape = grpcclient.InferInput("pixels", [1, 65], "FP32")
    bad_shape.set_data_from_numpy(np.ones((1, 65), np.float32))
    client.async_stream_infer("digits", [bad_shape], request_id="bad-shape")
    client.async_stream_infer("digits", [digits_input(good["ok-2"])], request_id="ok-2")
    received = [answers.get(timeout=30) for _ in range(5)]
    client.stop_stream()
    client.close()
    results = {r.get_response().id: r for r, e in received if e is None}
    errors = sorted(e.message() for r, e in received if e is not None)
    assert sorted(results) == ["ok-0", "ok-1", "ok-2"]
    for request_id, rows in good.items():
        np.testing.assert_allclose(
            results[request_id].as_numpy("probabilities"),
            onnxruntime_digits(rows),
            rtol=1e-5,
            atol=1e-7,
        )
    assert len(errors) == 2
    assert errors[0].startswith("input 'pixels': expected FP32 [-1,64], got FP32 [1,65]")
    assert errors[1].startswith("unknown model 'nope'")


def test_the_aio_client_streams(served) -> None:
    rows = digits_rows(4, seed=20)

    async def scenario() -> dict[str, object]:
        client = aioclient.InferenceServerClient(served.grpc_url)

        async def requests():  # type: ignore[no-untyped-def]
            for i in range(4):
                yield {
                    "model_name": "digits",
                    "request_id": f"r{i}",
                    "inputs": [digits_input(rows[i : i + 1], aioclient)],
                }
            yield {"model_name": "digits", "request_id": "missing", "inputs": []}

        answers: dict[str, object] = {}
        try:
            async for result, error in client.stream_infer(requests()):
                if error is not None:
                    answers[str(error)] = error
                else:
                    answers[result.get_response().id] = result.as_numpy("probabilities")
                if len(answers) == 5:
                    break
        finally:
            await client.close()
        return answers

    answers = asyncio.run(scenario())
    expected = onnxruntime_digits(rows)
    for i in range(4):
        np.testing.assert_allclose(answers[f"r{i}"], expected[i : i + 1], rtol=1e-5, atol=1e-7)
    (error,) = [k for k in answers if not k.startswith("r")]
    assert "'inputs': expected a non-empty list of tensors" in error


# -- refused requests ----------------------------------------------------------------------


def bytes_request(raw: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="typed")
    rng = np.random.default_rng(0)
    for dt in DATATYPES:
        array = sample(dt, rng)
        request.inputs.add(name=f"in_{dt}", datatype=dt, shape=[2, 3])
        request.raw_input_contents.append(raw if dt == "BYTES" else array.tobytes())
    return request


def _broken_bytes() -> bytes:
    element = struct.pack("<I", 1) + b"a"
    return element * 5 + struct.pack("<I", 100) + b"abc"  # the 6th claims 100 bytes, has 3


def _digits(*changes: Callable[[pb.ModelInferRequest], None]) -> pb.ModelInferRequest:
    """A valid digits request, then broken by `changes`."""
    request = raw_request("digits", {"pixels": np.ones((1, 64), np.float32)}, "FP32")
    for change in changes:
        change(request)
    return request


def _both(request: pb.ModelInferRequest) -> None:
    request.inputs[0].contents.fp32_contents.extend([1.0] * 64)


def _short(request: pb.ModelInferRequest) -> None:
    request.raw_input_contents[0] = b"\0" * 255


def _datatype(request: pb.ModelInferRequest) -> None:
    request.inputs[0].datatype = "FP8"


def _extra_raw(request: pb.ModelInferRequest) -> None:
    request.raw_input_contents.append(b"\0" * 4)


@pytest.mark.parametrize(
    "request_, fragment",
    [
        (
            _digits(_short),
            "input 'pixels': FP32 [1,64] needs 256 bytes, raw_input_contents[0] has 255",
        ),
        (_digits(_both), "input 'pixels': has both 'contents' and raw_input_contents[0]"),
        (_digits(_datatype), "input 'pixels': unknown datatype 'FP8'"),
        (_digits(_extra_raw), "request has 2 raw_input_contents for 1 inputs ['pixels']"),
        (
            bytes_request(_broken_bytes()),
            "input 'in_BYTES': BYTES element 5 declares 100 bytes, only 3 remain",
        ),
        (pb.ModelInferRequest(model_name="digits"), "'inputs': expected a non-empty list"),
    ],
    ids=["raw-size", "contents-and-raw", "datatype", "extra-raw", "bytes-prefix", "no-inputs"],
)
def test_malformed_requests_are_invalid_argument_naming_the_input(
    served, request_, fragment
) -> None:
    with served.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        code, details = status_of(lambda: stub.ModelInfer(request_, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in details
        # The server and the channel are still fine.
        assert stub.ModelInfer(_digits(), timeout=10).outputs[0].name == "probabilities"


def test_an_oversized_request_is_resource_exhausted_and_the_channel_goes_on(served) -> None:
    rows = np.ones((MAX_REQUEST_BYTES // 256 + 1, 64), np.float32)
    with served.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        code, details = status_of(
            lambda: stub.ModelInfer(raw_request("digits", {"pixels": rows}, "FP32"), timeout=10)
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(MAX_REQUEST_BYTES) in details
        assert stub.ModelInfer(_digits(), timeout=10).outputs[0].name == "probabilities"


def test_an_unknown_model_or_version_is_not_found(served) -> None:
    with served.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = _digits()
        request.model_name = "nope"
        code, details = status_of(lambda: stub.ModelInfer(request, timeout=10))
        assert code == grpc.StatusCode.NOT_FOUND
        assert details == "unknown model 'nope'"  # the other models are not listed
        request = _digits()
        request.model_version = "3"
        code, details = status_of(lambda: stub.ModelInfer(request, timeout=10))
        assert (code, details) == (
            grpc.StatusCode.NOT_FOUND,
            "model 'digits' has no version '3' (available: 1)",
        )


# -- deadlines -------------------------------------------------------------------------------


def test_a_deadline_shorter_than_the_queue_wait_is_deadline_exceeded_and_never_runs(served) -> None:
    port = served.process.port
    stub = pb_grpc.GRPCInferenceServiceStub(served.channel())
    long = raw_request("slow", {"x": np.ones((served.long_rows, WIDTH), np.float32)}, "FP32")
    holder = stub.ModelInfer.future(long, timeout=60)  # holds the only execution slot
    deadline = time.monotonic() + 30
    while value(port, "gateway_inflight_requests", backend="slow") != 1:
        assert not holder.done(), holder.exception()
        assert time.monotonic() < deadline, "the long execution never started"
    executions = value(port, "gateway_batch_size_count", backend="slow")
    dropped = sum(
        value(port, "gateway_shed_total", backend="slow", reason=r)
        for r in ("deadline", "cancelled")
    )
    short = raw_request("slow", {"x": np.ones((2, WIDTH), np.float32)}, "FP32")
    code, _ = status_of(lambda: stub.ModelInfer(short, timeout=0.3))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not holder.done()  # answered while the long run goes on
    assert len(holder.result().outputs) == 1
    # The expired request was dropped from the queue: only the long run executed.
    assert value(port, "gateway_batch_size_count", backend="slow") == executions
    assert (
        sum(
            value(port, "gateway_shed_total", backend="slow", reason=r)
            for r in ("deadline", "cancelled")
        )
        == dropped + 1
    )


def test_a_call_cancelled_by_its_client_while_queued_never_runs(served) -> None:
    port = served.process.port
    stub = pb_grpc.GRPCInferenceServiceStub(served.channel())
    long = raw_request("slow", {"x": np.ones((served.long_rows, WIDTH), np.float32)}, "FP32")
    holder = stub.ModelInfer.future(long, timeout=60)
    deadline = time.monotonic() + 30
    while value(port, "gateway_inflight_requests", backend="slow") != 1:
        assert not holder.done(), holder.exception()
        assert time.monotonic() < deadline, "the long execution never started"
    executions = value(port, "gateway_batch_size_count", backend="slow")
    cancelled = value(port, "gateway_shed_total", backend="slow", reason="cancelled")
    queued = value(port, "gateway_queued_requests", backend="slow")
    waiting = stub.ModelInfer.future(
        raw_request("slow", {"x": np.ones((2, WIDTH), np.float32)}, "FP32"), timeout=60
    )
    while value(port, "gateway_queued_requests", backend="slow") != queued + 1:
        assert time.monotonic() < deadline, "the second call never queued"
    waiting.cancel()
    while value(port, "gateway_shed_total", backend="slow", reason="cancelled") != cancelled + 1:
        assert time.monotonic() < deadline, "the cancelled call was not dropped"
    assert len(holder.result().outputs) == 1
    # Counted when an execution starts: the long run was, the cancelled call never ran.
    assert value(port, "gateway_batch_size_count", backend="slow") == executions


# -- health and reflection ---------------------------------------------------------------------


def test_health_is_serving_overall_and_per_model(served) -> None:
    with served.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("", "inference.GRPCInferenceService", "digits", "typed"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == serving
        code, details = status_of(
            lambda: health.Check(health_pb2.HealthCheckRequest(service="nope"))
        )
        assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details
        watch = health.Watch(health_pb2.HealthCheckRequest(service="digits"), timeout=10)
        assert next(watch).status == serving
        watch.cancel()


def test_a_health_method_the_gateway_does_not_implement_is_unimplemented(served) -> None:
    # Health.List came with grpcio-health-checking 1.82; the gateway registers
    # the methods it implements, whatever that package's release declares.
    with served.channel() as channel:
        call = channel.unary_unary("/grpc.health.v1.Health/List")
        code, _ = status_of(lambda: call(b"", timeout=10))
        assert code == grpc.StatusCode.UNIMPLEMENTED
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_the_services(served) -> None:
    with served.channel() as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
        described = database.FindFileContainingSymbol("inference.GRPCInferenceService")
        assert "ModelStreamInfer" in [m.name for m in described.service[0].method]


# -- workers and tenants -------------------------------------------------------------------------


def wait_for_log(gateway: GatewayProcess, text: str, count: int, timeout_s: float = 60) -> None:
    """Until `text` was logged `count` times: waits on the process, never sleeps blind."""
    deadline = time.monotonic() + timeout_s
    while gateway.logs().count(text) < count:
        assert time.monotonic() < deadline, gateway.logs()
        try:
            gateway.process.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"the gateway exited:\n{gateway.logs()}")


def test_each_worker_serves_grpc_on_the_shared_port_with_tenant_keys(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GRPC_TEST_TENANT_KEY", "k-123")
    monkeypatch.setenv("GRPC_TEST_ADMIN_KEY", "admin-k-456")
    config = digits_config(admin_key_env="GRPC_TEST_ADMIN_KEY")  # tenants need an admin key
    config["models"]["other"] = json.loads(json.dumps(config["models"]["digits"]))
    config["tenants"] = [{"name": "team", "key_env": "GRPC_TEST_TENANT_KEY", "models": ["digits"]}]
    grpc_port = free_port()
    gateway = start_gateway(config, tmp_path, "--workers", "2", "--grpc-port", str(grpc_port))
    try:
        wait_for_log(gateway, "gRPC on", 2)  # each worker bound the shared port
        url = f"127.0.0.1:{grpc_port}"
        rows = digits_rows(1, seed=30)
        expected = onnxruntime_digits(rows)
        for i in range(8):  # new connections, spread by the kernel over both workers
            with grpc.insecure_channel(url, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                request = raw_request("digits", {"pixels": rows}, "FP32")
                key = ("authorization", "Bearer k-123") if i % 2 else ("x-api-key", "k-123")
                response = stub.ModelInfer(request, metadata=[key], timeout=10)
                got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, 10)
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        with grpc.insecure_channel(url) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            request = raw_request("digits", {"pixels": rows}, "FP32")
            code, details = status_of(lambda: stub.ModelInfer(request, timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED and details.startswith("missing API key")
            code, details = status_of(
                lambda: stub.ModelInfer(
                    request, metadata=[("authorization", "Bearer wrong")], timeout=10
                )
            )
            assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid API key")
            request.model_name = "other"
            code, details = status_of(
                lambda: stub.ModelInfer(request, metadata=[("x-api-key", "k-123")], timeout=10)
            )
            assert (code, details) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "tenant 'team' may not use model 'other'",
            )
        pids = {line.split()[3] for line in gateway.logs().splitlines() if "gRPC on" in line}
        assert len(pids) == 2, gateway.logs()
        assert gateway.process.poll() is None
    finally:
        gateway.stop()
