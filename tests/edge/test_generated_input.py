"""Generated hostile input against a real gateway (issue 14: the edge holds).

Hypothesis writes requests on every surface, from random bytes and JSON to
near-valid ones (a valid request with one thing wrong: a shape, a datatype, a
number out of range, a size that does not match): KServe v2 JSON and binary
tensors over HTTP, ModelInferRequest messages over gRPC (built with the
generated classes, with typed or raw contents, and arbitrary bytes sent on a
generic channel so that they need not even parse), chat completions and
embeddings, and metadata routes with arbitrary headers. For every example:

* HTTP answers below 500 and gRPC never INTERNAL or UNKNOWN: caller input is
  never the gateway's failure;
* the process is alive;
* its peak resident set since the baseline stays under BASELINE + 300 MB.

Why that bound: the baseline is taken after a warm-up that runs the largest
execution each backend can make (the embedder's arena grows to its peak for
8 texts of 256 tokens, twice, as ONNX Runtime's arena doubles once), so what a
request may add on top is its own transient memory: a body of at most
server.max_request_bytes (4 MiB here) and what is decoded from it (JSON
numbers as Python objects, about 16x their text; tensors of at most that many
elements), under 100 MB; the rest is room for the allocator's fragmentation
over a thousand requests. A tensor allocated from a declared shape instead of
the bytes that came (50 million BYTES elements: 400 MB) breaks it; the edge
gateway's address-space limit (conftest.py) turns a larger one into a 500.

Runs are deterministic (derandomize, no example database) and bounded: about
1300 examples, 20-30 s on the 2-core development machine.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.api.v2_grpc_codec import CONTENTS_FIELD
from gateway.core.datatypes import DATATYPES, NUMPY_DTYPES
from tests.edge.conftest import EDGE_TEXT, EMBEDDER_ROWS, EdgeGateway
from tests.edge.wire import Http, binary_body, grpc_infer

MB = 1 << 20
HEADROOM = 300 * MB


def edge_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


# -- the gateway under test, warmed up, and what every example asserts ---------------------


class Watch:
    def __init__(self, edge: EdgeGateway) -> None:
        self.edge = edge
        self.baseline = 0

    def check(self, what: object) -> None:
        assert self.edge.alive(), f"the gateway died on {what!r}"
        grown = self.edge.peak() - self.baseline
        assert grown < HEADROOM, f"resident set grew by {grown / MB:.0f} MB on {what!r}"


ROW = [float(i % 17) for i in range(64)]


@pytest.fixture(scope="module")
def http(edge: EdgeGateway) -> Iterator[Http]:
    client = Http(edge.port)
    yield client
    client.close()


@pytest.fixture(scope="module")
def channel(edge: EdgeGateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        edge.grpc_target, options=[("grpc.max_send_message_length", -1)]
    ) as chan:
        yield chan


@pytest.fixture(scope="module")
def watch(edge: EdgeGateway, http: Http, channel: grpc.Channel) -> Watch:
    """The largest execution of each backend, then the baseline."""
    json_headers: dict[str, str | bytes] = {"content-type": "application/json"}
    pixels = {"name": "pixels", "datatype": "FP32", "shape": [64, 64], "data": ROW * 64}
    assert http.post("/v2/models/digits/infer", _dumps({"inputs": [pixels]})).status == 200
    texts = [f"{i} {EDGE_TEXT}" for i in range(EMBEDDER_ROWS)]
    text = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    for _ in range(2):
        assert http.post("/v2/models/embedder/infer", _dumps({"inputs": [text]})).status == 200
    body = _dumps({"model": "embeddings", "input": texts})
    assert http.post("/v1/embeddings", body, json_headers).status == 200
    chat = _dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    assert http.post("/v1/chat/completions", chat, json_headers).status == 200
    message = pb.ModelInferRequest(model_name="digits")
    message.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    message.raw_input_contents.append(np.ones(64, np.float32).tobytes())
    for _ in range(8):
        assert grpc_infer(channel, message.SerializeToString()) == grpc.StatusCode.OK
    watched = Watch(edge)
    watched.baseline = edge.reset_peak()
    return watched


def _dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


def _http_ok(reply_status: int, what: object) -> None:
    assert reply_status < 500, f"HTTP {reply_status} for {what!r}"


# -- strategies: random bytes and JSON, and valid requests with one thing wrong ----------

MODELS = ["digits", "digits-cached", "embedder", "typed", "wide", "embeddings", "chat", "nope"]
# The tensor models' inputs (name, datatype, shape): config in conftest.py.
SIGNATURES: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {
    "digits": [("pixels", "FP32", (-1, 64))],
    "digits-cached": [("pixels", "FP32", (-1, 64))],
    "embedder": [("text", "BYTES", (-1,))],
    "embeddings": [("text", "BYTES", (-1,))],  # kind embeddings: no tensor requests
    "typed": [(f"in_{dt}", dt, (-1, 3)) for dt in sorted(DATATYPES)],
    "wide": [("x", "FP32", (-1, -1))],
    "chat": [("pixels", "FP32", (-1, 64))],  # kind chat: no tensor requests
    "nope": [("pixels", "FP32", (-1, 64))],  # no such model
}
INPUT_NAMES = ["pixels", "text", "x", "nope", "", *(f"in_{dt}" for dt in sorted(DATATYPES))]
# Every datatype the gateway knows, and some it does not.
WIRE_DATATYPES = [*sorted(DATATYPES), "BF16", "FLOAT", "fp32", ""]
EDGE_DIMS = [0, 1, 2, 3, 64, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1]


def text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_categories=["Cs"]), max_size=max_size)


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True about one time in `one_in` (a middle value: Hypothesis favours the ends)."""
    return draw(st.integers(1, one_in)) == 2


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)
dims = st.integers(min_value=0, max_value=70) | st.sampled_from(EDGE_DIMS)
shapes = (
    st.lists(dims, max_size=5)
    | st.lists(st.integers(min_value=-3, max_value=3), max_size=4)
    | st.sampled_from([[1] * 65, [1] * 33, [1] * 32, [0, 2**63 - 1], [2**31 - 1, 2**31 - 1]])
)
# Numbers at the edges of every datatype's range, and beyond them.
edge_numbers = st.sampled_from(
    [
        *(0, -1, 1, 127, 128, -129, 255, 256, 32768, 65504, 65519, 65520, 70000),
        *(2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), -(2**63) - 1),
        *(0.5, -0.0, 1e-50, 6e-8, 3.4028234e38, 3.4028236e38, 3.5e38, 1e300, -1e300),
        *(True, False),
    ]
)
elements = (
    edge_numbers
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text(max_size=6)
    | st.booleans()
    | st.none()
)


