"""Train the `breast_cancer` classifier (Keras 3 on torch), export it to ONNX, write model.yaml.

    python models/breast_cancer/build.py [--out models/breast_cancer/1]
    gateway models build breast_cancer      # same thing, through the CLI

Needs the 'train' extra (keras, torch, scikit-learn for the data, onnx). The
data is scikit-learn's bundled copy of the UCI breast cancer Wisconsin
(diagnostic) set, so nothing is downloaded. Keras runs on its torch backend
whatever KERAS_BACKEND says: the ONNX export below is the torch backend's.

Besides model.onnx and model.yaml, the version directory gets parity.npz: the
held-out inputs and Keras's own answers on them, so that a test can check the
served graph against the framework without installing it.
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
import warnings
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    import keras

NAME = "breast_cancer"
VERSION = 1
HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / str(VERSION)
ONNX_FILE = "model.onnx"
YAML_FILE = "model.yaml"
PARITY_FILE = "parity.npz"

KERAS_BACKEND = "torch"
INPUT_NAME = "features"
LABEL_NAME = "label"
PROBABILITIES_NAME = "probabilities"
N_FEATURES = 30
N_CLASSES = 2

SEED = 0
TEST_SIZE = 0.2
HIDDEN = 16
EPOCHS = 100
BATCH_SIZE = 32
LR = 1e-3
OPSET = 18

# Gates that stop a bad artifact from reaching the serving side.
MIN_ACCURACY = 0.9
# Keras (torch kernels) and ONNX Runtime compute the same float32 graph; they
# differ only in the order of float32 sums (about 1e-7), far below this.
PARITY_TOLERANCE = 1e-5
# A label could flip only where both probabilities are 0.5 to float32 precision;
# none is expected, so none is allowed.
MIN_LABEL_AGREEMENT = 1.0
CHECK_BATCH_SIZES = (1, 37)
# Zip entries carry a timestamp; a fixed one keeps parity.npz byte-identical across rebuilds.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

TRAIN_EXTRA_HINT = "the 'train' extra is needed: pip install -e '.[train]'"


def require_train_extra() -> None:
    """Fail early, with the fix in the message, when training deps are absent.

    Keras reads KERAS_BACKEND once, when first imported: it is set before that."""
    os.environ["KERAS_BACKEND"] = KERAS_BACKEND
    try:
        import keras
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import sklearn  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{TRAIN_EXTRA_HINT} ({exc})") from exc
    if keras.backend.backend() != KERAS_BACKEND:
        raise RuntimeError(f"keras was imported with the {keras.backend.backend()} backend")


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
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    cancer = load_breast_cancer()
    # Hash fixed dtypes so the fingerprint does not depend on platform defaults.
    X = np.ascontiguousarray(cancer.data, dtype=np.float64)
    y = np.ascontiguousarray(cancer.target, dtype=np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, stratify=y, random_state=SEED
    )
    return {
        "X": X,
        "y": y,
        "feature_names": [str(n) for n in cancer.feature_names],
        "class_names": [str(n) for n in cancer.target_names],
        "X_train": X_train.astype(np.float32),
        "y_train": y_train,
        "X_test": X_test.astype(np.float32),
        "y_test": y_test,
    }


def train(X: np.ndarray, y: np.ndarray) -> keras.Model:
    """Fit the classifier; return a model with two outputs, [label, probabilities]."""
    import keras

    keras.utils.set_random_seed(SEED)  # Python, numpy and torch generators
    features = keras.Input(shape=(N_FEATURES,), dtype="float32", name=INPUT_NAME)
    # Standardisation is a layer adapted on the training split, so it is part of
    # the exported graph and callers send raw measurements.
    standardize = keras.layers.Normalization(name="standardize")
    standardize.adapt(X)
    hidden = keras.layers.Dense(HIDDEN, activation="relu", name="hidden")(standardize(features))
    probabilities = keras.layers.Dense(N_CLASSES, activation="softmax", name=PROBABILITIES_NAME)(
        hidden
    )
    classifier = keras.Model(features, probabilities, name=NAME)
    classifier.compile(
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss="sparse_categorical_crossentropy",
    )
    classifier.fit(X, y, epochs=EPOCHS, batch_size=BATCH_SIZE, shuffle=True, verbose=0)
    # The label is computed inside the Keras graph too (argmax, as int64 like
    # scikit-learn's labels), so callers need not post-process the probabilities.
    label = keras.ops.cast(keras.ops.argmax(probabilities, axis=-1), "int64")
    return keras.Model(features, [label, probabilities], name=NAME)


def train_deterministically(X: np.ndarray, y: np.ndarray) -> keras.Model:
    import torch

    threads = torch.get_num_threads()
    # One thread keeps float reductions in a fixed order, so reruns give the same weights;
    # restored afterwards because build() may run inside a longer-lived process.
    torch.set_num_threads(1)
    try:
        return train(X, y)
    finally:
        torch.set_num_threads(threads)


def export_onnx(model: keras.Model, path: pathlib.Path) -> dict[str, Any]:
    """Export with Keras's own ONNX export; name the outputs; return how, for the lineage.

    With a dynamic batch dim, Keras's torch backend exports with the TorchScript
    exporter (torch.onnx.export(dynamo=False)); it names the outputs after traced
    values ('38', 'x.27'), so they are renamed to the signature's names afterwards.
    """
    import keras
    import onnx
    import torch

    spec = keras.InputSpec(shape=(None, N_FEATURES), dtype="float32", name=INPUT_NAME)
    with warnings.catch_warnings():
        # The tracer warns that shapes become constants: those are the feature and
        # class dims. verify() runs odd batch sizes to prove the batch dim stays dynamic.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript", category=DeprecationWarning
        )
        model.export(
            str(path), format="onnx", input_signature=[spec], opset_version=OPSET, verbose=False
        )

    graph = onnx.load(str(path))
    outputs = list(graph.graph.output)
    kinds = [(o.type.tensor_type.elem_type, len(o.type.tensor_type.shape.dim)) for o in outputs]
    if kinds != [(onnx.TensorProto.INT64, 1), (onnx.TensorProto.FLOAT, 2)]:
        raise RuntimeError(f"unexpected exported outputs: {[o.name for o in outputs]} {kinds}")
    renames = {outputs[0].name: LABEL_NAME, outputs[1].name: PROBABILITIES_NAME}
    for node in graph.graph.node:
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]
    for value in outputs:
        value.name = renames[value.name]
    # The exporter names the outputs' batch dim after a node ('Cast38_dim_0'):
    # every dynamic dim is the batch here, so they all get the input's name for it.
    for value in [*graph.graph.input, *graph.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_param = "batch"
    onnx.save(graph, str(path))
    return {
        "exporter": (
            "keras.Model.export(format='onnx'), which on the torch backend with a "
            "dynamic batch dim calls torch.onnx.export(dynamo=False), TorchScript-based"
        ),
        "exporter_options": {
            "input_signature": f"InputSpec(shape=(None, {N_FEATURES}), dtype=float32)",
            "opset_version": OPSET,
        },
        "post_export": (
            f"onnx: outputs renamed to {LABEL_NAME!r} and {PROBABILITIES_NAME!r}, "
            "dynamic dims named 'batch'"
        ),
    }


def read_contract(path: pathlib.Path) -> dict[str, Any]:
    """Read signature and opset back from the file: model.yaml describes what was built."""
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
        # Symbolic dims (dim_param) are the dynamic ones; the contract spells them -1.
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        datatype = datatypes.get(tensor.elem_type, str(tensor.elem_type))
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


def framework_answers(model: keras.Model, data: dict[str, Any]) -> dict[str, Any]:
    """Keras's own predictions and held-out metric: the reference for parity."""
    labels, probabilities = model.predict(data["X_test"], batch_size=len(data["X_test"]), verbose=0)
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities)
    correct = int((labels == data["y_test"]).sum())
    return {
        "probabilities": probabilities,
        "labels": labels,
        "accuracy": correct / len(labels),
        "correct": correct,
        "log_loss": log_loss(probabilities, data["y_test"]),
    }


