"""Train the `wine` classifier (scikit-learn), convert it with skl2onnx, write model.yaml.

    python models/wine/build.py [--out models/wine/1]
    gateway models build wine          # same thing, through the CLI

Needs the 'train' extra (scikit-learn, skl2onnx, onnx). The data is
scikit-learn's bundled copy of the UCI wine set, so nothing is downloaded.

Besides model.onnx and model.yaml, the version directory gets parity.npz: the
held-out inputs and scikit-learn's own answers on them, so that a test can
check the served graph against the framework without installing it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

NAME = "wine"
VERSION = 1
HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / str(VERSION)
ONNX_FILE = "model.onnx"
YAML_FILE = "model.yaml"
PARITY_FILE = "parity.npz"

INPUT_NAME = "features"
LABEL_NAME = "label"
PROBABILITIES_NAME = "probabilities"
N_FEATURES = 13
N_CLASSES = 3

SEED = 0
TEST_SIZE = 0.2
N_ESTIMATORS = 100
LEARNING_RATE = 0.1
MAX_DEPTH = 3
# Upper bounds: skl2onnx writes the lowest opsets the converted operators need.
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}

# Gates that stop a bad artifact from reaching the serving side.
MIN_ACCURACY = 0.9
# Probabilities: scikit-learn sums the trees' scores in float64, ONNX Runtime in
# float32, so they differ by float32 rounding (a few 1e-7), far below this.
PARITY_TOLERANCE = 1e-5
# A label could flip only on a float32 tie; none is expected, so none is allowed.
MIN_LABEL_AGREEMENT = 1.0
CHECK_BATCH_SIZES = (1, 7)
# Zip entries carry a timestamp; a fixed one keeps parity.npz byte-identical across rebuilds.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

TRAIN_EXTRA_HINT = "the 'train' extra is needed: pip install -e '.[train]'"


def require_train_extra() -> None:
    """Fail early, with the fix in the message, when training deps are absent."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import skl2onnx  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{TRAIN_EXTRA_HINT} ({exc})") from exc