def _valid_values(datatype: str) -> st.SearchStrategy[Any]:
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return text(max_size=16)
    if datatype.startswith("FP"):
        width = {"FP16": 16, "FP32": 32, "FP64": 64}[datatype]
        return st.floats(width=width, allow_nan=False, allow_infinity=False)  # type: ignore[arg-type]  # 16, 32 or 64
    info = np.iinfo(NUMPY_DTYPES[datatype])
    return st.integers(int(info.min), int(info.max)) | st.sampled_from(
        [int(info.min), int(info.max)]
    )


@dataclass
class Tensor:
    """One input as a request declares it; `values` flat (mutations may make any of it junk)."""

    name: Any
    datatype: Any
    shape: Any
    values: Any
    nested: bool = False
    blob: bytes | None = None  # binary and raw gRPC: these bytes instead of the values'


@dataclass
class Request:
    model: str
    tensors: list[Tensor]
    mutation: str = "none"


MUTATIONS = [
    *["none"] * 5,
    "name",
    "datatype",
    "shape",
    "count",
    "element",
    "elements",
    "batch",
    "drop",
    "duplicate",
    "extra",
    "blob",
]


# Mostly the tensor models: requests to the others stop at the model.
MODEL_CHOICES = [
    *("digits", "typed", "wide", "embedder") * 3,
    *("digits-cached", "embeddings", "chat", "nope"),
]


