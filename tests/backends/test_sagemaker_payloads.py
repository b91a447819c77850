"""The SageMaker backend's payload mappings (vendors/sagemaker_payloads.py): a
request's tensors as each content type carries them, and an endpoint's answer
back as the declared outputs, refused (BadAnswer) whenever it does not fit."""

from __future__ import annotations

import io
import time

import numpy as np
import orjson
import pytest

from gateway.backends.vendors.sagemaker_payloads import (
    CSV,
    JSON,
    NPY,
    BadAnswer,
    decode,
    encode,
    fit,
    format_problems,
)
from gateway.core.errors import InvalidInput
from gateway.core.signature import TensorSpec

X = np.array([[0.1, 2.0, 3.0], [4.0, 5.0, 6.5]], np.float32)
Y = TensorSpec("y", "FP32", (-1, 3))


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


# -- requests --------------------------------------------------------------------


def test_json_sends_one_input_under_the_request_key_or_bare() -> None:
    assert orjson.loads(encode(JSON, {"x": X}, ["x"], "instances")) == {
        "instances": [[pytest.approx(0.1), 2.0, 3.0], [4.0, 5.0, 6.5]]
    }
    assert orjson.loads(encode(JSON, {"x": X}, ["x"], None))[1] == [4.0, 5.0, 6.5]
    # FP32 goes out as its shortest text: the endpoint reads back the same FP32.
    assert np.float32(orjson.loads(encode(JSON, {"x": X}, ["x"], None))[0][0]) == X[0, 0]


def test_json_sends_several_inputs_by_name_and_text_as_strings() -> None:
    text = np.array([b"caf\xc3\xa9", b"tea"], dtype=object)
    ids = np.array([1, 2], np.int64)
    sent = orjson.loads(encode(JSON, {"ids": ids, "text": text}, ["text", "ids"], "inputs"))
    assert sent == {"inputs": {"text": ["café", "tea"], "ids": [1, 2]}}


def test_json_refuses_bytes_that_are_not_text() -> None:
    with pytest.raises(InvalidInput, match="not UTF-8"):
        encode(JSON, {"t": np.array([b"\xff"], dtype=object)}, ["t"], "instances")


def test_csv_sends_a_line_per_row() -> None:
    assert encode(CSV, {"x": X}, ["x"], None) == b"0.1,2.0,3.0\n4.0,5.0,6.5\n"
    assert encode(CSV, {"x": np.array([1, 2], np.int32)}, ["x"], None) == b"1\n2\n"
    assert encode(CSV, {"x": np.array(7.5)}, ["x"], None) == b"7.5\n"


def test_npy_sends_the_array() -> None:
    sent = np.load(io.BytesIO(encode(NPY, {"x": X}, ["x"], None)), allow_pickle=False)
    assert sent.dtype == np.float32 and np.array_equal(sent, X)


# -- answers: JSON ---------------------------------------------------------------


def test_json_answers_fill_outputs_in_each_framework_shape() -> None:
    values = (X * 2).tolist()
    both = [TensorSpec("y", "FP32", (-1, 3)), TensorSpec("label", "INT64", (-1,))]
    cases = [
        ([Y], orjson.dumps({"predictions": values}), "predictions"),
        ([Y], orjson.dumps(values), None),
        ([Y], orjson.dumps({"predictions": {"y": values}}), "predictions"),
        (both, orjson.dumps({"outputs": {"y": values, "label": [3, 4]}}), "outputs"),
        (
            both,
            orjson.dumps(
                {"predictions": [{"y": values[0], "label": 3}, {"y": values[1], "label": 4}]}
            ),
            "predictions",
        ),
    ]
    for specs, body, key in cases:
        answer = decode(JSON, body, specs, [s.name for s in specs], key)
        assert answer["y"].dtype == np.float32
        assert np.array_equal(answer["y"], X * 2)
        if "label" in answer:
            assert answer["label"].dtype == np.int64 and answer["label"].tolist() == [3, 4]


def test_json_answers_decode_strings_to_bytes() -> None:
    spec = TensorSpec("t", "BYTES", (-1,))
    answer = decode(JSON, b'{"predictions": ["caf\xc3\xa9", "x"]}', [spec], ["t"], "predictions")
    assert answer["t"].tolist() == ["café".encode(), b"x"]


@pytest.mark.parametrize(
    ("body", "specs", "message"),
    [
        (b"<html>oops", [Y], "not JSON"),
        (b'{"outputs": [[1, 2, 3]]}', [Y], "no 'predictions'"),
        (b'{"predictions": [[1, 2, 3], [4, 5]]}', [Y], "ragged"),
        (b'{"predictions": [[1, 2]]}', [Y], r"shape \[1,2\]"),
        (b'{"predictions": [["a", "b", "c"]]}', [Y], "string values"),
        (b'{"predictions": [[1e39, 0, 0]]}', [Y], "overflow FP32"),
        (b'{"predictions": [1.5]}', [TensorSpec("y", "INT32", (-1,))], "floating-point"),
        (b'{"predictions": [3000000000]}', [TensorSpec("y", "INT32", (-1,))], "integer values"),
        (b'{"predictions": [1]}', [TensorSpec("y", "BOOL", (-1,))], "integer values"),
        (b'{"predictions": [null]}', [Y], "non-numeric"),
        (b'{"predictions": [1]}', [TensorSpec("t", "BYTES", (-1,))], "expected strings"),
        (
            b'{"predictions": {"y": [[1, 2, 3]]}}',
            [Y, TensorSpec("z", "FP32", (-1,))],
            "no output 'z'",
        ),
        (b'{"predictions": 7}', [Y, TensorSpec("z", "FP32", (-1,))], "got int"),
    ],
    ids=[
        "not-json",
        "no-key",
        "ragged",
        "shape",
        "strings",
        "overflow",
        "float-for-int",
        "int-out-of-range",
        "int-for-bool",
        "null",
        "number-for-bytes",
        "missing-output",
        "not-by-name",
    ],
)
def test_json_answers_that_do_not_fit_are_refused(
    body: bytes, specs: list[TensorSpec], message: str
) -> None:
    with pytest.raises(BadAnswer, match=message):
        decode(JSON, body, specs, [s.name for s in specs], "predictions")


