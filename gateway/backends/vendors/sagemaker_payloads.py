"""The bodies of a SageMaker tensor endpoint: a request's input tensors as the
endpoint's payload, by content type, and its answer back as output tensors
that fit what the backend declares (`inputs` / `outputs` of its config).

The conventions are those of SageMaker's framework containers:

* `application/json`: TensorFlow Serving's REST shapes, which the SageMaker
  TensorFlow container passes through and whose row format (`instances`,
  answered by `predictions`) is also what the PyTorch, MXNet and scikit-learn
  containers' default handlers read and write. One input is sent as
  `{"instances": <nested list>}`; several as `{"instances": {<name>: <nested
  list>, ...}}` (TF Serving's columnar format when the key is `inputs`). The
  answer's `predictions` is the one output's nested list, an object of
  outputs by name, or a list of one object per instance (TF Serving's row
  format for several outputs). Both keys are configurable; without one, the
  body is the bare nested list (one tensor). BYTES travel as UTF-8 strings.
* `text/csv`: one input of rank 0, 1 or 2: a line per row (rank 1: one value
  per line), values separated by commas, no header (the built-in algorithms'
  format: XGBoost, Linear Learner). The answer fills one output: rank 2, a
  line per row; rank 1, every value in order, one per line or on one line
  (XGBoost has written both); rank 0, one value. Numbers only.
* `application/x-npy`: one input as NumPy `.npy` bytes; the answer is one
  output's `.npy`, parsed without pickle and only once its header agrees with
  the number of bytes received (a header may claim any size: np.load would
  allocate it before reading).

An answer that does not fit (not parseable, a missing output, a datatype the
output's values cannot take without loss, a shape the declared output does
not accept) raises `BadAnswer`: the endpoint failed, not the caller.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import orjson

from gateway.core.datatypes import NUMPY_DTYPES
from gateway.core.errors import InvalidInput
from gateway.core.signature import MAX_RANK, TensorSpec, format_shape

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
ContentType = Literal["application/json", "text/csv", "application/x-npy"]

_EXCERPT = 40


class BadAnswer(Exception):
    """The endpoint's answer does not fit the declared outputs."""


# -- config rules --------------------------------------------------------------


def format_problems(
    content_type: str,
    accept: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    request_key: str | None,
    response_key: str | None,
) -> list[str]:
    """Why these declared tensors cannot travel in these content types (empty: they can)."""
    problems: list[str] = []
    if content_type != JSON or request_key is None:
        why = f"content_type {content_type}" if content_type != JSON else "json_request_key null"
        if len(inputs) != 1:
            problems.append(f"inputs: {why} carries exactly one input, {len(inputs)} declared")
    if accept != JSON or response_key is None:
        why = f"accept {accept}" if accept != JSON else "json_response_key null"
        if len(outputs) != 1:
            problems.append(f"outputs: {why} carries exactly one output, {len(outputs)} declared")
    for side, kind, specs in (("inputs", content_type, inputs), ("outputs", accept, outputs)):
        for spec in specs:
            if kind == CSV and (spec.datatype in ("BYTES", "BOOL") or len(spec.shape) > 2):
                problems.append(
                    f"{side}: '{spec.name}' is {spec.describe()}: text/csv carries numbers "
                    "of rank 2 at most"
                )
            if kind == NPY and spec.datatype == "BYTES":
                problems.append(
                    f"{side}: '{spec.name}' is BYTES, which .npy holds only pickled "
                    "(refused): use application/json"
                )
    return problems


# -- requests ------------------------------------------------------------------


def encode(
    content_type: str,
    inputs: dict[str, np.ndarray],
    order: list[str],
    request_key: str | None,
) -> bytes:
    """The request body for `inputs`, named in the declared `order`."""
    if content_type == JSON:
        if request_key is None or len(order) == 1:
            value: Any = _json_value(order[0], inputs[order[0]])
        else:
            value = {name: _json_value(name, inputs[name]) for name in order}
        document = value if request_key is None else {request_key: value}
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    array = inputs[order[0]]
    if content_type == CSV:
        rows = array.reshape(1, 1) if array.ndim == 0 else array.reshape(array.shape[0], -1)
        # str() of a NumPy scalar is its shortest exact text (FP32 0.1 -> "0.1").
        return "".join(",".join(map(str, row)) + "\n" for row in rows).encode()
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _json_value(name: str, array: np.ndarray) -> Any:
    if array.dtype.kind in "OSU":  # BYTES: JSON carries text
        try:
            texts = [v.decode() if isinstance(v, bytes) else str(v) for v in array.flat]
        except UnicodeDecodeError:
            raise InvalidInput(
                f"input '{name}' holds bytes that are not UTF-8 text, which a JSON "
                "payload cannot carry"
            ) from None
        return np.array(texts, dtype=object).reshape(array.shape).tolist()
    if not array.dtype.isnative:  # orjson serializes native-order, contiguous arrays
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array)


# -- answers -------------------------------------------------------------------


def decode(
    accept: str,
    body: bytes,
    outputs: list[TensorSpec],
    wanted: list[str],
    response_key: str | None,
) -> dict[str, np.ndarray]:
    """The `wanted` outputs from the endpoint's answer, as the declared
    `outputs` type them; BadAnswer when the answer does not fit."""
    specs = {spec.name: spec for spec in outputs}
    if accept == JSON:
        columns = _json_columns(body, outputs, response_key)
        answer = {}
        for name in wanted:
            if name not in columns:
                raise BadAnswer(f"the answer has no output '{name}' (it has {sorted(columns)[:8]})")
            answer[name] = _from_json(columns[name], specs[name])
        return answer
    spec = outputs[0]
    array = _csv_array(body, spec) if accept == CSV else _npy_array(body)
    return {spec.name: fit(array, spec)}