@st.composite
def v2_request(draw: st.DrawFn) -> Request:
    """A valid request for one of MODELS (then, about half the time, one thing made wrong)."""
    model = draw(st.sampled_from(MODEL_CHOICES))
    batch = draw(st.integers(0, 4))
    tensors = []
    for name, datatype, spec in SIGNATURES[model]:
        shape = [batch] + [d if d >= 0 else draw(st.integers(0, 5)) for d in spec[1:]]
        count = math.prod(shape)
        values = draw(st.lists(_valid_values(datatype), min_size=count, max_size=count))
        tensors.append(Tensor(name, datatype, shape, values, nested=draw(st.booleans())))
    request = Request(model, tensors, draw(st.sampled_from(MUTATIONS)))
    if not tensors or request.mutation == "none":
        return request
    victim = draw(st.sampled_from(tensors))
    mutation = request.mutation
    if mutation == "name":
        victim.name = draw(st.sampled_from(INPUT_NAMES) | json_scalars)
    elif mutation == "datatype":
        victim.datatype = draw(st.sampled_from(WIRE_DATATYPES) | json_scalars)
    elif mutation == "shape":
        victim.shape = draw(shapes)
    elif mutation == "count":
        extra = draw(st.lists(_valid_values(victim.datatype), min_size=1, max_size=3))
        victim.values = (
            victim.values[1:]
            if victim.values and draw(st.booleans())
            else [
                *victim.values,
                *extra,
            ]
        )
    elif mutation == "element" and victim.values:
        at = draw(st.integers(0, len(victim.values) - 1))
        victim.values = [
            *victim.values[:at],
            draw(edge_numbers | elements),
            *victim.values[at + 1 :],
        ]
    elif mutation == "elements":
        one_kind = draw(elements)
        count = len(victim.values)
        victim.values = draw(st.lists(st.just(one_kind) | elements, min_size=count, max_size=count))
    elif mutation == "batch":
        victim.shape = [batch + 1, *victim.shape[1:]]
        victim.values = draw(
            st.lists(
                _valid_values(victim.datatype),
                min_size=math.prod(victim.shape),
                max_size=math.prod(victim.shape),
            )
        )
    elif mutation == "drop":
        tensors.remove(victim)
    elif mutation == "duplicate":
        tensors.append(victim)
    elif mutation == "extra":
        tensors.append(Tensor("extra", "FP32", [1], [1.0]))
    elif mutation == "blob":
        victim.blob = draw(st.binary(max_size=64))
    return request


def _nest(values: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1 or not shape[0]:
        return values
    step = len(values) // shape[0]
    return [_nest(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _json_data(tensor: Tensor) -> Any:
    if (
        tensor.nested
        and isinstance(tensor.shape, list)
        and all(isinstance(d, int) and 0 < d < 100 for d in tensor.shape)
    ):
        return _nest(tensor.values, tensor.shape)
    return tensor.values


@st.composite
def v2_json_body(draw: st.DrawFn) -> tuple[str, bytes]:
    request = draw(v2_request())
    if rarely(draw, 10):
        return request.model, draw(st.binary(max_size=64) | json_values.map(_dumps))
    inputs = []
    for tensor in request.tensors:
        item = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
            "data": _json_data(tensor),
        }
        if rarely(draw, 20):  # a field missing, or junk
            key = draw(st.sampled_from(sorted(item)))
            if draw(st.booleans()):
                del item[key]
            else:
                item[key] = draw(json_values)
        inputs.append(item)
    doc: dict[str, Any] = {"inputs": inputs}
    if rarely(draw, 5):
        doc["id"] = draw(text(max_size=10) | json_values)
    if rarely(draw, 5):
        doc["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(
                            ["probabilities", "embedding", "y", "out_FP32", "nope"]
                        )
                    },
                    optional={"parameters": st.fixed_dictionaries({"binary_data": json_scalars})},
                ),
                max_size=2,
            )
            | json_values
        )
    if rarely(draw, 5):
        doc["parameters"] = draw(
            st.fixed_dictionaries({"binary_data_output": json_scalars}) | json_values
        )
    return request.model, _dumps(doc)