def code_revision(repo: pathlib.Path) -> str:
    """HEAD commit, '+dirty' if the tree has changes; 'unknown' without commits."""

    def git(*args: str) -> str | None:
        try:
            # --no-optional-locks: `status` must not take the index lock while
            # someone else commits in the same checkout.
            done = subprocess.run(
                ["git", "--no-optional-locks", *args],
                cwd=repo,
                capture_output=True,
                text=True,
                check=True,
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
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    wine = load_wine()
    # Hash fixed dtypes so the fingerprint does not depend on platform defaults.
    X = np.ascontiguousarray(wine.data, dtype=np.float64)
    y = np.ascontiguousarray(wine.target, dtype=np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, stratify=y, random_state=SEED
    )
    return {
        "X": X,
        "y": y,
        "feature_names": [str(n) for n in wine.feature_names],
        "class_names": [str(n) for n in wine.target_names],
        # Trained and scored on float32, what the graph is fed, so that the
        # framework's answers and the served ones start from the same numbers.
        "X_train": X_train.astype(np.float32),
        "y_train": y_train,
        "X_test": X_test.astype(np.float32),
        "y_test": y_test,
    }


def train(X: np.ndarray, y: np.ndarray) -> Pipeline:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = GradientBoostingClassifier(
        n_estimators=N_ESTIMATORS,
        learning_rate=LEARNING_RATE,
        max_depth=MAX_DEPTH,
        random_state=SEED,
    )
    # The scaler travels inside the graph, so callers send raw measurements.
    return Pipeline([("scaler", StandardScaler()), ("classifier", classifier)]).fit(X, y)


def export_onnx(pipeline: Pipeline, path: pathlib.Path) -> dict[str, Any]:
    """Convert with skl2onnx; return how, for the lineage."""
    from onnx.helper import make_opsetid
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType

    classifier = pipeline.named_steps["classifier"]
    # zipmap=False: by default probabilities come out as a sequence of maps,
    # which ONNX Runtime returns as Python objects, not a tensor the gateway can serve.
    options = {id(classifier): {"zipmap": False}}
    model = convert_sklearn(
        pipeline,
        # The graph's name defaults to a random uuid: a fixed one keeps the bytes reproducible.
        name=NAME,
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
        final_types=[
            (LABEL_NAME, Int64TensorType([None])),
            (PROBABILITIES_NAME, FloatTensorType([None, N_CLASSES])),
        ],
        options=options,
        target_opset=TARGET_OPSET,
    )
    # skl2onnx lists the opsets in set order, which string hash randomisation
    # changes from run to run: sorted, the bytes are reproducible.
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    model.opset_import.extend(make_opsetid(domain, version) for domain, version in opsets)
    path.write_bytes(model.SerializeToString())
    return {
        "exporter": "skl2onnx.convert_sklearn",
        "exporter_options": {
            "zipmap": False,
            # "" is how skl2onnx spells the default domain.
            "target_opset": {domain or "ai.onnx": v for domain, v in TARGET_OPSET.items()},
        },
    }


def read_contract(path: pathlib.Path) -> dict[str, Any]:
    """Read signature and opsets back from the file: model.yaml describes what was built."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    # Serving copies model.onnx alone; a side-car weights file would be left behind.
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise RuntimeError(f"{path.name} keeps weights in an external data file")

    datatypes = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.INT64: "INT64"}

    def describe_value(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        # Dims without a value (symbolic or unnamed) are the dynamic ones: -1 in the contract.
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        datatype = datatypes.get(tensor.elem_type, str(tensor.elem_type))
        return {"name": value.name, "datatype": datatype, "shape": shape}

    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {
        "signature": {
            "inputs": [describe_value(v) for v in model.graph.input],
            "outputs": [describe_value(v) for v in model.graph.output],
        },
        "opset": opsets.get("ai.onnx"),
        "ml_opset": opsets.get("ai.onnx.ml"),
    }


def expected_signature() -> dict[str, list[dict[str, Any]]]:
    return {
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, N_FEATURES]}],
        "outputs": [
            {"name": LABEL_NAME, "datatype": "INT64", "shape": [-1]},
            {"name": PROBABILITIES_NAME, "datatype": "FP32", "shape": [-1, N_CLASSES]},
        ],
    }


def log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (clipped as scikit-learn does)."""
    eps = float(np.finfo(probabilities.dtype).eps)
    true_class = probabilities[np.arange(len(y)), y].astype(np.float64)
    return float(-np.log(np.clip(true_class, eps, 1.0)).mean())


def framework_answers(pipeline: Pipeline, data: dict[str, Any]) -> dict[str, Any]:
    """scikit-learn's own predictions and held-out metric: the reference for parity."""
    probabilities = pipeline.predict_proba(data["X_test"])
    labels = pipeline.predict(data["X_test"]).astype(np.int64)
    correct = int((labels == data["y_test"]).sum())
    return {
        "probabilities": probabilities,
        "labels": labels,
        "accuracy": correct / len(labels),
        "correct": correct,
        "log_loss": log_loss(probabilities, data["y_test"]),
    }


def verify(path: pathlib.Path, data: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Score the artifact as served (onnxruntime, CPU) and compare it with scikit-learn."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    X_test = data["X_test"]

    def run(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels, probs = session.run([LABEL_NAME, PROBABILITIES_NAME], {INPUT_NAME: X_test[:n]})
        if labels.shape != (n,) or labels.dtype != np.int64:
            raise RuntimeError(f"batch {n}: label is {labels.dtype}{labels.shape}")
        if probs.shape != (n, N_CLASSES) or probs.dtype != np.float32:
            raise RuntimeError(f"batch {n}: probabilities are {probs.dtype}{probs.shape}")
        return labels, probs

    # Odd batch sizes prove the batch dim really is dynamic. A row's answer may move
    # by float32 rounding with its batch (ONNX Runtime's tree ensemble takes another
    # path for one row than for many: ~1e-12 here), no further than the parity tolerance.
    partial = [run(n) for n in CHECK_BATCH_SIZES]
    labels, probs = run(len(X_test))
    batch_diff = 0.0
    for part_labels, part_probs in partial:
        n = len(part_labels)
        batch_diff = max(batch_diff, float(np.abs(part_probs - probs[:n]).max()))
        if not np.array_equal(part_labels, labels[:n]) or batch_diff > PARITY_TOLERANCE:
            raise RuntimeError(f"batch {n}: answers differ from the same rows in a full batch")

    max_abs_diff = float(np.abs(probs.astype(np.float64) - reference["probabilities"]).max())
    if max_abs_diff > PARITY_TOLERANCE:
        raise RuntimeError(f"onnxruntime differs from scikit-learn by {max_abs_diff:.3g}")
    agreement = float((labels == reference["labels"]).mean())
    if agreement < MIN_LABEL_AGREEMENT:
        raise RuntimeError(f"labels agree with scikit-learn on only {agreement:.4f} of rows")

    correct = int((labels == data["y_test"]).sum())
    accuracy = correct / len(labels)
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(f"held-out accuracy {accuracy:.4f} < {MIN_ACCURACY}")
    return {
        "accuracy": accuracy,
        "correct": correct,
        "log_loss": log_loss(probs, data["y_test"]),
        "max_abs_diff": max_abs_diff,
        "label_agreement": agreement,
        "max_abs_diff_across_batch_sizes": batch_diff,
    }


def write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed's format (np.load reads it) with fixed zip timestamps:
    numpy stamps the current time, which would change the file on every rebuild."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def describe(
    data: dict[str, Any],
    contract: dict[str, Any],
    reference: dict[str, Any],
    evaluation: dict[str, Any],
    files: dict[str, bytes],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Assemble model.yaml: everything serving needs, and everything needed to rebuild."""
    import onnx
    import onnxruntime
    import skl2onnx
    import sklearn

    n_train, n_test = len(data["X_train"]), len(data["X_test"])
    payload, parity = files[ONNX_FILE], files[PARITY_FILE]
    return {
        "name": NAME,
        "version": VERSION,
        "signature": contract["signature"],
        "preprocessing": (
            f"Inputs are the {N_FEATURES} raw chemical measurements of one wine per row, in "
            "dataset.feature_names order (as sklearn.datasets.load_wine gives them); "
            "standardisation (the StandardScaler fitted on the training split) happens "
            f"inside the graph. Outputs: label is the predicted cultivar, 0..{N_CLASSES - 1} "
            "(dataset.class_names); probabilities[:, i] is the probability of class i."
        ),
        "framework": {
            "scikit_learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "numpy": np.__version__,
            "onnx": onnx.__version__,
            "onnx_opset": contract["opset"],
            "onnx_ml_opset": contract["ml_opset"],
            **contract["exporter"],
            "onnxruntime_verified_with": onnxruntime.__version__,
        },
        "build": {
            "command": f"gateway models build {NAME}",
            "equivalent": f"python models/{NAME}/build.py",
            **provenance,
        },
        "dataset": {
            "id": "sklearn.datasets.load_wine",
            "scikit_learn": sklearn.__version__,
            "n_samples": len(data["X"]),
            "n_features": N_FEATURES,
            "n_classes": N_CLASSES,
            "feature_names": data["feature_names"],
            "class_names": data["class_names"],
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
            "pipeline": ["StandardScaler", "GradientBoostingClassifier"],
            "scaler": "StandardScaler() (defaults: with_mean, with_std)",
            "classifier": {
                "n_estimators": N_ESTIMATORS,
                "learning_rate": LEARNING_RATE,
                "max_depth": MAX_DEPTH,
                "loss": "log_loss",
                "subsample": 1.0,
                "random_state": SEED,
            },
            "training_dtype": "float32",
            "seed": SEED,
        },
        "evaluation": {
            "evaluated_with": "onnxruntime CPUExecutionProvider",
            "split": "test",
            "accuracy": round(evaluation["accuracy"], 6),
            "correct": evaluation["correct"],
            "log_loss": round(evaluation["log_loss"], 6),
            "n_train": n_train,
            "n_test": n_test,
        },
        "framework_evaluation": {
            "evaluated_with": "scikit-learn Pipeline.predict / predict_proba",
            "split": "test",
            "accuracy": round(reference["accuracy"], 6),
            "correct": reference["correct"],
            "log_loss": round(reference["log_loss"], 6),
        },
        "parity": {
            "file": PARITY_FILE,
            "sha256": sha256_bytes(parity),
            "reference": "scikit-learn Pipeline.predict_proba and .predict on the test split",
            # Each array is named after the tensor it feeds or is compared with.
            "arrays": {
                INPUT_NAME: "X_test, float32, as fed to the graph",
                PROBABILITIES_NAME: "Pipeline.predict_proba(X_test), float64",
                LABEL_NAME: "Pipeline.predict(X_test), int64",
            },
            "n": n_test,
            "tolerance": PARITY_TOLERANCE,
            "max_abs_diff": evaluation["max_abs_diff"],
            "min_label_agreement": MIN_LABEL_AGREEMENT,
            "label_agreement": evaluation["label_agreement"],
            "max_abs_diff_across_batch_sizes": evaluation["max_abs_diff_across_batch_sizes"],
        },
        "artifact": {
            "file": ONNX_FILE,
            "sha256": sha256_bytes(payload),
            "size_bytes": len(payload),
        },
    }


def build(version_dir: pathlib.Path) -> dict[str, Any]:
    """Train, convert and verify; write model.onnx, parity.npz and model.yaml."""
    started = time.monotonic()
    require_train_extra()
    # Taken before anything is written, so our own outputs do not mark the tree dirty.
    revision = code_revision(HERE)
    built_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    data = load_data()
    pipeline = train(data["X_train"], data["y_train"])
    reference = framework_answers(pipeline, data)

    version_dir.mkdir(parents=True, exist_ok=True)
    # Build every file in a scratch dir and swap them in only once every check has
    # passed, so a failed build never leaves a new model.onnx beside a stale model.yaml.
    with tempfile.TemporaryDirectory(dir=version_dir, prefix=".build-") as scratch_dir:
        scratch = pathlib.Path(scratch_dir)
        onnx_path = scratch / ONNX_FILE
        exporter = export_onnx(pipeline, onnx_path)
        contract = {**read_contract(onnx_path), "exporter": exporter}
        if contract["signature"] != expected_signature():
            raise RuntimeError(f"exported {contract['signature']} != {expected_signature()}")
        evaluation = verify(onnx_path, data, reference)
        write_npz(
            scratch / PARITY_FILE,
            {
                INPUT_NAME: data["X_test"],
                PROBABILITIES_NAME: reference["probabilities"],
                LABEL_NAME: reference["labels"],
            },
        )
        provenance = {
            "code_revision": revision,
            "built_at": built_at,
            "duration_seconds": round(time.monotonic() - started, 2),
        }
        files = {name: (scratch / name).read_bytes() for name in (ONNX_FILE, PARITY_FILE)}
        metadata = describe(data, contract, reference, evaluation, files, provenance)
        (scratch / YAML_FILE).write_text(yaml.safe_dump(metadata, sort_keys=False))
        for name in (ONNX_FILE, PARITY_FILE, YAML_FILE):
            os.replace(scratch / name, version_dir / name)
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
    evaluation, parity = metadata["evaluation"], metadata["parity"]
    print(
        f"{NAME} v{VERSION}: accuracy {evaluation['accuracy']:.4f} on {evaluation['n_test']} "
        f"held-out samples (scikit-learn: {metadata['framework_evaluation']['accuracy']:.4f}), "
        f"parity max |diff| {parity['max_abs_diff']:.3g}, labels agree "
        f"{parity['label_agreement']:.4f}, {metadata['artifact']['size_bytes']} bytes, "
        f"{metadata['build']['duration_seconds']} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
