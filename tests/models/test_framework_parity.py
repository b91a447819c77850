"""Models brought in from other frameworks answer as their framework did, checked
without the framework.

Each build (models/<name>/build.py) records the framework's own answers on the
held-out split in models/<name>/<version>/parity.npz: one array per tensor of
the signature, named after it (the inputs as fed, the framework's outputs).
Here ONNX Runtime runs the committed model.onnx on those inputs and must give
those outputs back: float outputs within `parity.tolerance` of model.yaml,
integer outputs (labels) equal on at least `parity.min_label_agreement` of the
rows. Neither scikit-learn nor Keras, torch or Spark is imported to do so.

A new framework model is one more entry in MODELS; the same table drives
test_framework_models_served.py, which serves each through config/gateway.yaml.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / "models"

# (model name, version) of every model brought in from a framework other than
# the one the gateway serves with; its version directory holds model.onnx,
# model.yaml (with a `parity` section) and parity.npz.
MODELS: list[tuple[str, int]] = [
    ("wine", 1),  # scikit-learn pipeline, converted with skl2onnx
    ("breast_cancer", 1),  # Keras 3 on torch, exported with keras' ONNX export
    ("iris-spark", 1),  # Spark MLlib pipeline, converted with onnxmltools
]

# Top-level modules of the training frameworks and converters: the parity check
# must need none of them, so that it runs where only the gateway is installed.
FRAMEWORKS = frozenset(
    {"sklearn", "skl2onnx", "keras", "torch", "tensorflow", "jax", "pyspark", "onnxmltools"}
)
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})


def version_dir(name: str, version: int) -> Path:
    return MODELS_DIR / name / str(version)


def manifest(name: str, version: int) -> dict[str, Any]:
    """The version's model.yaml."""
    loaded: dict[str, Any] = yaml.safe_load((version_dir(name, version) / "model.yaml").read_text())
    return loaded


def recorded(name: str, version: int) -> dict[str, np.ndarray]:
    """The arrays the build recorded: inputs as fed and the framework's outputs."""
    path = version_dir(name, version) / manifest(name, version)["parity"]["file"]
    with np.load(path, allow_pickle=False) as arrays:
        return {key: arrays[key] for key in arrays.files}


def parity_problems(name: str, version: int) -> list[str]:
    """What differs between ONNX Runtime on model.onnx and the recorded framework
    answers, beyond what model.yaml allows; empty when they agree."""
    meta = manifest(name, version)
    parity, signature = meta["parity"], meta["signature"]
    where = version_dir(name, version)
    problems = []

    # The recorded file is the one this build wrote, not a stale or edited copy.
    digest = hashlib.sha256((where / parity["file"]).read_bytes()).hexdigest()
    if digest != parity["sha256"]:
        problems.append(f"{parity['file']}: sha256 {digest}, model.yaml records {parity['sha256']}")

    arrays = recorded(name, version)
    input_names = [s["name"] for s in signature["inputs"]]
    outputs = {s["name"]: s for s in signature["outputs"]}
    unknown = set(arrays) - set(input_names) - set(outputs)
    missing_inputs = set(input_names) - set(arrays)
    compared = [n for n in outputs if n in arrays]
    if unknown or missing_inputs or not compared:
        return [
            *problems,
            f"{parity['file']} holds {sorted(arrays)}: it needs every input "
            f"{input_names} and some output of {sorted(outputs)}, nothing else",
        ]

    session = ort.InferenceSession(str(where / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {n: arrays[n] for n in input_names}
    answers = dict(zip(compared, session.run(compared, feeds)))
    rows = len(next(iter(feeds.values())))
    if rows != parity["n"]:
        problems.append(f"{parity['file']} has {rows} rows, model.yaml says {parity['n']}")

    for output in compared:
        got, expected = answers[output], arrays[output]
        if got.shape != expected.shape:
            problems.append(f"{output}: onnxruntime gives {got.shape}, recorded {expected.shape}")
        elif outputs[output]["datatype"] in FLOAT_DATATYPES:
            diff = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
            if diff > parity["tolerance"]:
                problems.append(
                    f"{output}: max |diff| {diff:.3g} > tolerance {parity['tolerance']}"
                )
        else:
            agreement = float((got == expected).mean())
            if agreement < parity["min_label_agreement"]:
                problems.append(
                    f"{output}: agrees on {agreement:.4f} of rows < "
                    f"min_label_agreement {parity['min_label_agreement']}"
                )
    return problems


@pytest.mark.parametrize(("name", "version"), MODELS, ids=[f"{n}-{v}" for n, v in MODELS])
def test_onnx_runtime_answers_as_the_framework_did(name: str, version: int) -> None:
    assert parity_problems(name, version) == []


@pytest.mark.parametrize(("name", "version"), MODELS, ids=[f"{n}-{v}" for n, v in MODELS])
def test_the_build_recorded_how_it_checked_parity(name: str, version: int) -> None:
    """The figures the build measured are within the bounds it states, so the
    lineage does not promise what it did not meet."""
    parity = manifest(name, version)["parity"]
    assert 0 <= parity["max_abs_diff"] <= parity["tolerance"]
    assert parity["min_label_agreement"] <= parity["label_agreement"] <= 1


def test_the_parity_check_imports_no_framework() -> None:
    # A fresh interpreter: this one may have imported scikit-learn or torch for other tests.
    code = (
        "import json, sys\n"
        "from tests.models.test_framework_parity import MODELS, parity_problems\n"
        "problems = [p for name, version in MODELS for p in parity_problems(name, version)]\n"
        "print(json.dumps({'problems': problems,"
        " 'modules': sorted({m.split('.')[0] for m in sys.modules})}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["problems"] == []
    assert "onnxruntime" in report["modules"]  # it did run the models
    assert FRAMEWORKS.isdisjoint(report["modules"]), sorted(FRAMEWORKS & set(report["modules"]))