def _blob(tensor: Tensor, draw: st.DrawFn) -> bytes:
    """The tensor's bytes as tritonclient would send them (or random ones, when the
    values no longer fit the datatype)."""
    if tensor.blob is not None:
        return tensor.blob
    try:
        if tensor.datatype == "BYTES":
            items = [v.encode() if isinstance(v, str) else v for v in tensor.values]
            return b"".join(struct.pack("<I", len(v)) + v for v in items)
        with np.errstate(over="ignore"):  # a mutated value: whatever numpy makes of it
            return np.array(tensor.values, dtype=NUMPY_DTYPES[tensor.datatype]).tobytes()
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
        return draw(st.binary(max_size=64))


@st.composite
def v2_binary_body(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str | bytes]]:
    request = draw(v2_request())
    inputs, blobs = [], []
    for tensor in request.tensors:
        blob = _blob(tensor, draw)
        if rarely(draw, 10):  # a cut, or a broken BYTES length prefix
            blob = draw(st.binary(max_size=8)) + blob[draw(st.integers(0, len(blob))) :]
        size: Any = len(blob)
        if rarely(draw, 10):
            size = draw(st.integers(-5, 2**64) | json_values)
        item = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if rarely(draw, 20):
            item["data"] = _json_data(tensor)  # both data and binary_data_size
        if not rarely(draw, 20):
            item["parameters"] = {"binary_data_size": size}
        inputs.append(item)
        blobs.append(blob)
    header: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        header["parameters"] = {"binary_data_output": draw(json_scalars)}
    body, headers = binary_body(header, *blobs)
    if rarely(draw, 10):
        headers["inference-header-content-length"] = draw(
            st.sampled_from(["0", "-1", "abc", "1e3", str(2**64), str(len(body)), " 12", "٣"])
        ).encode()
    return request.model, body, headers


# -- v2 over HTTP ---------------------------------------------------------------------


@edge_settings(400)
@given(request=v2_json_body())
def test_generated_v2_json_requests(watch: Watch, http: Http, request: tuple[str, bytes]) -> None:
    model, body = request
    reply = http.post(f"/v2/models/{model}/infer", body, {"content-type": "application/json"})
    _http_ok(reply.status, request)
    watch.check(request)


@edge_settings(300)
@given(request=v2_binary_body())
def test_generated_v2_binary_requests(
    watch: Watch, http: Http, request: tuple[str, bytes, dict[str, str | bytes]]
) -> None:
    model, body, headers = request
    reply = http.post(f"/v2/models/{model}/infer", body, headers)
    _http_ok(reply.status, request)
    watch.check(request)


header_values = st.binary(max_size=140).filter(lambda v: b"\r" not in v and b"\n" not in v)
HEADER_NAMES = [
    "x-request-id",
    "x-request-timeout-ms",
    "authorization",
    "x-api-key",
    "cache-control",
    "traceparent",
]
GET_PATHS = [
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/digits",
    "/v2/models/digits/ready",
    "/v2/models/digits/versions/1",
    "/v2/models/nope",
    "/v1/models",
    "/slo",
]


@edge_settings(120)
@given(
    path=st.sampled_from(GET_PATHS),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=3),
)
def test_generated_headers_on_metadata_routes(
    watch: Watch, http: Http, path: str, headers: dict[str, str | bytes]
) -> None:
    reply = http.request("GET", path, headers=headers)
    _http_ok(reply.status, (path, headers))
    watch.check((path, headers))


@edge_settings(80)
@given(headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=3))
def test_generated_headers_on_infer(
    watch: Watch, http: Http, headers: dict[str, str | bytes]
) -> None:
    body = _dumps(
        {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": ROW}]}
    )
    reply = http.post("/v2/models/digits-cached/infer", body, headers)
    _http_ok(reply.status, headers)
    watch.check(headers)


# -- v2 over gRPC ---------------------------------------------------------------------

# What each typed contents field holds, as protobuf accepts it.
FIELD_VALUES = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=12),
}
GRPC_DIMS = st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 9) | st.sampled_from(EDGE_DIMS)


