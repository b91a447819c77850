"""The decoders, without a server (issue 14): a declared shape is checked against
the signature and the bytes or elements that came before anything is allocated
(tracemalloc sees numpy's allocations), numbers that do not fit their datatype
are refused, and what numpy would raise on becomes InvalidInput."""

from __future__ import annotations

import json
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.api.v2_codec import decode_infer_request
from gateway.api.v2_grpc_codec import decode_infer_request as decode_grpc
from gateway.core.errors import InvalidInput
from gateway.core.signature import Signature, TensorSpec

# v2_codec ignores it where the gateway runs; pytest resets warning filters per test.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in dot:RuntimeWarning")
MB = 1 << 20
DIGITS = Signature(
    inputs=(TensorSpec("pixels", "FP32", (-1, 64)),),
    outputs=(TensorSpec("probabilities", "FP32", (-1, 10)),),
    batched=True,
)
TEXT = Signature(
    inputs=(TensorSpec("text", "BYTES", (-1,)),),
    outputs=(TensorSpec("embedding", "FP32", (-1, 384)),),
    batched=True,
)


@pytest.fixture()
def peak() -> Iterator[Callable[[], int]]:
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def binary(inputs: list[dict[str, Any]], *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps({"inputs": inputs}).encode()
    return head + b"".join(blobs), str(len(head))


def json_body(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    return json.dumps(
        {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}
    ).encode()


def refused(decode: Callable[[], object], *fragments: str) -> None:
    with pytest.raises(InvalidInput) as error:
        decode()
    for fragment in fragments:
        assert fragment in error.value.message, error.value.message


# -- memory ----------------------------------------------------------------------------


@pytest.mark.parametrize("signature", [TEXT, None], ids=["signature", "none"])
def test_a_bytes_shape_the_binary_data_cannot_hold_allocates_nothing(
    peak: Callable[[], int], signature: Signature | None
) -> None:
    body, length = binary(
        [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [10_000_000],
                "parameters": {"binary_data_size": 4},
            }
        ],
        b"\0" * 4,
    )
    refused(
        lambda: decode_infer_request(body, length, "m", None, signature),
        "input 'text': BYTES [10000000] needs at least 40000000 bytes (a 4-byte length per "
        "element), binary_data_size is 4",
    )
    assert peak() < MB  # 80 MB (an object array of 10 million) before issue 14


def test_a_raw_grpc_bytes_shape_the_data_cannot_hold_allocates_nothing(
    peak: Callable[[], int],
) -> None:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="text", datatype="BYTES", shape=[10_000_000])
    message.raw_input_contents.append(struct.pack("<I", 1) + b"a")
    refused(lambda: decode_grpc(message, TEXT), "raw_input_contents[0] has 5")
    assert peak() < MB


def test_bytes_elements_still_decode(peak: Callable[[], int]) -> None:
    items = [b"", b"caf\xc3\xa9", b"x" * 40]
    body, length = binary(
        [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [3],
                "parameters": {"binary_data_size": 57},
            }
        ],
        b"".join(struct.pack("<I", len(v)) + v for v in items),
    )
    request, _ = decode_infer_request(body, length, "m", None, TEXT)
    assert request.inputs["text"].tolist() == items


def test_the_signature_is_checked_before_the_data_is_read() -> None:
    refused(
        lambda: decode_infer_request(
            json_body("pixel", "FP32", [1, 64], "junk"), None, "m", None, DIGITS
        ),
        "unknown input 'pixel': expected inputs ['pixels']",
    )
    refused(
        lambda: decode_infer_request(
            json_body("pixels", "FP32", [1, 65], "junk"), None, "m", None, DIGITS
        ),
        "input 'pixels': expected FP32 [-1,64], got FP32 [1,65]",
    )
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="pixels", datatype="INT64", shape=[1, 64])
    message.raw_input_contents.append(b"")
    refused(lambda: decode_grpc(message, DIGITS), "expected FP32 [-1,64], got INT64 [1,64]")


