"""KServe v2 JSON and binary tensor data <-> core types.

Binary payloads become numpy arrays with `np.frombuffer` (no copies, no Python
lists); JSON tensors are checked for type before conversion so that "1.5" for
an FP32 input or 2.5 for an INT64 input is refused rather than coerced, and
numbers that do not fit the datatype (300 for INT8, 1e300 for FP32) are refused.

Memory is bounded by what was sent: each tensor's declared shape is checked
against the model's signature and against the bytes (or JSON elements) that
came, on Python ints, before any array is allocated for it.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.core.datatypes import DATATYPES, NUMPY_DTYPES, datatype_of
from gateway.core.errors import InvalidInput
from gateway.core.signature import Signature, check_rank, format_shape, shape_size
from gateway.core.types import InferRequest, InferResponse, RequestedOutput

_LENGTH = struct.Struct("<I")
# numpy kinds a JSON array may produce for each family of datatype
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_KIND_WORDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}
# The smallest magnitude that rounds to infinity in each narrow float datatype
# (its largest finite value plus half a unit in the last place), and its square.
_FLOAT_OVERFLOW = {"FP16": 65520.0, "FP32": 2.0**128 - 2.0**103}
_FLOAT_OVERFLOW_SQUARED = {k: v * v for k, v in _FLOAT_OVERFLOW.items()}
# _check_float_range's dot product overflows (to inf, as intended) for values past
# 1e154: numpy's warning about it would only say that such a value was refused.
warnings.filterwarnings(
    "ignore", "overflow encountered in dot", RuntimeWarning, r"gateway\.api\.v2_codec"
)


@dataclass(frozen=True, slots=True)
class WireOptions:
    """How the caller wants outputs encoded when it did not name them one by one."""

    binary_outputs: bool = False


def decode_infer_request(
    body: bytes,
    header_length: str | None,
    model: str,
    version: str | None,
    signature: Signature | None = None,
) -> tuple[InferRequest, WireOptions]:
    """The core request, each input checked against `signature` (when the model
    has one) as soon as its header is read, before its tensor is built."""
    if not body:
        raise InvalidInput("request body is empty: expected a KServe v2 inference request")
    view = memoryview(body)
    if header_length is not None:
        json_size = _header_length(header_length, len(body))
        header, binary = view[:json_size], view[json_size:]
    else:
        header, binary = view, view[:0]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"request body: expected a JSON object, got {_json_type(doc)}")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id': expected a string, got {_json_type(request_id)}")
    parameters = _parameters(doc, "request")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput(
            "'inputs': expected a non-empty list of tensors, got "
            + ("an empty list" if raw_inputs == [] else _json_type(raw_inputs))
        )

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(raw_inputs):
        name, datatype, shape, params = _tensor_header(item, index)
        if name in inputs:
            raise InvalidInput(f"input '{name}' is given twice")
        if signature is not None:
            signature.check_input(name, datatype, shape)
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in item:
                raise InvalidInput(f"input '{name}': has both 'data' and binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(
                    f"input '{name}': binary_data_size must be a non-negative integer, got {size!r}"
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes of binary data left)"
                )
            inputs[name] = decode_buffer(
                name, datatype, shape, binary[offset : offset + size], _BINARY_SIZE
            )
            offset += size
        elif "data" in item:
            inputs[name] = _decode_json(name, datatype, shape, item["data"])
        else:
            raise InvalidInput(f"input '{name}': no 'data' and no binary_data_size parameter")
    if offset != len(binary):
        raise InvalidInput(
            f"binary data is {len(binary)} bytes but the inputs' binary_data_size add up "
            f"to {offset}"
        )

    options = WireOptions(binary_outputs=parameters.get("binary_data_output") is True)
    outputs = _requested_outputs(doc.get("outputs"), options)
    request = InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        outputs=outputs,
        id=request_id,
        parameters=parameters or None,
    )
    return request, options


def _header_length(value: str, body_size: int) -> int:
    try:
        size = int(value)
    except ValueError:
        raise InvalidInput(
            f"Inference-Header-Content-Length: expected an integer, got {value!r}"
        ) from None
    if size <= 0 or size > body_size:
        raise InvalidInput(
            f"Inference-Header-Content-Length is {size} but the body has {body_size} bytes"
        )
    return size


def _parameters(doc: dict[str, Any], where: str) -> dict[str, Any]:
    params = doc.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{where} 'parameters': expected an object, got {_json_type(params)}")
    return params


def _tensor_header(item: Any, index: int) -> tuple[str, str, tuple[int, ...], dict[str, Any]]:
    if not isinstance(item, dict):
        raise InvalidInput(f"inputs[{index}]: expected an object, got {_json_type(item)}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}]: 'name' must be a non-empty string")
    datatype = item.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(
            f"input '{name}': unknown datatype {datatype!r} (expected one of {sorted(DATATYPES)})"
        )
    shape = item.get("shape")
    if isinstance(shape, list):
        check_rank(name, len(shape))
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(
            f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}"
        )
    return name, datatype, tuple(shape), _parameters(item, f"input '{name}'")


_BINARY_SIZE = "binary_data_size is {size}"


def decode_buffer(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    data: bytes | memoryview,
    mismatch: str,
    index: int = 0,
) -> np.ndarray:
    """One input's tensor from its raw bytes (binary extension, gRPC raw contents).
    `mismatch` says where the size came from when it is wrong, formatted with
    `index` and `size` (e.g. "binary_data_size is {size}").

    The shape is checked against the bytes before anything is allocated: a
    fixed-size datatype needs exactly count * itemsize bytes, and each BYTES
    element at least its 4-byte length prefix."""
    count = shape_size(name, shape)
    if datatype == "BYTES":
        if count > len(data) // 4:
            raise InvalidInput(
                f"input '{name}': BYTES {format_shape(shape)} needs at least {count * 4} bytes "
                f"(a 4-byte length per element), {mismatch.format(index=index, size=len(data))}"
            )
        return decode_bytes_elements(name, shape, count, memoryview(data))
    dtype = NUMPY_DTYPES[datatype]
    if len(data) != count * dtype.itemsize:
        raise InvalidInput(
            f"input '{name}': {datatype} {format_shape(shape)} needs {count * dtype.itemsize} "
            f"bytes, {mismatch.format(index=index, size=len(data))}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def decode_bytes_elements(
    name: str, shape: tuple[int, ...], count: int, raw: memoryview
) -> np.ndarray:
    """`count` length-prefixed elements; the caller made sure that `raw` has at
    least 4 bytes per element, so the array allocated is bounded by it."""
    elements = np.empty(count, dtype=object)
    pos, end = 0, len(raw)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(
                f"input '{name}': BYTES {format_shape(shape)} needs {count} elements, "
                f"the binary data holds {i}"
            )
        (length,) = _LENGTH.unpack_from(raw, pos)
        pos += 4
        if pos + length > end:
            raise InvalidInput(
                f"input '{name}': BYTES element {i} declares {length} bytes, "
                f"only {end - pos} remain"
            )
        elements[i] = bytes(raw[pos : pos + length])
        pos += length
    if pos != end:
        raise InvalidInput(
            f"input '{name}': {end - pos} bytes left over after {count} BYTES elements "
            f"of shape {format_shape(shape)}"
        )
    return elements.reshape(shape)


def _decode_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': 'data' must be a list, got {_json_type(data)}")
    count = shape_size(name, shape)
    if datatype == "BYTES":
        return _decode_json_bytes(name, shape, count, data)
    if len(data) != count and (not data or not isinstance(data[0], list)):
        # Flat data: its length is the element count, known before numpy sees it.
        raise InvalidInput(
            f"input '{name}': shape {format_shape(shape)} needs {count} elements, "
            f"'data' has {len(data)}"
        )
    try:
        array = np.array(data)
    except (ValueError, OverflowError):
        raise InvalidInput(
            f"input '{name}': 'data' must be a flat or regularly nested list of {datatype} values"
        ) from None
    if array.size != count:
        raise InvalidInput(
            f"input '{name}': shape {format_shape(shape)} needs {count} elements, "
            f"'data' has {array.size}"
        )
    dtype = NUMPY_DTYPES[datatype]
    family = dtype.kind
    if family in "iu" and array.dtype.kind in "fO" and array.size:
        # numpy infers float64 (losing precision) for integers beyond int64,
        # e.g. UINT64 values over 2**63: keep them exact on this slow path.
        array = _exact_integers(name, datatype, data, array)
    if array.size and array.dtype.kind not in _ACCEPTED_KINDS[family]:
        raise InvalidInput(
            f"input '{name}': {datatype} data must be {_KIND_WORDS[family]}, got "
            f"{_describe_values(array)}"
        )
    if family in "iu" and array.size:
        info = np.iinfo(dtype)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise InvalidInput(
                f"input '{name}': value {low if low < info.min else high} is out of range "
                f"for {datatype} [{info.min}, {info.max}]"
            )
    squared = _FLOAT_OVERFLOW_SQUARED.get(datatype)
    if squared is not None and array.size:
        # Numbers that would become infinite in a narrow float datatype. One dot
        # product answers for float data (its sum of squares stays under the
        # bound's square when every value is under the bound); the exact test
        # runs when it does not, and on integers.
        flat = array if array.ndim == 1 else array.reshape(-1)
        if array.dtype.kind != "f" or flat.dot(flat) >= squared:
            _check_float_range(name, datatype, array)
    return array.astype(dtype, copy=False).reshape(shape)


def _check_float_range(name: str, datatype: str, array: np.ndarray) -> None:
    if array.dtype.kind in "iu" and datatype != "FP16":
        return  # every int64 and uint64 fits FP32
    overflow = _FLOAT_OVERFLOW[datatype]
    low, high = float(array.min()), float(array.max())
    if high >= overflow or low <= -overflow:
        value = high if high >= overflow else low
        raise InvalidInput(
            f"input '{name}': value {value:g} is out of range for {datatype} "
            f"(finite values up to ±{np.finfo(NUMPY_DTYPES[datatype]).max:g})"
        )


def _exact_integers(name: str, datatype: str, data: list[Any], inferred: np.ndarray) -> np.ndarray:
    flat = _flatten(data)
    if not all(type(v) is int for v in flat):
        return inferred
    low, high = min(flat), max(flat)
    if low >= 0 and high <= np.iinfo(np.uint64).max:
        return np.array(flat, dtype=np.uint64)
    info = np.iinfo(NUMPY_DTYPES[datatype])
    raise InvalidInput(
        f"input '{name}': value {low if low < info.min else high} is out of range "
        f"for {datatype} [{info.min}, {info.max}]"
    )


def _decode_json_bytes(
    name: str, shape: tuple[int, ...], count: int, data: list[Any]
) -> np.ndarray:
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidInput(
            f"input '{name}': shape {format_shape(shape)} needs {count} elements, "
            f"'data' has {len(flat)}"
        )
    elements = np.empty(count, dtype=object)
    for i, value in enumerate(flat):
        if not isinstance(value, str):
            raise InvalidInput(
                f"input '{name}': BYTES data must be strings, element {i} is {_json_type(value)}"
            )
        elements[i] = value.encode("utf-8")
    return elements.reshape(shape)


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    for value in data:
        flat.extend(_flatten(value) if isinstance(value, list) else [value])
    return flat


def _describe_values(array: np.ndarray) -> str:
    kind = array.dtype.kind
    if kind == "U":
        return f"strings such as {str(array.flat[0])!r}"
    if kind == "b":
        return "booleans"
    if kind == "f":
        return (
            "non-integer numbers" if not np.all(np.mod(array, 1) == 0) else "floating-point numbers"
        )
    if kind in "iu":
        return "integers"
    return "values of mixed or non-numeric types"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _requested_outputs(raw: Any, options: WireOptions) -> tuple[RequestedOutput, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput(f"'outputs': expected a list, got {_json_type(raw)}")
    requested = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{index}]: expected an object with a string 'name'")
        params = _parameters(item, f"output '{item['name']}'")
        if params.get("classification"):
            raise InvalidInput(
                f"output '{item['name']}': the classification extension is not supported"
            )
        binary = params.get("binary_data", options.binary_outputs)
        requested.append(RequestedOutput(item["name"], binary is True))
    # None of them named: every output, as on gRPC (and Triton).
    return tuple(requested) if requested else None


def encode_infer_response(
    response: InferResponse,
    requested: tuple[RequestedOutput, ...] | None,
    options: WireOptions,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    binary_for = {o.name: o.binary for o in requested} if requested is not None else None
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in response.outputs.items():
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        binary = options.binary_outputs if binary_for is None else binary_for[name]
        if binary:
            raw = encode_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(name, array, datatype)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": response.model, "model_version": response.version}
    if response.id is not None:
        doc["id"] = response.id
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def encode_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()
    parts: list[bytes] = []
    for value in array.flat:
        value = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(_LENGTH.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def _json_data(name: str, array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        try:
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.flat]
        except UnicodeDecodeError:
            raise InvalidInput(
                f"output '{name}' holds bytes that are not UTF-8: request it with binary_data"
            ) from None
    # orjson serialises contiguous numpy arrays natively (no Python lists).
    return np.ascontiguousarray(array.ravel())
