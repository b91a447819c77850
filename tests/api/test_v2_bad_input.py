"""Bad input against a running gateway over real HTTP: the right status, a message
naming the input, the expected and the actual, and never a 500."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.api.http_helpers import post, tensor_json
from tests.conftest import GatewayProcess

INFER = "/v2/models/digits/infer"
ROW = [1.0] * 64


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


def pixels_header(size: int, shape: list[int] | None = None) -> dict:
    return {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "FP32",
                "shape": shape or [1, 64],
                "parameters": {"binary_data_size": size},
            }
        ]
    }


JSON_CASES = [
    (
        "wrong datatype",
        tensor_json("pixels", "INT64", [1, 64], [1] * 64),
        ["input 'pixels': expected FP32 [-1,64], got INT64 [1,64]"],
    ),
    (
        "wrong rank",
        tensor_json("pixels", "FP32", [64], ROW),
        ["input 'pixels': expected FP32 [-1,64], got FP32 [64]"],
    ),
    (
        "wrong dimension",
        tensor_json("pixels", "FP32", [1, 63], ROW[:63]),
        ["input 'pixels': expected FP32 [-1,64], got FP32 [1,63]"],
    ),
    (
        "unknown input",
        tensor_json("pixel", "FP32", [1, 64], ROW),
        ["unknown input 'pixel'", "['pixels']"],
    ),
    (
        "data shorter than shape",
        tensor_json("pixels", "FP32", [1, 64], ROW[:63]),
        ["input 'pixels'", "needs 64 elements", "has 63"],
    ),
    (
        "data longer than shape",
        tensor_json("pixels", "FP32", [1, 64], [*ROW, 1.0]),
        ["input 'pixels'", "needs 64 elements", "has 65"],
    ),
    (
        "strings for FP32",
        tensor_json("pixels", "FP32", [1, 64], ["1.0"] * 64),
        ["input 'pixels': FP32 data must be numbers", "strings"],
    ),
    (
        "nulls for FP32",
        tensor_json("pixels", "FP32", [1, 64], [None] * 64),
        ["input 'pixels': FP32 data must be numbers"],
    ),
    (
        "ragged nested data",
        tensor_json("pixels", "FP32", [2, 64], [ROW, ROW[:10]]),
        ["input 'pixels'", "regularly nested"],
    ),
    (
        "negative dimension",
        tensor_json("pixels", "FP32", [-1, 64], ROW),
        ["input 'pixels': 'shape' must be a list of non-negative integers"],
    ),
    (
        "unknown datatype",
        tensor_json("pixels", "FLOAT", [1, 64], ROW),
        ["input 'pixels': unknown datatype 'FLOAT'"],
    ),
    (
        "data not a list",
        tensor_json("pixels", "FP32", [1, 64], "abc"),
        ["input 'pixels': 'data' must be a list, got a string"],
    ),
    ("invalid JSON", '{"inputs": [', ["request body is not valid JSON"]),
    ("JSON that is not an object", "[1, 2]", ["expected a JSON object, got a list"]),
    ("no inputs", '{"inputs": []}', ["'inputs': expected a non-empty list"]),
    ("empty body", "", ["request body is empty"]),
    (
        "unknown output",
        json.dumps(
            {
                "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": ROW}],
                "outputs": [{"name": "logits"}],
            }
        ),
        ["unknown output 'logits'", "['probabilities']"],
    ),
]


@pytest.mark.parametrize(
    "body, fragments", [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES]
)
def test_bad_json_requests_get_400_naming_what_is_wrong(digits_gateway, body, fragments) -> None:
    reply = post(digits_gateway.port, INFER, body)
    assert reply.status == 400, reply.body
    for fragment in fragments:
        assert fragment in reply.error


FLOATS = np.ones((1, 64), np.float32).tobytes()

BINARY_CASES = [
    (
        "binary_data_size smaller than the shape",
        binary_body(pixels_header(252), FLOATS[:252]),
        ["input 'pixels': FP32 [1,64] needs 256 bytes, binary_data_size is 252"],
    ),
    (
        "binary_data_size past the end of the body",
        binary_body(pixels_header(256), FLOATS[:200]),
        ["input 'pixels': binary_data_size 256 runs past the end of the body"],
    ),
    (
        "bytes left over after the inputs",
        binary_body(pixels_header(256), FLOATS, b"xx"),
        ["binary data is 258 bytes", "add up to 256"],
    ),
]


@pytest.mark.parametrize(
    "body_headers, fragments", [c[1:] for c in BINARY_CASES], ids=[c[0] for c in BINARY_CASES]
)
def test_binary_sizes_that_do_not_match_get_400(digits_gateway, body_headers, fragments) -> None:
    body, headers = body_headers
    reply = post(digits_gateway.port, INFER, body, headers)
    assert reply.status == 400, reply.body
    for fragment in fragments:
        assert fragment in reply.error


@pytest.mark.parametrize("value", ["5000", "abc", "0"])
def test_inference_header_length_that_does_not_match_the_body_gets_400(
    digits_gateway, value
) -> None:
    body, _ = binary_body(pixels_header(256), FLOATS)
    reply = post(digits_gateway.port, INFER, body, {"Inference-Header-Content-Length": value})
    assert reply.status == 400
    assert "Inference-Header-Content-Length" in reply.error


@pytest.mark.parametrize(
    "path, fragment",
    [
        ("/v2/models/nope/infer", "unknown model 'nope'"),
        ("/v2/models/digits/versions/7/infer", "model 'digits' has no version '7' (available: 1)"),
    ],
)
def test_unknown_model_or_version_gets_404(digits_gateway, path, fragment) -> None:
    reply = post(digits_gateway.port, path, tensor_json("pixels", "FP32", [1, 64], ROW))
    assert reply.status == 404
    assert fragment in reply.error


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_gets_413(digits_gateway: GatewayProcess, chunked) -> None:
    limit = 1 << 20  # digits_config sets server.max_request_bytes to 1 MiB
    body, headers = binary_body(pixels_header(limit), b"\0" * limit)
    reply = post(digits_gateway.port, INFER, body, headers, chunked=chunked)
    assert reply.status == 413
    assert "limit" in reply.error and "max_request_bytes" in reply.error


def test_a_bad_deadline_header_gets_400(digits_gateway) -> None:
    reply = post(
        digits_gateway.port,
        INFER,
        tensor_json("pixels", "FP32", [1, 64], ROW),
        {"x-request-timeout-ms": "soon"},
    )
    assert reply.status == 400
    assert "x-request-timeout-ms" in reply.error and "'soon'" in reply.error


def test_the_gateway_still_serves_after_bad_input(digits_gateway) -> None:
    reply = post(digits_gateway.port, INFER, tensor_json("pixels", "FP32", [1, 64], ROW))
    assert reply.status == 200
    assert digits_gateway.process.poll() is None


def test_infer_with_the_wrong_method_gets_405(digits_gateway) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", digits_gateway.port, timeout=10)
    conn.request("GET", INFER)
    response = conn.getresponse()
    assert response.status == 405
    assert response.getheader("allow") == "POST"
    assert "use POST" in json.loads(response.read())["error"]