def _fill_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, item: Tensor, draw: st.DrawFn
) -> None:
    field = CONTENTS_FIELD.get(item.datatype) if isinstance(item.datatype, str) else None
    if field is not None and not rarely(draw, 10):
        values = [v.encode() if isinstance(v, str) else v for v in item.values]
        try:
            getattr(tensor.contents, field).extend(values)
            return
        except (TypeError, ValueError, OverflowError):
            tensor.contents.Clear()
    field = draw(st.sampled_from(sorted(FIELD_VALUES)))
    count = len(item.values) if isinstance(item.values, list) else 3
    getattr(tensor.contents, field).extend(
        draw(st.lists(FIELD_VALUES[field], min_size=count, max_size=count))
    )


@st.composite
def grpc_message(draw: st.DrawFn) -> bytes:
    request = draw(v2_request())
    message = pb.ModelInferRequest(
        model_name=request.model,
        model_version=draw(st.sampled_from(["", "", "", "1", "2"])),
        id=draw(text(max_size=8)),
    )
    raw = draw(st.booleans())
    for item in request.tensors:
        shape = item.shape
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and -(2**63) <= d < 2**63 for d in shape)
        ):
            shape = draw(st.lists(GRPC_DIMS, max_size=4))
        datatype = item.datatype if isinstance(item.datatype, str) else "FP32"
        name = item.name if isinstance(item.name, str) else ""
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            message.raw_input_contents.append(_blob(item, draw))
        else:
            _fill_contents(tensor, item, draw)
    if raw and rarely(draw, 10):  # one blob too many or too few
        if message.raw_input_contents and draw(st.booleans()):
            message.raw_input_contents.pop()
        else:
            message.raw_input_contents.append(draw(st.binary(max_size=8)))
    if rarely(draw, 5):
        message.outputs.add(name=draw(st.sampled_from(["probabilities", "embedding", "y", "nope"])))
    if rarely(draw, 7):
        message.parameters["x"].string_param = draw(text(max_size=5))
    return message.SerializeToString()


def _grpc_ok(code: grpc.StatusCode, what: object) -> None:
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), f"{code} for {what!r}"


@edge_settings(300)
@given(message=grpc_message())
def test_generated_grpc_messages(watch: Watch, channel: grpc.Channel, message: bytes) -> None:
    _grpc_ok(grpc_infer(channel, message), message)
    watch.check(message)


@st.composite
def broken_grpc_message(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    message = bytearray(draw(grpc_message()))
    for _ in range(draw(st.integers(1, 4))):
        if not message:
            break
        at = draw(st.integers(0, len(message) - 1))
        message[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(message)))
    return bytes(message[:cut] if draw(st.booleans()) else message)


@edge_settings(160)
@given(message=broken_grpc_message())
def test_generated_broken_grpc_messages(
    watch: Watch, channel: grpc.Channel, message: bytes
) -> None:
    _grpc_ok(grpc_infer(channel, message), message)
    watch.check(message)


# -- the OpenAI surface -----------------------------------------------------------------

ROLES = ["user", "system", "developer", "assistant", "tool", "function", "robot", ""]
VALID_CHAT_FIELDS = {
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "max_tokens": st.integers(1, 64),
    "max_completion_tokens": st.integers(1, 64),
    "n": st.just(1),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "stop": text(max_size=4) | st.lists(text(max_size=4), max_size=3),
    "user": text(max_size=8),
}
JUNK_CHAT_FIELDS = {
    "temperature": st.floats(allow_nan=False, allow_infinity=False) | json_values,
    "top_p": st.floats(-1, 2) | json_values,
    "max_tokens": st.integers(-2, 2**40) | json_values,
    "max_completion_tokens": st.integers(-2, 2**64) | json_values,
    "n": st.integers(-1, 3) | json_values,
    "stream": json_values,
    "stream_options": json_values,
    "stop": json_values,
    "user": json_values,
    "tools": json_values,
    "response_format": json_values,
}
message_parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "x"])},
        optional={"text": text(max_size=10) | json_values},
    ),
    max_size=2,
)


