"""KServe v2 gRPC messages <-> the core's tensors: typed `contents` and
`raw_input_contents` in, typed or raw outputs back, each checked against what
the request declares (the gRPC twin of v2_codec.py) and, before any tensor is
built, against the model's signature and the elements or bytes that came."""

from __future__ import annotations

from typing import Any

import numpy as np

from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.api.v2_codec import decode_buffer, encode_binary
from gateway.core.datatypes import DATATYPES, NUMPY_DTYPES, datatype_of
from gateway.core.errors import InvalidInput
from gateway.core.signature import Signature, check_rank, format_shape, shape_size
from gateway.core.types import InferRequest, InferResponse, RequestedOutput

# The typed `contents` field of each datatype (FP16 has none: raw only).
CONTENTS_FIELD: dict[str, str] = {
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
_ALL_CONTENTS = tuple(sorted(set(CONTENTS_FIELD.values())))
_RAW_SIZE = "raw_input_contents[{index}] has {size}"
# What numpy reads each contents field as, before narrowing to the datatype.
_FIELD_DTYPE = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}
_NARROW = frozenset({"INT8", "INT16", "UINT8", "UINT16"})


def decode_infer_request(
    request: pb.ModelInferRequest, signature: Signature | None = None
) -> tuple[InferRequest, bool]:
    """The core request, and whether its tensors came as raw contents; each input
    is checked against `signature` (when the model has one) before it is built."""
    tensors = request.inputs
    raw_contents = request.raw_input_contents
    raw = len(raw_contents) > 0
    if not tensors:
        raise InvalidInput("'inputs': expected a non-empty list of tensors, got an empty list")
    if raw and len(raw_contents) != len(tensors):
        raise InvalidInput(
            f"request has {len(raw_contents)} raw_input_contents for {len(tensors)} inputs "
            f"{[t.name for t in tensors]}: send one per input, in the order of 'inputs'"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if not name:
            raise InvalidInput(f"inputs[{index}]: 'name' must be a non-empty string")
        if name in inputs:
            raise InvalidInput(f"input '{name}' is given twice")
        datatype = tensor.datatype
        if datatype not in DATATYPES:
            raise InvalidInput(
                f"input '{name}': unknown datatype {datatype!r} (expected one of "
                f"{sorted(DATATYPES)})"
            )
        dims = tensor.shape
        check_rank(name, len(dims))
        shape = tuple(dims)
        if any(d < 0 for d in shape):
            raise InvalidInput(
                f"input '{name}': 'shape' must be non-negative integers, got {format_shape(shape)}"
            )
        if signature is not None:
            signature.check_input(name, datatype, shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{name}': has both 'contents' and raw_input_contents[{index}]: "
                    "send one of them"
                )
            inputs[name] = decode_buffer(
                name, datatype, shape, raw_contents[index], _RAW_SIZE, index
            )
        else:
            inputs[name] = decode_contents(name, datatype, shape, tensor)
    outputs = tuple(RequestedOutput(o.name) for o in request.outputs) if request.outputs else None
    parameters = (
        {k: _parameter(v) for k, v in request.parameters.items()} if request.parameters else None
    )
    core = InferRequest(
        model=request.model_name,
        version=request.model_version or None,
        inputs=inputs,
        outputs=outputs,
        id=request.id or None,
        parameters=parameters,
    )
    return core, raw


def decode_contents(
    name: str, datatype: str, shape: tuple[int, ...], tensor: pb.ModelInferRequest.InferInputTensor
) -> np.ndarray:
    count = shape_size(name, shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input '{name}': {datatype} has no typed contents field: send it in raw_input_contents"
        )
    if not tensor.HasField("contents"):
        if count == 0:
            return np.empty(shape, dtype=NUMPY_DTYPES[datatype])
        raise InvalidInput(f"input '{name}': no 'contents' and no raw_input_contents")
    contents = tensor.contents
    for other in _ALL_CONTENTS:
        if other != field and len(getattr(contents, other)):
            raise InvalidInput(
                f"input '{name}': {datatype} elements go in contents.{field}, got contents.{other}"
            )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {format_shape(shape)} needs {count} elements, "
            f"contents.{field} has {len(values)}"
        )
    if datatype == "BYTES":
        elements = np.empty(count, dtype=object)
        elements[:] = list(values)
        return elements.reshape(shape)
    array = np.array(values, dtype=_FIELD_DTYPE[field])
    if datatype in _NARROW and array.size:
        info = np.iinfo(NUMPY_DTYPES[datatype])
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise InvalidInput(
                f"input '{name}': value {low if low < info.min else high} is out of range "
                f"for {datatype} [{info.min}, {info.max}]"
            )
    return array.astype(NUMPY_DTYPES[datatype], copy=False).reshape(shape)


def _parameter(value: pb.InferParameter) -> Any:
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


def encode_infer_response(response: InferResponse, raw: bool) -> pb.ModelInferResponse:
    """The answer; raw contents if the request was raw or an output has no typed field."""
    outputs = response.outputs
    datatypes = [datatype_of(array) for array in outputs.values()]
    message = pb.ModelInferResponse(
        model_name=response.model,
        model_version=response.version,
        id=response.id or "",
    )
    tensors = message.outputs
    if raw or any(dt not in CONTENTS_FIELD for dt in datatypes):
        message.raw_output_contents.extend(
            encode_binary(array, dt) for array, dt in zip(outputs.values(), datatypes)
        )
        for (name, array), datatype in zip(outputs.items(), datatypes):
            tensors.add(name=name, datatype=datatype, shape=array.shape)
        return message
    for (name, array), datatype in zip(outputs.items(), datatypes):
        tensor = tensors.add(name=name, datatype=datatype, shape=array.shape)
        values = getattr(tensor.contents, CONTENTS_FIELD[datatype])
        if datatype == "BYTES":
            values.extend(v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.flat)
        else:
            values.extend(array.ravel().tolist())
    return message
