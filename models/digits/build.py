"""Train the `digits` classifier and write its ONNX artifact plus model.yaml.

    python models/digits/build.py [--out models/digits/1]
    gateway models build digits        # same thing, through the CLI

Needs the 'train' extra (torch, scikit-learn, onnx). The data is
scikit-learn's bundled copy of the UCI digits set, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    import torch

NAME = "digits"
VERSION = 1
HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / str(VERSION)
ONNX_FILE = "model.onnx"
YAML_FILE = "model.yaml"

INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
N_FEATURES = 64
N_CLASSES = 10
# load_digits pixels are counts of set bits in 4x4 blocks, hence 0..16.
PIXEL_MAX = 16.0

SEED = 0
TEST_SIZE = 0.2
HIDDEN = 64
EPOCHS = 40
BATCH_SIZE = 64
LR = 1e-2
OPSET = 18

# Gates that stop a bad artifact from reaching the serving side.
MIN_ACCURACY = 0.95
MAX_ABS_DIFF = 1e-5
CHECK_BATCH_SIZES = (1, 37)

TRAIN_EXTRA_HINT = "the 'train' extra is needed: pip install -e '.[train]'"


def require_train_extra() -> None:
    """Fail early, with the fix in the message, when training deps are absent."""
    try:
        import onnx  # noqa: F401
        import sklearn  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{TRAIN_EXTRA_HINT} ({exc})") from exc


def code_revision(repo: pathlib.Path) -> str:
    """HEAD commit, '+dirty' if the tree has changes; 'unknown' without commits."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    revision = git("rev-parse", "HEAD") or "unknown"
    if git("status", "--porcelain"):
        revision += "+dirty"
    return revision


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_data() -> dict[str, Any]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Hash fixed dtypes so the fingerprint does not depend on platform defaults.
    X = np.ascontiguousarray(digits.data, dtype=np.float64)
    y = np.ascontiguousarray(digits.target, dtype=np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, stratify=y, random_state=SEED
    )
    return {
        "X": X,
        "y": y,
        "X_train": X_train.astype(np.float32),
        "y_train": y_train,
        "X_test": X_test.astype(np.float32),
        "y_test": y_test,
    }


def make_model() -> torch.nn.Module:
    import torch
    from torch import nn

    class DigitsMLP(nn.Module):
        """Raw 0..16 pixels in, class probabilities out, so serving needs no preprocessing."""

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(N_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, N_CLASSES)
            )

        def logits(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.net(pixels / PIXEL_MAX)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.logits(pixels), dim=-1)

    return DigitsMLP()