def _json_columns(
    body: bytes, outputs: list[TensorSpec], response_key: str | None
) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadAnswer(f"the answer is not JSON: {_excerpt(body)!r}") from None
    value = doc
    if response_key is not None:
        if not isinstance(doc, dict) or response_key not in doc:
            found = sorted(doc)[:8] if isinstance(doc, dict) else type(doc).__name__
            raise BadAnswer(f"the answer has no '{response_key}' (json_response_key): {found}")
        value = doc[response_key]
    if len(outputs) == 1 and not (isinstance(value, dict) and outputs[0].name in value):
        return {outputs[0].name: value}
    if isinstance(value, dict):
        return value
    if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
        # TF Serving's row format: one object of outputs per instance.
        columns: dict[str, Any] = {}
        for spec in outputs:
            if all(spec.name in row for row in value):
                columns[spec.name] = [row[spec.name] for row in value]
        return columns
    raise BadAnswer(
        "expected the outputs by name (an object, or a list of one object per "
        f"instance), got {type(value).__name__}"
    )


def _from_json(value: Any, spec: TensorSpec) -> np.ndarray:
    if spec.datatype == "BYTES":
        array = np.array(value, dtype=object)
        if not all(isinstance(v, str) for v in array.flat):
            raise BadAnswer(f"output '{spec.name}': expected strings (BYTES), got other values")
        encoded = np.empty(array.shape, dtype=object)
        encoded.flat[:] = [v.encode() for v in array.flat]
        return fit(encoded, spec)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise BadAnswer(
            f"output '{spec.name}': its nested lists are not a tensor (ragged)"
        ) from None
    return fit(array, spec)


def _csv_array(body: bytes, spec: TensorSpec) -> np.ndarray:
    try:
        rows = [row for row in csv.reader(io.StringIO(body.decode())) if row]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadAnswer(f"the answer is not CSV text: {exc}") from None
    cells: Iterable[Any] = rows
    if len(spec.shape) == 2 and len({len(row) for row in rows}) > 1:
        raise BadAnswer(f"output '{spec.name}': the CSV rows differ in length")
    if len(spec.shape) < 2:
        cells = [cell for row in rows for cell in row]  # one per line, or all on one line
    as_int = NUMPY_DTYPES[spec.datatype].kind in "iu"
    try:
        text = np.char.strip(np.array(cells, dtype=np.str_))
        array = text.astype(np.int64 if as_int else np.float64)
    except (ValueError, OverflowError) as exc:
        kind = "integers" if as_int else "numbers"
        raise BadAnswer(f"output '{spec.name}': the CSV cells are not {kind}: {exc}") from None
    if not spec.shape:
        if array.size != 1:
            raise BadAnswer(f"output '{spec.name}': expected one value, got {array.size}")
        array = array.reshape(())
    return array


def _npy_array(body: bytes) -> np.ndarray:
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise BadAnswer(f"the answer is .npy version {version}, expected 1.0 or 2.0")
    except ValueError as exc:
        raise BadAnswer(f"the answer is not a .npy array: {exc}") from None
    if dtype.hasobject:
        raise BadAnswer("the answer is a .npy of Python objects, which needs pickle (refused)")
    if len(shape) > MAX_RANK:
        raise BadAnswer(f"the answer's .npy has {len(shape)} dimensions")
    declared = math.prod(shape) * dtype.itemsize
    received = len(body) - stream.tell()
    if declared != received:
        raise BadAnswer(
            f"the answer's .npy header declares {format_shape(shape)} {dtype} "
            f"({declared} bytes), {received} bytes follow it"
        )
    try:
        array: np.ndarray = np.load(io.BytesIO(body), allow_pickle=False)
    except ValueError as exc:
        raise BadAnswer(f"the answer is not a readable .npy array: {exc}") from None
    return array


# -- fitting an answer to its declared output ----------------------------------


def fit(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """`array` as `spec`'s datatype when its values fit it without loss (ints
    in range; ints or floats for a float type; booleans for BOOL), and of a
    shape `spec` accepts; BadAnswer otherwise."""
    name, datatype = spec.name, spec.datatype
    if datatype != "BYTES":
        target = NUMPY_DTYPES[datatype]
        kind = array.dtype.kind
        if array.size:
            if target.kind == "b":
                fits = kind == "b"
            elif target.kind in "iu":
                info = np.iinfo(target)
                fits = (
                    kind in "iu" and info.min <= int(array.min()) and int(array.max()) <= info.max
                )
            else:
                fits = kind in "iuf"
            if not fits:
                raise BadAnswer(
                    f"output '{name}': the endpoint answered {_kind_name(array)} values, "
                    f"the backend declares it {spec.describe()}"
                )
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below
            converted = array.astype(target, copy=False)
        # A float64 beyond FP32's (or FP16's) range would come out as inf.
        if (
            target.kind == "f"
            and kind == "f"
            and np.count_nonzero(np.isfinite(converted)) != np.count_nonzero(np.isfinite(array))
        ):
            raise BadAnswer(f"output '{name}': values overflow {datatype}")
        array = converted
    if not spec.accepts(datatype, array.shape):
        raise BadAnswer(
            f"output '{name}': the endpoint answered shape {format_shape(array.shape)}, "
            f"the backend declares it {spec.describe()}"
        )
    return array


def _kind_name(array: np.ndarray) -> str:
    kind = array.dtype.kind
    return {
        "b": "boolean",
        "i": "integer",
        "u": "integer",
        "f": "floating-point",
        "U": "string",
        "S": "string",
    }.get(kind, f"non-numeric ({array.dtype})")


def _excerpt(body: bytes) -> str:
    return body[: _EXCERPT * 4].decode("utf-8", "replace")[:_EXCERPT]