def test_flat_json_data_is_counted_before_numpy_sees_it(peak: Callable[[], int]) -> None:
    body = json_body("x", "FP32", [2**31 - 1], [1.0])
    refused(
        lambda: decode_infer_request(body, None, "m", None),
        f"input 'x': shape [{2**31 - 1}] needs {2**31 - 1} elements, 'data' has 1",
    )


# -- what numpy would have raised on ------------------------------------------------------


@pytest.mark.parametrize(
    "shape, fragment",
    [
        ([1] * 65, "shape has 65 dimensions, at most 32 are accepted"),
        ([0, 2**63 - 1], "its dimensions other than 0 multiply to 9223372036854775807"),
        ([0] + [2**31 - 1] * 3, "its dimensions other than 0 multiply to"),
    ],
)
def test_shapes_numpy_cannot_make_are_invalid_input(shape: list[int], fragment: str) -> None:
    refused(
        lambda: decode_infer_request(json_body("x", "FP32", shape, []), None, "m", None), fragment
    )
    body, length = binary(
        [{"name": "x", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": 0}}]
    )
    refused(lambda: decode_infer_request(body, length, "m", None), fragment)
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=shape)
    refused(lambda: decode_grpc(message), fragment)
    message.raw_input_contents.append(b"")
    refused(lambda: decode_grpc(message), fragment)


@pytest.mark.parametrize("datatype", ["INT8", "INT32", "UINT64", "BOOL", "FP16", "BYTES"])
def test_empty_json_tensors_decode(datatype: str) -> None:
    request, _ = decode_infer_request(json_body("x", datatype, [0, 3], []), None, "m", None)
    array = request.inputs["x"]
    assert array.shape == (0, 3)
    assert array.dtype == (
        object if datatype == "BYTES" else np.dtype(datatype.lower().replace("fp", "float"))
    )


@pytest.mark.parametrize("datatype", [["FP32"], {"FP32": 1}])
def test_a_datatype_that_is_not_a_string_is_invalid_input(datatype: object) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [1], "data": [1]}]})
    refused(
        lambda: decode_infer_request(body.encode(), None, "m", None), "input 'x': unknown datatype"
    )


# -- numbers that do not fit --------------------------------------------------------------


@pytest.mark.parametrize(
    "datatype, value",
    [
        ("FP32", 1e300),
        ("FP32", -1e39),
        ("FP32", 3.5e38),
        ("FP32", 2.0**128 - 2.0**103),  # the first value that rounds to inf
        ("FP16", 65520),
        ("FP16", 65520.0),
        ("FP16", -1e5),
        ("FP16", 2**63),
    ],
)
def test_numbers_beyond_a_float_datatype_are_refused(datatype: str, value: float) -> None:
    body = json_body("x", datatype, [3], [0.5, value, 1])
    refused(
        lambda: decode_infer_request(body, None, "m", None),
        "input 'x': value",
        f"is out of range for {datatype}",
    )


@pytest.mark.parametrize(
    "datatype, value",
    [
        ("FP32", float(np.finfo(np.float32).max)),
        ("FP32", 2.0**128 - 2.0**104),  # rounds down to the largest FP32
        ("FP32", 1e-50),  # rounds to 0: it fits, as it does in any float
        ("FP16", 65504),
        ("FP16", 65519.0),
        ("FP64", 1e300),
        ("FP32", 2**64 - 1),
    ],
)
def test_numbers_within_a_float_datatype_are_accepted(datatype: str, value: float) -> None:
    request, _ = decode_infer_request(json_body("x", datatype, [2], [value, -1]), None, "m", None)
    assert np.all(np.isfinite(request.inputs["x"]))


def test_nested_json_data_is_range_checked_too() -> None:
    body = json_body("x", "FP32", [2, 2], [[1.0, 2.0], [3.0, 1e39]])
    refused(lambda: decode_infer_request(body, None, "m", None), "value 1e+39 is out of range")


def test_an_empty_list_of_outputs_is_every_output() -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": []}
    ).encode()
    request, _ = decode_infer_request(body, None, "m", None)
    assert request.outputs is None
