"""Build the promotion-gate candidates of `digits` and its golden set.

    python models/digits/build_candidates.py

Needs scikit-learn and onnx (the dev or train extra), not torch: each candidate
is a scikit-learn MLPClassifier whose weights are written into a small ONNX
graph with onnx.helper. The data and split are those of build.py (v1), so
every version is scored on the same held-out digits:

- golden/test.npz: v1's held-out test split (load_digits, test_size 0.2,
  stratified, random_state 0), the golden set the candidates' model.yaml name.
  Committed, so the gateway evaluates without scikit-learn.
- 2/: a genuine retrain (128 hidden units, another seed). Passes the gate.
- 3/: trained on 3 images per digit. Its accuracy collapses, so the offline
  evaluation refuses it.
- 4/: version 2's weights plus a branch that multiplies 1024x1024 matrices eight
  times per call and adds 0 times the result, so its answers are exactly
  version 2's. It passes the offline evaluation (which measures quality, not
  speed) and fails live: every call exceeds a latency objective of tens of
  milliseconds, so the canary's latency burn rolls it back. That is the kind
  of regression only a canary catches (a costlier architecture, a missing
  graph optimisation, a slower provider).
"""

from __future__ import annotations

import datetime
import hashlib
import pathlib
import sys
from typing import Any

import numpy as np
import yaml

HERE = pathlib.Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "test.npz"
SEED = 0  # the split's, as build.py records it
TEST_SIZE = 0.2
OPSET = 18
PIXEL_MAX = 16.0
SLOW_SIZE = 1024  # the dummy matrices of version 4
SLOW_MATMULS = 8

CANDIDATES: dict[int, dict[str, Any]] = {
    2: {
        "hidden": 128,
        "seed": 1,
        "per_class": None,
        "slow": False,
        "why": "a genuine retrain: 128 hidden units, seed 1, full training split",
    },
    3: {
        "hidden": 64,
        "seed": 0,
        "per_class": 3,
        "slow": False,
        "why": "deliberately worse: trained on 3 images per digit (30 of 1437)",
    },
    4: {
        "hidden": 128,
        "seed": 1,
        "per_class": None,
        "slow": True,
        "why": (
            f"deliberately slow: version 2's weights plus {SLOW_MATMULS} input-dependent "
            f"{SLOW_SIZE}x{SLOW_SIZE} MatMuls whose result is multiplied by 0; same answers "
            "as version 2, far slower"
        ),
    },
}


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = np.ascontiguousarray(digits.data, dtype=np.float64)
    y = np.ascontiguousarray(digits.target, dtype=np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, stratify=y, random_state=SEED
    )
    return X_train, X_test, y_train, y_test


def train(X: np.ndarray, y: np.ndarray, hidden: int, seed: int, per_class: int | None) -> Any:
    from sklearn.neural_network import MLPClassifier

    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])
        X, y = X[keep], y[keep]
    model = MLPClassifier(
        hidden_layer_sizes=(hidden,), activation="relu", max_iter=400, random_state=seed
    )
    model.fit(X / PIXEL_MAX, y)
    return model


