"""`io_binding: true` (issue 19): runs through ONNX Runtime's IO binding answer
exactly what `session.run` answers, whatever the batch size, for tokenized
text run in chunks, for outputs preallocated and outputs ORT allocates, for
every numeric datatype; graphs it cannot bind are refused at load.

On this machine the binding is on the CPU (the GPU's is checked on a GPU
machine by `make gpu-check --io-binding`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from gateway.backends.base import BackendLoadError
from gateway.backends.onnx import OnnxBackend, OnnxBackendConfig
from gateway.backends.onnx_iobinding import binding_device
from gateway.backends.preprocess import TextTokenizer
from gateway.config.schema import BatchingConfig, TokenizerConfig
from gateway.core.datatypes import NUMPY_DTYPES
from tests.conftest import DIGITS_MODEL, ROOT
from tests.onnx_models import identity_model

EMBEDDER = ROOT / "models" / "embedder" / "1"
TOKENIZER = TokenizerConfig(path=str(EMBEDDER / "tokenizer.json"), max_length=64)
NUMERIC = [dt for dt in NUMPY_DTYPES if dt != "BYTES"]


def backend(path: Path, io_binding: bool, **keys: object) -> OnnxBackend:
    config = OnnxBackendConfig.model_validate(
        {"type": "onnx", "path": str(path), "intra_op_threads": 1, "io_binding": io_binding, **keys}
    )
    tokenizer = None
    if config.tokenizer is not None:
        tokenizer = TextTokenizer(config.tokenizer, Path(config.tokenizer.path))
    return OnnxBackend(path.stem, config, path, tokenizer)


def answers(
    backends: list[OnnxBackend], inputs: list[dict[str, np.ndarray]], outputs: list[str]
) -> list[list[dict[str, np.ndarray]]]:
    """Each backend's answer to each input, through `infer`; the backends are closed."""

    async def run() -> list[list[dict[str, np.ndarray]]]:
        try:
            return [[await b.infer(i, outputs, None) for i in inputs] for b in backends]
        finally:
            for b in backends:
                await b.close()

    return asyncio.run(run())


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def pixels(rows: int) -> dict[str, np.ndarray]:
    return {"pixels": np.random.default_rng(rows).uniform(0, 16, (rows, 64)).astype(np.float32)}


def read_only(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """As the binary tensor decoder gives them: views of the request's bytes."""
    return {
        name: np.frombuffer(value.tobytes(), value.dtype).reshape(value.shape)
        for name, value in inputs.items()
    }


def test_digits_answers_are_those_of_session_run_at_every_batch_size() -> None:
    inputs = [pixels(rows) for rows in (1, 3, 64, 257, 0)] + [read_only(pixels(7))]
    bound, plain = answers(
        [backend(DIGITS_MODEL, True), backend(DIGITS_MODEL, False)], inputs, ["probabilities"]
    )
    for got, expected, given in zip(bound, plain, inputs):
        assert got["probabilities"].shape == (len(given["pixels"]), 10)
        assert_same(got, expected)


def test_each_answer_has_arrays_of_its_own() -> None:
    """Preallocated outputs are never shared: a later run leaves an earlier answer as it was."""
    first, second = pixels(4), pixels(5)
    [[a, b]] = answers([backend(DIGITS_MODEL, True)], [first, second], ["probabilities"])
    [[a_alone]] = answers([backend(DIGITS_MODEL, False)], [first], ["probabilities"])
    assert_same(a, a_alone)
    assert not np.shares_memory(a["probabilities"], b["probabilities"])


def texts(count: int) -> dict[str, np.ndarray]:
    array = np.empty(count, dtype=object)
    array[:] = [
        " ".join(f"word{j}" for j in range(1 + (i * 7) % 40)).encode() for i in range(count)
    ]
    return {"text": array}


def test_tokenized_text_run_in_chunks_answers_as_session_run() -> None:
    keys = {"tokenizer": TOKENIZER.model_dump(), "batching": BatchingConfig(max_batch_size=4)}
    bound_backend = backend(EMBEDDER / "model.onnx", True, **keys)
    assert bound_backend.max_execution_rows == 4
    inputs = [texts(10), texts(3), texts(0)]  # chunks of 4, 4 and 2; one run; no run
    bound, plain = answers(
        [bound_backend, backend(EMBEDDER / "model.onnx", False, **keys)], inputs, ["embedding"]
    )
    for got, expected, given in zip(bound, plain, inputs):
        assert got["embedding"].shape == (len(given["text"]), 384)
        assert_same(got, expected)


def unknown_shapes_model(path: Path) -> Path:
    """x [n, 3] -> `known` [n, 3], `other` [k, 3] (k: no input has it) and
    `unranked` (no shape): only `known` can be allocated before the run."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    outs = [
        helper.make_tensor_value_info("known", TensorProto.FLOAT, ["n", 3]),
        helper.make_tensor_value_info("other", TensorProto.FLOAT, ["k", 3]),
        helper.make_tensor_value_info("unranked", TensorProto.FLOAT, None),
    ]
    nodes = [
        helper.make_node("Identity", ["x"], ["known"]),
        helper.make_node("Neg", ["x"], ["other"]),
        helper.make_node("Abs", ["x"], ["unranked"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "shapes", [x], outs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_outputs_of_unknown_shape_are_left_to_ort_and_answer_the_same(tmp_path: Path) -> None:
    path = unknown_shapes_model(tmp_path / "shapes.onnx")
    inputs = [{"x": np.arange(3 * rows, dtype=np.float32).reshape(rows, 3) - 4} for rows in (1, 5)]
    wanted = ["unranked", "known", "other"]  # any order, any subset
    bound, plain = answers([backend(path, True), backend(path, False)], inputs, wanted)
    for got, expected in zip(bound, plain):
        assert_same(got, expected)
    [[only]] = answers([backend(path, True)], inputs[1:], ["other"])
    assert_same(only, {"other": plain[1]["other"]})


def test_every_numeric_datatype_is_bound_as_it_is(tmp_path: Path) -> None:
    path = identity_model(tmp_path / "identity.onnx", NUMERIC)
    rng = np.random.default_rng(7)
    inputs = {f"in_{dt}": (rng.uniform(0, 100, (4, 3))).astype(NUMPY_DTYPES[dt]) for dt in NUMERIC}
    outputs = [f"out_{dt}" for dt in NUMERIC]
    [[got]], [[expected]] = (
        answers([backend(path, io_binding)], [inputs], outputs) for io_binding in (True, False)
    )
    assert_same(got, expected)
    for dt in NUMERIC:
        np.testing.assert_array_equal(got[f"out_{dt}"], inputs[f"in_{dt}"])


def test_a_graph_with_string_tensors_is_refused_at_load(tmp_path: Path) -> None:
    path = identity_model(tmp_path / "strings.onnx", ["FP32", "BYTES"])
    with pytest.raises(
        BackendLoadError,
        match=r"io_binding: graph input 'in_BYTES' is of type tensor\(string\)",
    ):
        backend(path, True)
    asyncio.run(backend(path, False).close())  # without IO binding it loads


def test_bindings_go_to_the_device_the_session_computes_on() -> None:
    assert binding_device(["CPUExecutionProvider"], 0) == ("cpu", 0)
    assert binding_device(["CUDAExecutionProvider", "CPUExecutionProvider"], 1) == ("cuda", 1)
    trt = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert binding_device(trt, 2) == ("cuda", 2)