def train(X: np.ndarray, y: np.ndarray) -> torch.nn.Module:
    import torch

    torch.manual_seed(SEED)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    # Train on logits: cross_entropy fuses log-softmax, which is stabler than log(softmax).
    loss_fn = torch.nn.CrossEntropyLoss()
    inputs, targets = torch.from_numpy(X), torch.from_numpy(y)
    rng = np.random.default_rng(SEED)
    model.train()
    for _ in range(EPOCHS):
        order = torch.from_numpy(rng.permutation(len(X)))
        for batch in order.split(BATCH_SIZE):
            optimizer.zero_grad()
            loss_fn(model.logits(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    return model.eval()


def export_onnx(model: torch.nn.Module, example: np.ndarray, path: pathlib.Path) -> str:
    """Write a single-file ONNX graph with a symbolic batch dim; return the exporter used.

    The TorchScript exporter is used rather than the dynamo one: the latter stamps
    absolute source paths and stack traces into node metadata, so the bytes (and the
    sha256 in model.yaml) would depend on where and how the build ran. torch is pinned
    in the 'train' extra, so its deprecation does not bite until that pin moves.
    """
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript", category=DeprecationWarning
        )
        torch.onnx.export(
            model,
            (torch.from_numpy(example),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return "torch.onnx.export(dynamo=False), TorchScript-based"


def read_contract(path: pathlib.Path) -> dict[str, Any]:
    """Read signature and opset back from the file: model.yaml describes what was built."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    # Serving copies model.onnx alone; a side-car weights file would be left behind.
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise RuntimeError(f"{path.name} keeps weights in an external data file")

    def describe_value(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        # Symbolic dims (dim_param) are the dynamic ones; the contract spells them -1.
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        datatype = {onnx.TensorProto.FLOAT: "FP32"}.get(tensor.elem_type, str(tensor.elem_type))
        return {"name": value.name, "datatype": datatype, "shape": shape}

    return {
        "signature": {
            "inputs": [describe_value(v) for v in model.graph.input],
            "outputs": [describe_value(v) for v in model.graph.output],
        },
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
    }


def expected_signature() -> dict[str, list[dict[str, Any]]]:
    return {
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, N_FEATURES]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, N_CLASSES]}],
    }


def verify(
    model: torch.nn.Module, path: pathlib.Path, X_test: np.ndarray, y_test: np.ndarray
) -> dict[str, Any]:
    """Score the artifact as served (onnxruntime, CPU), not the torch model it came from."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        reference = model(torch.from_numpy(X_test)).numpy()

    def run(n: int) -> tuple[np.ndarray, float]:
        (probs,) = session.run([OUTPUT_NAME], {INPUT_NAME: X_test[:n]})
        if probs.shape != (n, N_CLASSES) or probs.dtype != np.float32:
            raise RuntimeError(f"batch {n}: got {probs.dtype}{probs.shape}")
        return probs, float(np.abs(probs - reference[:n]).max())

    # Odd batch sizes prove the batch dim really is dynamic, not traced as a constant.
    diffs = [run(n)[1] for n in CHECK_BATCH_SIZES]
    probs, full_diff = run(len(X_test))
    max_abs_diff = max(*diffs, full_diff)
    if max_abs_diff > MAX_ABS_DIFF:
        raise RuntimeError(f"onnxruntime differs from torch by {max_abs_diff:.3g}")

    correct = int((probs.argmax(axis=1) == y_test).sum())
    accuracy = correct / len(y_test)
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(f"held-out accuracy {accuracy:.4f} < {MIN_ACCURACY}")
    return {"accuracy": accuracy, "correct": correct, "max_abs_diff": max_abs_diff}


def train_deterministically(X: np.ndarray, y: np.ndarray) -> torch.nn.Module:
    import torch

    threads = torch.get_num_threads()
    # One thread keeps float reductions in a fixed order, so reruns give the same weights;
    # restored afterwards because build() may run inside a longer-lived CLI process.
    torch.set_num_threads(1)
    try:
        return train(X, y)
    finally:
        torch.set_num_threads(threads)


def describe(
    data: dict[str, Any],
    contract: dict[str, Any],
    evaluation: dict[str, Any],
    payload: bytes,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Assemble model.yaml: everything serving needs, and everything needed to rebuild."""
    import onnx
    import onnxruntime
    import sklearn
    import torch

    n_train, n_test = len(data["X_train"]), len(data["X_test"])
    return {
        "name": NAME,
        "version": VERSION,
        "signature": contract["signature"],
        "preprocessing": (
            "Inputs are the raw 0..16 pixel intensities of 8x8 digit images, flattened "
            "row-major to 64 values; scaling (/16) happens inside the graph. Outputs are "
            "softmax probabilities; index i is the probability of digit i."
        ),
        "framework": {
            "torch": str(torch.__version__),
            "onnx_opset": contract["opset"],
            "onnx": onnx.__version__,
            "exporter": contract["exporter"],
            "onnxruntime_verified_with": onnxruntime.__version__,
        },
        "build": {
            "command": f"gateway models build {NAME}",
            "equivalent": "python models/digits/build.py",
            **provenance,
        },
        "dataset": {
            "id": "sklearn.datasets.load_digits",
            "scikit_learn": sklearn.__version__,
            "n_samples": len(data["X"]),
            "n_features": N_FEATURES,
            "n_classes": N_CLASSES,
            "sha256_X": sha256_bytes(data["X"].tobytes()),
            "sha256_y": sha256_bytes(data["y"].tobytes()),
            "hashed_as": "C-order bytes of X as float64 and y as int64",
            "split": {
                "method": "sklearn.model_selection.train_test_split",
                "test_size": TEST_SIZE,
                "stratified": True,
                "random_state": SEED,
                "n_train": n_train,
                "n_test": n_test,
            },
        },
        "parameters": {
            "layers": [N_FEATURES, HIDDEN, N_CLASSES],
            "activation": "relu",
            "output": "softmax",
            "loss": "cross_entropy",
            "optimizer": "Adam",
            "lr": LR,
            "epochs": EPOCHS,
            "batch_size": BATCH_SIZE,
            "seed": SEED,
        },
        "evaluation": {
            "evaluated_with": "onnxruntime CPUExecutionProvider",
            "split": "test",
            "accuracy": round(evaluation["accuracy"], 6),
            "correct": evaluation["correct"],
            "n_train": n_train,
            "n_test": n_test,
            "max_abs_diff_torch_vs_onnxruntime": evaluation["max_abs_diff"],
        },
        "artifact": {
            "file": ONNX_FILE,
            "sha256": sha256_bytes(payload),
            "size_bytes": len(payload),
        },
    }


def build(version_dir: pathlib.Path) -> dict[str, Any]:
    """Train, export and verify; write model.onnx and model.yaml; return the metadata."""
    started = time.monotonic()
    require_train_extra()
    # Taken before anything is written, so our own outputs do not mark the tree dirty.
    revision = code_revision(HERE)
    built_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    data = load_data()
    model = train_deterministically(data["X_train"], data["y_train"])

    version_dir.mkdir(parents=True, exist_ok=True)
    # Build both files in a scratch dir and swap them in only once every check has
    # passed, so a failed build never leaves a new model.onnx beside a stale model.yaml.
    with tempfile.TemporaryDirectory(dir=version_dir, prefix=".build-") as scratch:
        onnx_path = pathlib.Path(scratch) / ONNX_FILE
        exporter = export_onnx(model, data["X_train"][:8], onnx_path)
        contract = {**read_contract(onnx_path), "exporter": exporter}
        if contract["signature"] != expected_signature():
            raise RuntimeError(f"exported {contract['signature']} != {expected_signature()}")
        evaluation = verify(model, onnx_path, data["X_test"], data["y_test"])
        provenance = {
            "code_revision": revision,
            "built_at": built_at,
            "duration_seconds": round(time.monotonic() - started, 2),
        }
        metadata = describe(data, contract, evaluation, onnx_path.read_bytes(), provenance)
        yaml_path = pathlib.Path(scratch) / YAML_FILE
        yaml_path.write_text(yaml.safe_dump(metadata, sort_keys=False))
        os.replace(onnx_path, version_dir / ONNX_FILE)
        os.replace(yaml_path, version_dir / YAML_FILE)
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=pathlib.Path, default=DEFAULT_OUT, help="version directory to write"
    )
    args = parser.parse_args(argv)
    try:
        metadata = build(args.out)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    evaluation = metadata["evaluation"]
    print(
        f"{NAME} v{VERSION}: accuracy {evaluation['accuracy']:.4f} on {evaluation['n_test']} "
        f"held-out samples, {metadata['artifact']['size_bytes']} bytes, "
        f"{metadata['build']['duration_seconds']} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