def verify(path: pathlib.Path, data: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Score the artifact as served (onnxruntime, CPU) and compare it with Keras."""
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

    # Odd batch sizes prove the batch dim really is dynamic, not traced as a constant;
    # a row's answer may move by float32 rounding with its batch, no further than parity.
    partial = [run(n) for n in CHECK_BATCH_SIZES]
    labels, probs = run(len(X_test))
    batch_diff = 0.0
    for part_labels, part_probs in partial:
        n = len(part_labels)
        batch_diff = max(batch_diff, float(np.abs(part_probs - probs[:n]).max()))
        if not np.array_equal(part_labels, labels[:n]) or batch_diff > PARITY_TOLERANCE:
            raise RuntimeError(f"batch {n}: answers differ from the same rows in a full batch")

    max_abs_diff = float(np.abs(probs - reference["probabilities"]).max())
    if max_abs_diff > PARITY_TOLERANCE:
        raise RuntimeError(f"onnxruntime differs from Keras by {max_abs_diff:.3g}")
    agreement = float((labels == reference["labels"]).mean())
    if agreement < MIN_LABEL_AGREEMENT:
        raise RuntimeError(f"labels agree with Keras on only {agreement:.4f} of rows")

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
    import keras
    import onnx
    import onnxruntime
    import sklearn
    import torch

    n_train, n_test = len(data["X_train"]), len(data["X_test"])
    payload, parity = files[ONNX_FILE], files[PARITY_FILE]
    return {
        "name": NAME,
        "version": VERSION,
        "signature": contract["signature"],
        "preprocessing": (
            f"Inputs are the {N_FEATURES} raw measurements of one fine-needle aspirate "
            "image per row, in dataset.feature_names order (as "
            "sklearn.datasets.load_breast_cancer gives them); standardisation (a Keras "
            "Normalization layer adapted on the training split) happens inside the graph. "
            "Outputs: label is the predicted class, 0 = malignant, 1 = benign "
            "(dataset.class_names); probabilities[:, i] is the softmax probability of class i."
        ),
        "framework": {
            "keras": keras.__version__,
            "keras_backend": keras.backend.backend(),
            "torch": str(torch.__version__),
            "numpy": np.__version__,
            "onnx": onnx.__version__,
            "onnx_opset": contract["opset"],
            **contract["exporter"],
            "onnxruntime_verified_with": onnxruntime.__version__,
        },
        "build": {
            "command": f"gateway models build {NAME}",
            "equivalent": f"python models/{NAME}/build.py",
            **provenance,
        },
        "dataset": {
            "id": "sklearn.datasets.load_breast_cancer",
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
            "layers": ["Normalization", f"Dense({HIDDEN}, relu)", f"Dense({N_CLASSES}, softmax)"],
            "loss": "sparse_categorical_crossentropy",
            "optimizer": "Adam",
            "lr": LR,
            "epochs": EPOCHS,
            "batch_size": BATCH_SIZE,
            "shuffle": True,
            "training_dtype": "float32",
            "seed": SEED,
            "seeded_with": "keras.utils.set_random_seed; torch.set_num_threads(1) while training",
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
            "evaluated_with": f"keras Model.predict ({KERAS_BACKEND} backend)",
            "split": "test",
            "accuracy": round(reference["accuracy"], 6),
            "correct": reference["correct"],
            "log_loss": round(reference["log_loss"], 6),
        },
        "parity": {
            "file": PARITY_FILE,
            "sha256": sha256_bytes(parity),
            "reference": "keras Model.predict on the test split (label and probabilities outputs)",
            # Each array is named after the tensor it feeds or is compared with.
            "arrays": {
                INPUT_NAME: "X_test, float32, as fed to the graph",
                PROBABILITIES_NAME: "Model.predict(X_test) probabilities, float32",
                LABEL_NAME: "Model.predict(X_test) label, int64",
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
    """Train, export and verify; write model.onnx, parity.npz and model.yaml."""
    started = time.monotonic()
    require_train_extra()
    # Taken before anything is written, so our own outputs do not mark the tree dirty.
    revision = code_revision(HERE)
    built_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    data = load_data()
    model = train_deterministically(data["X_train"], data["y_train"])
    reference = framework_answers(model, data)

    version_dir.mkdir(parents=True, exist_ok=True)
    # Build every file in a scratch dir and swap them in only once every check has
    # passed, so a failed build never leaves a new model.onnx beside a stale model.yaml.
    with tempfile.TemporaryDirectory(dir=version_dir, prefix=".build-") as scratch_dir:
        scratch = pathlib.Path(scratch_dir)
        onnx_path = scratch / ONNX_FILE
        exporter = export_onnx(model, onnx_path)
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
        f"held-out samples (keras: {metadata['framework_evaluation']['accuracy']:.4f}), "
        f"parity max |diff| {parity['max_abs_diff']:.3g}, labels agree "
        f"{parity['label_agreement']:.4f}, {metadata['artifact']['size_bytes']} bytes, "
        f"{metadata['build']['duration_seconds']} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
