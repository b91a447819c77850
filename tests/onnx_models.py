"""Small ONNX graphs built in the test run (with the `onnx` package), for cases the
shipped models do not cover: every datatype, and backends that break a signature."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

# v2 datatype -> ONNX element type, for every datatype the gateway serves.
ONNX_ELEMENT = {
    "BOOL": TensorProto.BOOL,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def identity_model(path: Path, datatypes: list[str]) -> Path:
    """One Identity per datatype: input `in_<DT>` [batch, 3] -> output `out_<DT>`."""
    nodes, inputs, outputs = [], [], []
    for dt in datatypes:
        elem = ONNX_ELEMENT[dt]
        inputs.append(helper.make_tensor_value_info(f"in_{dt}", elem, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{dt}", elem, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{dt}"], [f"out_{dt}"]))
    return _save(helper.make_graph(nodes, "identity", inputs, outputs), path)


def passthrough_model(path: Path) -> Path:
    """FP32 x [n, m] -> y [n, m], both dims dynamic: lets a test make a backend whose
    answer breaks a narrower signature at run time."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "m"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m"])
    node = helper.make_node("Identity", ["x"], ["y"])
    return _save(helper.make_graph([node], "passthrough", [x], [y]), path)


def slow_model(path: Path, width: int = 256, repeats: int = 64) -> Path:
    """FP32 x [n, width] -> y [n, width] through `repeats` MatMuls with one shared
    weight: its run time grows with n, so a test can hold an execution slot busy."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])
    nodes, previous = [], "x"
    for i in range(repeats):
        out = "y" if i == repeats - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, "w"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes, "slow", [x], [y], initializer=[numpy_helper.from_array(weight, "w")]
    )
    return _save(graph, path)


def rows_lasting(path: Path, width: int, seconds: float) -> int:
    """Rows of a `slow_model` input that keep one ONNX Runtime thread busy for
    about `seconds` on this machine (at least 64), calibrated by a timed run."""
    import time

    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    probe = np.ones((64, width), np.float32)
    session.run(None, {"x": probe})  # warm-up
    started = time.perf_counter()
    session.run(None, {"x": probe})
    return max(64, int(seconds / ((time.perf_counter() - started) / 64)))