def to_onnx(model: Any, slow: bool) -> bytes:
    """pixels FP32 [N, 64] -> probabilities FP32 [N, 10], scaling inside the graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, w2 = (np.asarray(w, dtype=np.float32) for w in model.coefs_)
    b1, b2 = (np.asarray(b, dtype=np.float32) for b in model.intercepts_)
    inits = [
        numpy_helper.from_array(np.array(PIXEL_MAX, dtype=np.float32), "scale"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        helper.make_node("Div", ["pixels", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w1"], ["h_mm"]),
        helper.make_node("Add", ["h_mm", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["o_mm"]),
        helper.make_node("Add", ["o_mm", "b2"], ["logits"]),
    ]
    logits = "logits"
    if slow:
        # Built from the input so that onnxruntime cannot fold it away when it loads.
        inits += [
            numpy_helper.from_array(np.array(1e-30, dtype=np.float32), "tiny"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array([SLOW_SIZE, SLOW_SIZE], dtype=np.int64), "square"),
        ]
        nodes += [
            helper.make_node("ReduceSum", ["pixels"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "tiny"], ["seed"]),
            helper.make_node("Expand", ["seed", "square"], ["m0"]),
        ]
        for i in range(SLOW_MATMULS):
            nodes.append(helper.make_node("MatMul", [f"m{i}", "m0"], [f"m{i + 1}"]))
        nodes += [
            helper.make_node("ReduceSum", [f"m{SLOW_MATMULS}"], ["waste"], keepdims=0),
            helper.make_node("Mul", ["waste", "zero"], ["nothing"]),
            helper.make_node("Add", ["logits", "nothing"], ["logits_slow"]),
        ]
        logits = "logits_slow"
    nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="models/digits/build_candidates.py",
    )
    proto.ir_version = 10  # what onnxruntime 1.18+ reads
    onnx.checker.check_model(proto, full_check=True)
    return bytes(proto.SerializeToString())


def score(payload: bytes, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probabilities"], {"pixels": X.astype(np.float32)})
    correct = int((probs.argmax(axis=1) == y).sum())
    return {"accuracy": round(correct / len(y), 6), "correct": correct, "n_test": len(y)}


def write_golden(X_test: np.ndarray, y_test: np.ndarray) -> None:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    # Pixels are 0..16 integers: uint8 keeps the file small and exact.
    np.savez_compressed(GOLDEN, X=X_test.astype(np.uint8), y=y_test.astype(np.int64))


def describe(version: int, spec: dict[str, Any], payload: bytes, scored: dict[str, Any]) -> Any:
    import onnx
    import onnxruntime
    import sklearn

    return {
        "name": "digits",
        "version": version,
        "signature": {
            "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        },
        "preprocessing": (
            "Inputs are the raw 0..16 pixel intensities of 8x8 digit images, flattened "
            "row-major to 64 values; scaling (/16) happens inside the graph. Outputs are "
            "softmax probabilities; index i is the probability of digit i."
        ),
        "framework": {
            "scikit_learn": sklearn.__version__,
            "onnx": onnx.__version__,
            "onnx_opset": OPSET,
            "exporter": "onnx.helper from MLPClassifier.coefs_ and intercepts_",
            "onnxruntime_verified_with": onnxruntime.__version__,
        },
        "build": {
            "command": "python models/digits/build_candidates.py",
            "built_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "dataset": {
            "id": "sklearn.datasets.load_digits",
            "split": {
                "method": "sklearn.model_selection.train_test_split",
                "test_size": TEST_SIZE,
                "stratified": True,
                "random_state": SEED,
            },
            "training_samples_per_class": spec["per_class"] or "all",
        },
        "parameters": {
            "model": "sklearn.neural_network.MLPClassifier",
            "hidden_layer_sizes": [spec["hidden"]],
            "activation": "relu",
            "max_iter": 400,
            "random_state": spec["seed"],
            "purpose": spec["why"],
        },
        "evaluation": {"evaluated_with": "onnxruntime CPUExecutionProvider", **scored},
        # What the promotion gate reads (gateway/promotion/, docs/operations.md).
        "promotion": {
            "golden_set": "../golden/test.npz",
            "metric": "accuracy",
            "max_drop": 0.01,
            "agreement": "argmax",
        },
        "artifact": {
            "file": "model.onnx",
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size_bytes": len(payload),
        },
    }


def main() -> int:
    X_train, X_test, y_train, y_test = load_split()
    write_golden(X_test, y_test)
    for version, spec in CANDIDATES.items():
        model = train(X_train, y_train, spec["hidden"], spec["seed"], spec["per_class"])
        payload = to_onnx(model, spec["slow"])
        scored = score(payload, X_test, y_test)
        out = HERE / str(version)
        out.mkdir(exist_ok=True)
        (out / "model.onnx").write_bytes(payload)
        (out / "model.yaml").write_text(
            yaml.safe_dump(describe(version, spec, payload, scored), sort_keys=False)
        )
        print(f"digits v{version}: accuracy {scored['accuracy']:.4f} ({spec['why']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