# -- answers: CSV ----------------------------------------------------------------


def test_csv_answers_a_row_per_line_or_values_in_order() -> None:
    rows = decode(CSV, b"0.2,4,6\n8,10,13\n", [Y], ["y"], None)["y"]
    assert rows.dtype == np.float32 and np.array_equal(rows, X * 2)
    scores = TensorSpec("s", "FP64", (-1,))
    for body in (b"0.5\n0.25\n", b"0.5,0.25\n", b" 0.5 , 0.25"):
        assert decode(CSV, body, [scores], ["s"], None)["s"].tolist() == [0.5, 0.25]
    labels = TensorSpec("l", "INT64", (-1,))
    assert decode(CSV, b"1\n2\n", [labels], ["l"], None)["l"].tolist() == [1, 2]
    one = TensorSpec("v", "FP32", ())
    assert decode(CSV, b"3.5\n", [one], ["v"], None)["v"].shape == ()


@pytest.mark.parametrize(
    ("body", "spec", "message"),
    [
        (b"1,2,3\n4,5\n", Y, "differ in length"),
        (b"1,2,x\n", Y, "not numbers"),
        (b"1.5\n", TensorSpec("l", "INT64", (-1,)), "not integers"),
        (b"1,2\n", TensorSpec("v", "FP32", ()), "one value"),
        (b"\xff\xfe", Y, "not CSV text"),
        (b"1,2,3,4\n", Y, r"shape \[1,4\]"),
    ],
    ids=["ragged", "text", "float-for-int", "scalar", "binary", "columns"],
)
def test_csv_answers_that_do_not_fit_are_refused(
    body: bytes, spec: TensorSpec, message: str
) -> None:
    with pytest.raises(BadAnswer, match=message):
        decode(CSV, body, [spec], [spec.name], None)


# -- answers: npy ----------------------------------------------------------------


def test_npy_answers_are_read_and_cast_to_the_declared_type() -> None:
    answer = decode(NPY, npy((X * 2).astype(np.float64)), [Y], ["y"], None)["y"]
    assert answer.dtype == np.float32 and np.array_equal(answer, X * 2)
    big_endian = decode(
        NPY, npy(np.array([1, 2], ">i4")), [TensorSpec("l", "INT64", (-1,))], ["l"], None
    )
    assert big_endian["l"].tolist() == [1, 2]


def test_an_npy_header_that_lies_about_its_size_is_refused_before_allocating() -> None:
    lying = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        lying, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    started = time.perf_counter()
    with pytest.raises(BadAnswer, match="8000000000000 bytes"):
        decode(NPY, lying.getvalue() + bytes(16), [Y], ["y"], None)
    assert time.perf_counter() - started < 0.5  # refused, not allocated and filled
    with pytest.raises(BadAnswer, match="bytes follow"):
        decode(NPY, npy(X)[:-4], [Y], ["y"], None)  # cut short


def test_npy_of_python_objects_is_refused_without_unpickling() -> None:
    with pytest.raises(BadAnswer, match="pickle"):
        decode(NPY, npy(np.array([{"a": 1}], dtype=object)), [Y], ["y"], None)
    with pytest.raises(BadAnswer, match=r"not a \.npy"):
        decode(NPY, b'{"predictions": []}', [Y], ["y"], None)


# -- fitting and config rules ------------------------------------------------------


def test_fit_keeps_empty_answers_and_checks_fixed_dimensions() -> None:
    assert fit(np.zeros((0, 3)), TensorSpec("y", "INT32", (-1, 3))).dtype == np.int32
    with pytest.raises(BadAnswer, match="FP32 \\[-1,3\\]"):
        fit(np.zeros((2, 4)), Y)


def test_format_problems_name_what_a_content_type_cannot_carry() -> None:
    a, b = TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "FP32", (-1, 3))
    text = TensorSpec("t", "BYTES", (-1,))
    cube = TensorSpec("c", "FP32", (-1, 2, 2))
    assert format_problems(JSON, JSON, [a, b], [a, b], "instances", "predictions") == []
    assert format_problems(JSON, JSON, [text], [text], "instances", "predictions") == []
    assert "exactly one input" in format_problems(CSV, CSV, [a, b], [a], None, None)[0]
    assert "exactly one input" in format_problems(JSON, JSON, [a, b], [a], None, "p")[0]
    assert "exactly one output" in format_problems(JSON, NPY, [a], [a, b], "i", "p")[0]
    assert "pickled" in format_problems(NPY, NPY, [text], [a], None, None)[0]
    assert "rank 2" in format_problems(CSV, CSV, [cube], [a], None, None)[0]
    assert "rank 2" in format_problems(CSV, CSV, [text], [a], None, None)[0]
