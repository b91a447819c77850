"""Each input that once took the gateway down, grew it by gigabytes or answered
500 (issue 14), against the real gateway: now a 400 (INVALID_ARGUMENT) naming
the input, the expected and the actual, with memory bounded by what was sent."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.core.datatypes import NUMPY_DTYPES
from testkit.gateway_process import GatewayProcess, free_port, start_gateway
from tests.edge.conftest import DATATYPES, EDGE_TEXT, EMBEDDER_ROWS, MAX_TEXTS, EdgeGateway
from tests.edge.wire import STREAM_METHOD, Http, binary_body, grpc_error
from tests.metrics_reader import value

MB = 1 << 20
ROW = [1.0] * 64
HUGE = 2**63 - 1


@pytest.fixture()
def http(edge: EdgeGateway) -> Iterator[Http]:
    client = Http(edge.port)
    yield client
    client.close()


@pytest.fixture(scope="module")
def channel(edge: EdgeGateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(edge.grpc_target) as chan:
        yield chan


def tensor(name: str, datatype: str, shape: list[int], data: object) -> bytes:
    return json.dumps(
        {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}
    ).encode()


def raw_request(model: str, name: str, datatype: str, shape: list[int], raw: bytes) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request.SerializeToString()


# -- memory: bounded by what was sent ---------------------------------------------------


def test_a_bytes_shape_the_data_cannot_hold_is_refused_before_anything_is_allocated(
    edge: EdgeGateway, http: Http
) -> None:
    # 115 bytes declaring 50 million elements: 16.6 GB of RSS before issue 14.
    header = {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [50_000_000],
                "parameters": {"binary_data_size": 4},
            }
        ]
    }
    body, headers = binary_body(header, b"\0\0\0\0")
    before = edge.reset_peak()
    reply = http.post("/v2/models/embedder/infer", body, headers)
    assert reply.status == 400, reply.body
    assert "input 'text': BYTES [50000000] needs at least 200000000 bytes" in reply.error
    assert "binary_data_size is 4" in reply.error
    assert edge.peak() - before < 50 * MB


def test_a_raw_grpc_bytes_shape_of_2_31_elements_is_refused_before_anything_is_allocated(
    edge: EdgeGateway, channel: grpc.Channel
) -> None:
    # OOM-killed the gateway before issue 14.
    message = raw_request("embedder", "text", "BYTES", [2**31 - 1], b"\x01\0\0\0a")
    before = edge.reset_peak()
    code, details = grpc_error(channel, message)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert f"input 'text': BYTES [{2**31 - 1}] needs at least" in details
    assert "raw_input_contents[0] has 5" in details
    assert edge.peak() - before < 50 * MB
    assert edge.alive()


def test_a_fixed_size_shape_the_data_cannot_hold_is_refused(
    edge: EdgeGateway, channel: grpc.Channel
) -> None:
    message = raw_request("wide", "x", "FP32", [2**31 - 1, 1], b"\0" * 8)
    code, details = grpc_error(channel, message)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert f"needs {(2**31 - 1) * 4} bytes, raw_input_contents[0] has 8" in details


# -- shapes no tensor can have ---------------------------------------------------------


def test_an_empty_int32_tensor_for_digits_is_a_400(http: Http) -> None:
    reply = http.post("/v2/models/digits/infer", tensor("pixels", "INT32", [0], []))
    assert reply.status == 400, reply.body
    assert "input 'pixels': expected FP32 [-1,64], got INT32 [0]" in reply.error


def test_empty_tensors_of_every_integer_type_are_served(http: Http) -> None:
    inputs = [
        {"name": f"in_{dt}", "datatype": dt, "shape": [0, 3], "data": []}
        for dt in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
    ]
    others = [
        {"name": f"in_{dt}", "datatype": dt, "shape": [0, 3], "data": []}
        for dt in ("BOOL", "BYTES", "FP16", "FP32", "FP64")
    ]
    body = json.dumps({"inputs": inputs + others}).encode()
    reply = http.post("/v2/models/typed/infer", body)
    assert reply.status == 200, reply.body
    outputs = json.loads(reply.body)["outputs"]
    assert {o["name"]: o["shape"] for o in outputs}["out_INT32"] == [0, 3]


@pytest.mark.parametrize("model, name", [("digits", "pixels"), ("wide", "x")])
def test_a_shape_of_65_dimensions_is_a_400(http: Http, model: str, name: str) -> None:
    reply = http.post(f"/v2/models/{model}/infer", tensor(name, "FP32", [1] * 65, [1.0]))
    assert reply.status == 400, reply.body
    assert f"input '{name}': shape has 65 dimensions, at most 32 are accepted" in reply.error


def test_a_shape_of_65_dimensions_is_refused_on_every_wire(
    http: Http, channel: grpc.Channel
) -> None:
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1] * 65,
                "parameters": {"binary_data_size": 4},
            }
        ]
    }
    body, headers = binary_body(header, b"\0" * 4)
    reply = http.post("/v2/models/wide/infer", body, headers)
    assert reply.status == 400 and "65 dimensions" in reply.error, reply.body
    code, details = grpc_error(channel, raw_request("wide", "x", "FP32", [1] * 65, b"\0" * 4))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "65 dimensions" in details, details
    typed = pb.ModelInferRequest(model_name="wide")
    typed.inputs.add(name="x", datatype="FP32", shape=[1] * 65).contents.fp32_contents.append(1.0)
    code, details = grpc_error(channel, typed.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "65 dimensions" in details, details


def test_a_zero_sized_shape_with_a_huge_dimension_is_a_400(
    http: Http, channel: grpc.Channel
) -> None:
    reply = http.post("/v2/models/digits/infer", tensor("pixels", "FP32", [0, HUGE], []))
    assert reply.status == 400, reply.body
    assert f"input 'pixels': expected FP32 [-1,64], got FP32 [0,{HUGE}]" in reply.error
    # A signature that fixes no dimension: the size cap answers.
    reply = http.post("/v2/models/wide/infer", tensor("x", "FP32", [0, HUGE], []))
    assert reply.status == 400, reply.body
    assert f"its dimensions other than 0 multiply to {HUGE}, at most 2147483647" in reply.error
    typed = pb.ModelInferRequest(model_name="wide")
    typed.inputs.add(name="x", datatype="FP32", shape=[0, HUGE])
    code, details = grpc_error(channel, typed.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "its dimensions other than 0 multiply to" in details


# -- headers ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/models/digits", "/v2/health/live", "/v1/models"])
def test_a_bad_deadline_header_on_any_route_is_a_400(http: Http, path: str) -> None:
    reply = http.request("GET", path, headers={"x-request-timeout-ms": "abc"})
    assert reply.status == 400, reply.body
    assert "x-request-timeout-ms" in reply.error and "'abc'" in reply.error
    assert reply.headers["x-request-id"]


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/v2/health/live", None),
        ("GET", "/v1/models", None),
        ("POST", "/v2/models/digits/infer", tensor("pixels", "FP32", [1, 64], ROW)),
    ],
)
def test_a_request_id_that_is_not_printable_ascii_is_replaced(
    http: Http, method: str, path: str, body: bytes | None
) -> None:
    reply = http.request(method, path, body, headers={"x-request-id": b"caf\xe9"})
    assert reply.status == 200, reply.body
    echoed = reply.headers["x-request-id"]
    assert echoed.isascii() and echoed.isprintable() and echoed != "caf\xe9"
    reply = http.request(method, path, body, headers={"x-request-id": "order-42"})
    assert reply.headers["x-request-id"] == "order-42"


# -- numbers that do not fit their datatype ------------------------------------------------


@pytest.mark.parametrize("value", [1e300, -1e300, 3.5e38, -1e39])
def test_an_fp32_number_beyond_fp32_is_a_400_and_never_cached(http: Http, value: float) -> None:
    body = tensor("pixels", "FP32", [1, 64], [value, *ROW[1:]])
    for _ in range(2):
        reply = http.post("/v2/models/digits-cached/infer", body)
        assert reply.status == 400, reply.body
        assert "input 'pixels': value" in reply.error and "out of range for FP32" in reply.error
        assert reply.headers.get("x-gateway-cache") != "hit"


def test_the_largest_fp32_numbers_are_accepted(http: Http) -> None:
    largest = float(np.finfo(np.float32).max)
    reply = http.post("/v2/models/wide/infer", tensor("x", "FP32", [1, 2], [largest, -largest]))
    assert reply.status == 200, reply.body
    data = np.array(json.loads(reply.body)["outputs"][0]["data"], dtype=np.float32)
    assert data.tolist() == [largest, -largest]


@pytest.mark.parametrize("value", [65520, 1e5, -70000.0])
def test_an_fp16_number_beyond_fp16_is_a_400(http: Http, value: float) -> None:
    inputs = [
        {"name": f"in_{dt}", "datatype": dt, "shape": [1, 3], "data": data}
        for dt, data in [
            ("BOOL", [True] * 3),
            ("BYTES", ["a"] * 3),
            ("FP16", [value, 1, 2]),
            ("FP32", [1, 2, 3]),
            ("FP64", [1, 2, 3]),
        ]
        + [
            (dt, [1, 2, 3])
            for dt in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
        ]
    ]
    reply = http.post("/v2/models/typed/infer", json.dumps({"inputs": inputs}).encode())
    assert reply.status == 400, reply.body
    assert "input 'in_FP16': value" in reply.error and "out of range for FP16" in reply.error


# -- gRPC messages that do not parse ----------------------------------------------------


MALFORMED = [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\x22\x03\x0a\x01"]


@pytest.mark.parametrize("message", MALFORMED)
def test_a_message_that_does_not_parse_is_invalid_argument(
    channel: grpc.Channel, message: bytes
) -> None:
    code, details = grpc_error(channel, message)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "not a valid inference.ModelInferRequest message" in details


def test_a_stream_answers_a_message_that_does_not_parse_and_goes_on(
    channel: grpc.Channel,
) -> None:
    good = pb.ModelInferRequest(model_name="digits", id="good")
    good.inputs.add(name="pixels", datatype="FP32", shape=[1, 64]).contents.fp32_contents.extend(
        ROW
    )
    stream = channel.stream_stream(STREAM_METHOD)
    replies = [
        pb.ModelStreamInferResponse.FromString(r)
        for r in stream(iter([MALFORMED[0], good.SerializeToString()]), timeout=30)
    ]
    assert len(replies) == 2
    errors = [r.error_message for r in replies if r.error_message]
    assert len(errors) == 1 and "not a valid inference.ModelInferRequest" in errors[0]
    assert [r.infer_response.id for r in replies if not r.error_message] == ["good"]


@pytest.fixture(scope="module")
def aio_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, int]]:
    from tests.conftest import digits_config

    port = free_port()
    config = digits_config(grpc={"engine": "aio"})
    gateway = start_gateway(config, tmp_path_factory.mktemp("edge-aio"), "--grpc-port", str(port))
    yield gateway, port
    gateway.stop()


def test_the_aio_engine_answers_a_message_that_does_not_parse_with_invalid_argument(
    aio_gateway: tuple[GatewayProcess, int],
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{aio_gateway[1]}") as chan:
        code, details = grpc_error(chan, MALFORMED[0])
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


# -- text: a bounded number of texts, each a bounded number of bytes, run in bounded chunks --


def test_more_texts_than_a_tensor_request_may_carry_is_a_400(http: Http) -> None:
    texts = ["hello"] * (MAX_TEXTS + 1)
    reply = http.post("/v2/models/embedder/infer", tensor("text", "BYTES", [len(texts)], texts))
    assert reply.status == 400, reply.body
    assert f"input 'text': {MAX_TEXTS + 1} texts, at most {MAX_TEXTS} per request" in reply.error


def test_more_texts_than_openai_allows_is_a_400(http: Http) -> None:
    body = json.dumps({"model": "embeddings", "input": ["hello"] * 2049}).encode()
    reply = http.post("/v1/embeddings", body, {"content-type": "application/json"})
    assert reply.status == 400, reply.body
    assert "input: at most 2048 texts per request, got 2049" in reply.error


LONG_TEXTS = 48  # 6 runs of 8 texts of 256 tokens (one run of 48 before issue 14)


def _executions(edge: EdgeGateway) -> tuple[float, float]:
    """Executions of the embedder so far: of at most EMBEDDER_ROWS rows, and in all."""
    labels = {"backend": "embedder-cpu"}
    small = value(edge.port, "gateway_batch_size_bucket", le=f"{EMBEDDER_ROWS:.1f}", **labels)
    return small, value(edge.port, "gateway_batch_size_count", **labels)


def _vectors_v2(http: Http, texts: list[str]) -> np.ndarray:
    reply = http.post("/v2/models/embedder/infer", tensor("text", "BYTES", [len(texts)], texts))
    assert reply.status == 200, reply.body
    output = json.loads(reply.body)["outputs"][0]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def _vectors_openai(http: Http, texts: list[str]) -> np.ndarray:
    body = json.dumps({"model": "embeddings", "input": texts}).encode()
    reply = http.post("/v1/embeddings", body, {"content-type": "application/json"})
    assert reply.status == 200, reply.body
    return np.array([d["embedding"] for d in json.loads(reply.body)["data"]], dtype=np.float32)


@pytest.mark.parametrize("surface", ["v2", "openai"])
def test_many_long_texts_run_in_bounded_chunks(edge: EdgeGateway, http: Http, surface) -> None:
    embed = _vectors_v2 if surface == "v2" else _vectors_openai
    texts = [f"{i} {EDGE_TEXT}" for i in range(LONG_TEXTS)]
    executions = _executions(edge)
    before = edge.reset_peak()
    vectors = embed(http, texts)
    grown = edge.peak() - before
    if surface == "openai":
        # Sent to the backend in parts of 8 texts, each queued on its own.
        small, total = (a - b for a, b in zip(_executions(edge), executions))
        assert small == total == LONG_TEXTS // EMBEDDER_ROWS
    # One run of 48 texts of 256 tokens grows ONNX Runtime's arena by about 400 MB;
    # runs of 8 by about 70 MB (twice that once the arena has doubled).
    assert grown < 250 * MB, f"{grown / MB:.0f} MB"
    assert vectors.shape == (LONG_TEXTS, 384)
    # The same vectors as texts sent one request at a time.
    for i in (0, LONG_TEXTS - 1):
        np.testing.assert_allclose(vectors[i], embed(http, [texts[i]])[0], atol=2e-5)


def test_a_text_of_megabytes_is_cut_before_it_is_tokenized(edge: EdgeGateway, http: Http) -> None:
    text = "lorem ipsum " * (3 * MB // 12)
    before = edge.reset_peak()
    vectors = _vectors_openai(http, [text])
    grown = edge.peak() - before
    # Tokenized whole, 3 MB took about 4 s and 450 MB before the 256 tokens were
    # kept: the peak resident set says whether it was cut first.
    assert grown < 100 * MB, f"{grown / MB:.0f} MB"
    np.testing.assert_allclose(vectors[0], _vectors_openai(http, [text[:8192]])[0], atol=2e-5)


def test_the_edge_gateway_still_serves(edge: EdgeGateway, http: Http) -> None:
    reply = http.post("/v2/models/digits/infer", tensor("pixels", "FP32", [1, 64], ROW))
    assert reply.status == 200
    assert edge.alive()


# -- found by the property suite (test_generated_input.py) ---------------------------------


def test_tensor_requests_to_an_embeddings_model_are_a_400(
    http: Http, channel: grpc.Channel
) -> None:
    # It has a signature (BYTES [-1] -> FP32 [-1,384]) but serves /v1/embeddings only.
    reply = http.post("/v2/models/embeddings/infer", tensor("text", "BYTES", [1], ["hi"]))
    assert reply.status == 400, reply.body
    assert "model 'embeddings' is of kind 'embeddings' and takes no tensor requests" in reply.error
    message = pb.ModelInferRequest(model_name="embeddings")
    message.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"hi"
    )
    code, details = grpc_error(channel, message.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "takes no tensor requests" in details


@pytest.mark.parametrize("datatype", [["FP32"], {"a": 1}, 32, None])
def test_a_datatype_that_is_not_a_string_is_a_400(http: Http, datatype: object) -> None:
    body = json.dumps(
        {"inputs": [{"name": "pixels", "datatype": datatype, "shape": [1, 64], "data": ROW}]}
    ).encode()
    reply = http.post("/v2/models/digits/infer", body)
    assert reply.status == 400, reply.body
    assert "input 'pixels': unknown datatype" in reply.error


def test_an_empty_batch_of_texts_is_answered_without_running_the_model(
    http: Http, channel: grpc.Channel
) -> None:
    for _ in range(6):  # more than the breaker's consecutive failures, were they failures
        reply = http.post("/v2/models/embedder/infer", tensor("text", "BYTES", [0], []))
        assert reply.status == 200, reply.body
        assert json.loads(reply.body)["outputs"][0]["shape"] == [0, 384]
    assert len(_vectors_v2(http, ["still served"])) == 1


def test_an_empty_list_of_outputs_asks_for_every_output(http: Http) -> None:
    body = json.dumps(
        {
            "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": ROW}],
            "outputs": [],
        }
    ).encode()
    for _ in range(6):
        reply = http.post("/v2/models/digits/infer", body)
        assert reply.status == 200, reply.body
        assert [o["name"] for o in json.loads(reply.body)["outputs"]] == ["probabilities"]


def _typed_inputs() -> list[dict]:
    def data(dt: str) -> list:
        return ["a"] * 3 if dt == "BYTES" else [True] * 3 if dt == "BOOL" else [1, 2, 3]

    return [
        {"name": f"in_{dt}", "datatype": dt, "shape": [1, 3], "data": data(dt)} for dt in DATATYPES
    ]


def test_asking_for_some_outputs_of_a_model_answers_those(
    http: Http, channel: grpc.Channel
) -> None:
    body = json.dumps({"inputs": _typed_inputs(), "outputs": [{"name": "out_INT16"}]}).encode()
    for _ in range(6):
        reply = http.post("/v2/models/typed/infer", body)
        assert reply.status == 200, reply.body
        outputs = json.loads(reply.body)["outputs"]
        assert [(o["name"], o["data"]) for o in outputs] == [("out_INT16", [1, 2, 3])]
    message = pb.ModelInferRequest(model_name="typed")
    message.outputs.add(name="out_FP64")
    for item in _typed_inputs():  # raw contents: FP16 has no typed field
        message.inputs.add(name=item["name"], datatype=item["datatype"], shape=[1, 3])
        if item["datatype"] == "BYTES":
            raw = b"".join(struct.pack("<I", 1) + v.encode() for v in item["data"])
        else:
            raw = np.array(item["data"], dtype=NUMPY_DTYPES[item["datatype"]]).tobytes()
        message.raw_input_contents.append(raw)
    code, details = grpc_error(channel, message.SerializeToString())
    assert code == grpc.StatusCode.OK, details