@st.composite
def chat_message(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(ROLES[:6]))
    return {"role": role, "content": draw(text(max_size=30))}


@st.composite
def chat_body(draw: st.DrawFn) -> bytes:
    """A valid chat request (then, about half the time, one field made wrong)."""
    if rarely(draw, 8):
        return draw(st.binary(max_size=64) | json_values.map(_dumps))
    body: dict[str, Any] = {
        "model": "chat",
        "messages": draw(st.lists(chat_message(), min_size=1, max_size=3)),
    }
    for key, values in VALID_CHAT_FIELDS.items():
        if rarely(draw, 4):
            body[key] = draw(values)
    mutation = draw(st.sampled_from(["none", "none", "field", "message", "model", "drop"]))
    if mutation == "field":
        key = draw(st.sampled_from(sorted(JUNK_CHAT_FIELDS)))
        body[key] = draw(JUNK_CHAT_FIELDS[key])
    elif mutation == "message":
        at = draw(st.integers(0, len(body["messages"]) - 1))
        body["messages"][at] = draw(
            st.fixed_dictionaries(
                {"role": st.sampled_from(ROLES)},
                optional={"content": text(max_size=30) | message_parts | json_values},
            )
            | json_values
        )
    elif mutation == "model":
        body["model"] = draw(st.sampled_from(MODELS) | json_values)
    elif mutation == "drop":
        del body[draw(st.sampled_from(["model", "messages"]))]
    return _dumps(body)


@edge_settings(150)
@given(body=chat_body())
def test_generated_chat_requests(watch: Watch, http: Http, body: bytes) -> None:
    reply = http.post("/v1/chat/completions", body, {"content-type": "application/json"})
    _http_ok(reply.status, body)
    if reply.status == 200 and reply.headers.get("content-type", "").startswith("text/event"):
        # A stream that broke after it started ends with an error event: never a 5xx's.
        for line in reply.body.split(b"\n\n"):
            if line.startswith(b"data: {") and b'"error"' in line[:20]:
                error = json.loads(line[6:])["error"]
                assert error["type"] != "server_error" or error["code"], line
    watch.check(body)


@st.composite
def embeddings_body(draw: st.DrawFn) -> bytes:
    """A valid embeddings request (then, about half the time, one field made wrong)."""
    if rarely(draw, 8):
        return draw(st.binary(max_size=64) | json_values.map(_dumps))
    texts = text(max_size=40)
    body: dict[str, Any] = {
        "model": "embeddings",
        "input": draw(texts | st.lists(texts, min_size=1, max_size=10)),
    }
    if rarely(draw, 3):
        body["encoding_format"] = draw(st.sampled_from(["float", "base64"]))
    if rarely(draw, 5):
        body["dimensions"] = 384
    mutation = draw(st.sampled_from(["none", "none", "input", "model", "format", "dimensions"]))
    if mutation == "input":
        body["input"] = draw(
            st.lists(st.integers(-5, 2**40), max_size=5)
            | st.lists(st.lists(st.integers(0, 100), max_size=3), max_size=3)
            | st.lists(texts | json_scalars, max_size=4)
            | json_values
        )
    elif mutation == "model":
        body["model"] = draw(st.sampled_from(MODELS) | json_values)
    elif mutation == "format":
        body["encoding_format"] = draw(st.sampled_from(["", "int8", "FLOAT"]) | json_values)
    elif mutation == "dimensions":
        body["dimensions"] = draw(st.integers(-2, 2**64) | json_values)
    return _dumps(body)


@edge_settings(100)
@given(body=embeddings_body())
def test_generated_embeddings_requests(watch: Watch, http: Http, body: bytes) -> None:
    reply = http.post("/v1/embeddings", body, {"content-type": "application/json"})
    _http_ok(reply.status, body)
    watch.check(body)
