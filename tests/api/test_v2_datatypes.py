"""Every v2 datatype ONNX Runtime supports, through JSON and binary tensors, with
tritonclient.http against a gateway serving Identity graphs; and a backend whose
answers break the signature."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.api.http_helpers import post, tensor_json
from tests.conftest import GatewayProcess, start_gateway
from tests.onnx_models import ONNX_ELEMENT, identity_model, passthrough_model

DATATYPES = sorted(ONNX_ELEMENT)


def sample(datatype: str, rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"", b"caf\xc3\xa9", b"x" * 40]] * 2, dtype=object)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=(2, 3)).astype(bool)
    if datatype.startswith("FP"):
        return (rng.standard_normal((2, 3)) * 100).astype(httpclient.triton_to_np_dtype(datatype))
    dtype = np.dtype(httpclient.triton_to_np_dtype(datatype))
    info = np.iinfo(dtype)
    # The extremes of the type, to catch any narrowing on the way.
    return np.array([[info.min, 0, info.max], [1, info.max - 1, info.min + 1]], dtype=dtype)


@pytest.fixture(scope="module")
def typed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("typed")
    identity = identity_model(workdir / "identity.onnx", DATATYPES)
    passthrough = passthrough_model(workdir / "passthrough.onnx")
    spec = lambda side, dt: {"name": f"{side}_{dt}", "datatype": dt, "shape": [-1, 3]}  # noqa: E731
    config = {
        "backends": {
            "identity": {"type": "onnx", "path": str(identity), "max_concurrency": 1},
            "passthrough": {"type": "onnx", "path": str(passthrough), "max_concurrency": 1},
        },
        "models": {
            "typed": {
                "signature": {
                    "inputs": [spec("in", dt) for dt in DATATYPES],
                    "outputs": [spec("out", dt) for dt in DATATYPES],
                },
                "route": {"backends": ["identity"]},
            },
            # The model is dynamic in both dimensions; the signature promises 10
            # outputs columns, which only holds when the caller sends 10 columns.
            "narrow": {
                "signature": {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}],
                },
                "route": {"backends": ["passthrough"]},
            },
        },
    }
    gateway = start_gateway(config, workdir)
    yield gateway
    gateway.stop()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_round_trips_exactly(typed_gateway, binary) -> None:
    rng = np.random.default_rng(7)
    tensors = {dt: sample(dt, rng) for dt in DATATYPES}
    inputs = []
    for dt, array in tensors.items():
        tensor = httpclient.InferInput(f"in_{dt}", list(array.shape), dt)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(f"out_{dt}", binary_data=binary) for dt in DATATYPES]
    result = httpclient.InferenceServerClient(typed_gateway.url).infer(
        "typed", inputs, outputs=outputs
    )
    for dt, sent in tensors.items():
        got = result.as_numpy(f"out_{dt}")
        meta = result.get_output(f"out_{dt}")
        assert meta["datatype"] == dt and meta["shape"] == [2, 3]
        if dt == "BYTES":
            # tritonclient gives JSON BYTES back as str, binary ones as bytes.
            got = np.array(
                [v if isinstance(v, bytes) else v.encode() for v in got.flat], dtype=object
            ).reshape(got.shape)
        else:
            assert got.dtype == sent.dtype, dt
        np.testing.assert_array_equal(got, sent, err_msg=dt)


def typed_body(overrides: dict[str, dict]) -> str:
    inputs = []
    for dt in DATATYPES:
        base = {
            "name": f"in_{dt}",
            "datatype": dt,
            "shape": [1, 3],
            "data": ["a", "b", "c"]
            if dt == "BYTES"
            else ([True] * 3 if dt == "BOOL" else [1, 2, 3]),
        }
        if dt in overrides:
            if overrides[dt] is None:
                continue
            base.update(overrides[dt])
        inputs.append(base)
    return json.dumps({"inputs": inputs})


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        ({"INT8": {"data": [1, 2, 300]}}, ["input 'in_INT8': value 300 is out of range for INT8"]),
        (
            {"UINT16": {"data": [1, -2, 3]}},
            ["input 'in_UINT16': value -2 is out of range for UINT16"],
        ),
        (
            {"INT64": {"data": [1, 2**63, 3]}},
            ["input 'in_INT64': value 9223372036854775808 is out of range"],
        ),
        ({"INT32": {"data": [1, 2.5, 3]}}, ["input 'in_INT32': INT32 data must be integers"]),
        ({"BOOL": {"data": [1, 0, 1]}}, ["input 'in_BOOL': BOOL data must be booleans"]),
        (
            {"BYTES": {"data": ["a", 2, "c"]}},
            ["input 'in_BYTES': BYTES data must be strings, element 1"],
        ),
        ({"FP64": None}, ["missing input 'in_FP64': expected FP64 [-1,3]"]),
        ({"FP16": {"shape": [2, 3], "data": [1.0] * 6}}, ["input 'in_FP16': batch size 2 differs"]),
    ],
)
def test_typed_json_errors_name_the_input(typed_gateway, overrides, fragments) -> None:
    reply = post(typed_gateway.port, "/v2/models/typed/infer", typed_body(overrides))
    assert reply.status == 400, reply.body
    for fragment in fragments:
        assert fragment in reply.error


def bytes_request(raw: bytes, shape: list[int]) -> tuple[bytes, dict[str, str]]:
    inputs = json.loads(typed_body({"BYTES": None}))["inputs"]
    inputs.append(
        {
            "name": "in_BYTES",
            "datatype": "BYTES",
            "shape": shape,
            "parameters": {"binary_data_size": len(raw)},
        }
    )
    head = json.dumps({"inputs": inputs}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


@pytest.mark.parametrize(
    "raw, fragments",
    [
        (
            struct.pack("<I", 100) + b"short" + bytes(8),
            ["input 'in_BYTES': BYTES element 0 declares 100 bytes, only 13 remain"],
        ),
        (
            struct.pack("<I", 8) + b"abcdefgh" + b"\x01\x00",
            ["input 'in_BYTES': BYTES [1,3] needs 3 elements, the binary data holds 1"],
        ),
        (
            # Fewer bytes than 3 length prefixes: refused before anything is parsed.
            struct.pack("<I", 1) + b"a" + b"\x01\x00",
            ["input 'in_BYTES': BYTES [1,3] needs at least 12 bytes", "binary_data_size is 7"],
        ),
        (
            b"".join(struct.pack("<I", 1) + b"a" for _ in range(3)) + b"zz",
            ["input 'in_BYTES': 2 bytes left over"],
        ),
    ],
)
def test_broken_bytes_length_prefixes_get_400(typed_gateway, raw, fragments) -> None:
    body, headers = bytes_request(raw, [1, 3])
    reply = post(typed_gateway.port, "/v2/models/typed/infer", body, headers)
    assert reply.status == 400, reply.body
    for fragment in fragments:
        assert fragment in reply.error


def test_an_answer_that_breaks_the_signature_is_a_502_not_a_corrupt_answer(typed_gateway) -> None:
    fits = post(
        typed_gateway.port, "/v2/models/narrow/infer", tensor_json("x", "FP32", [2, 10], [0.5] * 20)
    )
    assert fits.status == 200
    breaks = post(
        typed_gateway.port, "/v2/models/narrow/infer", tensor_json("x", "FP32", [2, 11], [0.5] * 22)
    )
    assert breaks.status == 502
    assert breaks.error == (
        "backend 'passthrough' returned output 'y' as FP32 [2,11], signature expects "
        "FP32 [-1,10] with batch size 2"
    )
    assert breaks.headers["x-gateway-backend"] == "passthrough"
