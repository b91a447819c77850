"""What the framework classifier builds share: their checks and their model.yaml lineage.

models/wine (scikit-learn), models/breast_cancer (Keras) and models/iris-spark
(Spark MLlib) train differently but hand over the same things: an ONNX classifier
whose signature is [features] -> [label, probabilities]; a check of that file by
onnxruntime against the framework's own answers, which are kept in parity.npz; and
a model.yaml laid out the same way. This module holds that common part: the code
revision (git), the dataset fingerprint and stratified split record, opset imports
in a reproducible order, the contract read back from the graph, the parity check
and file (fixed zip timestamps, so that rebuilds are byte-identical), the
framework-versions block, the model.yaml writer, the staged swap of the version
directory and the command line. Each build.py keeps
what is its framework's own: training, export, the framework's versions, the
preprocessing text and the hyper-parameters.

How a build script imports it: a script runs by path (`python models/<name>/build.py`;
`gateway models build <name>` runs that same command in a subprocess), so only the
script's own directory is on sys.path. Each script puts the repository root in
front of sys.path and then imports `from models import lineage` (models/ has no
__init__.py: it is a namespace package). numpy and PyYAML are imported here at
once; scikit-learn, onnx and onnxruntime only by the functions that use them.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    import onnx

ONNX_FILE = "model.onnx"
YAML_FILE = "model.yaml"
PARITY_FILE = "parity.npz"
# Zip entries carry a timestamp; a fixed one keeps parity.npz byte-identical across rebuilds.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

TRAIN_EXTRA_HINT = "the 'train' extra is needed: pip install -e '.[train]'"


@dataclass(frozen=True)
class Classifier:
    """The graph a build promises to serve, and the gates its artifact must pass."""

    name: str
    version: int
    # The framework as messages name it ("scikit-learn", "Keras", "Spark").
    framework: str
    input_name: str
    label_name: str
    probabilities_name: str
    n_features: int
    n_classes: int
    min_accuracy: float
    # Largest |onnxruntime - framework| allowed on any probability.
    parity_tolerance: float
    min_label_agreement: float
    # Batch sizes checked against the same rows of the full test batch.
    check_batch_sizes: tuple[int, ...]

    def signature(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "inputs": [
                {"name": self.input_name, "datatype": "FP32", "shape": [-1, self.n_features]}
            ],
            "outputs": [
                {"name": self.label_name, "datatype": "INT64", "shape": [-1]},
                {
                    "name": self.probabilities_name,
                    "datatype": "FP32",
                    "shape": [-1, self.n_classes],
                },
            ],
        }


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


@dataclass(frozen=True)
class Run:
    """When a build started and from which code: the provenance in model.yaml's build."""

    started: float
    code_revision: str
    built_at: str

    @classmethod
    def start(cls, repo: pathlib.Path) -> Run:
        # Taken before anything is written, so our own outputs do not mark the tree dirty.
        return cls(
            started=time.monotonic(),
            code_revision=code_revision(repo),
            built_at=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    def provenance(self) -> dict[str, Any]:
        return {
            "code_revision": self.code_revision,
            "built_at": self.built_at,
            "duration_seconds": round(time.monotonic() - self.started, 2),
        }


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_dataset(bunch: Any, *, test_size: float, seed: int) -> dict[str, Any]:
    """A scikit-learn bundled dataset (a Bunch), split with stratification.

    X and y keep fixed dtypes (float64, int64) for the fingerprint; the splits are
    float32, what the graph is fed, so the framework is trained and scored on the
    same numbers the served graph receives. "split" is the record model.yaml keeps.
    """
    from sklearn.model_selection import train_test_split

    # Hash fixed dtypes so the fingerprint does not depend on platform defaults.
    X = np.ascontiguousarray(bunch.data, dtype=np.float64)
    y = np.ascontiguousarray(bunch.target, dtype=np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=seed
    )
    return {
        "X": X,
        "y": y,
        "feature_names": [str(n) for n in bunch.feature_names],
        "class_names": [str(n) for n in bunch.target_names],
        "X_train": X_train.astype(np.float32),
        "y_train": y_train,
        "X_test": X_test.astype(np.float32),
        "y_test": y_test,
        "split": {
            "method": "sklearn.model_selection.train_test_split",
            "test_size": test_size,
            "stratified": True,
            "random_state": seed,
            "n_train": len(X_train),
            "n_test": len(X_test),
        },
    }


def dataset_record(dataset_id: str, data: dict[str, Any], **notes: str) -> dict[str, Any]:
    """model.yaml's dataset: what was loaded, its fingerprint and the split (notes go before it)."""
    import sklearn

    return {
        "id": dataset_id,
        "scikit_learn": sklearn.__version__,
        "n_samples": len(data["X"]),
        "n_features": data["X"].shape[1],
        "n_classes": len(data["class_names"]),
        "feature_names": data["feature_names"],
        "class_names": data["class_names"],
        "sha256_X": sha256_bytes(data["X"].tobytes()),
        "sha256_y": sha256_bytes(data["y"].tobytes()),
        "hashed_as": "C-order bytes of X as float64 and y as int64",
        **notes,
        "split": dict(data["split"]),
    }


def sort_opsets(model: onnx.ModelProto) -> None:
    """Put the graph's opset imports in (domain, version) order, in place.

    skl2onnx and onnxmltools list them in the iteration order of a set of
    (domain, version) pairs, which string hash randomisation changes from run to
    run: sorted, the bytes are reproducible."""
    from onnx.helper import make_opsetid

    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    model.opset_import.extend(make_opsetid(domain, version) for domain, version in opsets)


def read_contract(spec: Classifier, path: pathlib.Path, exporter: dict[str, Any]) -> dict[str, Any]:
    """Signature and opsets read back from the file (model.yaml describes what was built),
    with how it was exported; fails unless the signature is the one promised."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    # Serving copies model.onnx alone; a side-car weights file would be left behind.
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise RuntimeError(f"{path.name} keeps weights in an external data file")

    datatypes = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.INT64: "INT64"}

    def describe_value(value: onnx.ValueInfoProto) -> dict[str, Any]:
        # A map or sequence output would reach the gateway as no tensor at all.
        if not value.type.HasField("tensor_type"):
            raise RuntimeError(f"{value.name} is not a tensor: {value.type}")
        tensor = value.type.tensor_type
        # Dims without a value (symbolic or unnamed) are the dynamic ones: -1 in the contract.
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        datatype = datatypes.get(tensor.elem_type, str(tensor.elem_type))
        return {"name": value.name, "datatype": datatype, "shape": shape}

    signature = {
        "inputs": [describe_value(v) for v in model.graph.input],
        "outputs": [describe_value(v) for v in model.graph.output],
    }
    if signature != spec.signature():
        raise RuntimeError(f"exported {signature} != {spec.signature()}")
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {
        "signature": signature,
        "opset": opsets.get("ai.onnx"),
        # None when the graph uses no ONNX-ML operator.
        "ml_opset": opsets.get("ai.onnx.ml"),
        "exporter": exporter,
    }


def log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (clipped as scikit-learn does)."""
    eps = float(np.finfo(probabilities.dtype).eps)
    true_class = probabilities[np.arange(len(y)), y].astype(np.float64)
    return float(-np.log(np.clip(true_class, eps, 1.0)).mean())


def scored(probabilities: np.ndarray, labels: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """A framework's answers on the test split with its held-out figures: the parity reference."""
    correct = int((labels == y).sum())
    return {
        "probabilities": probabilities,
        "labels": labels,
        "accuracy": correct / len(labels),
        "correct": correct,
        "log_loss": log_loss(probabilities, y),
    }


def verify(
    spec: Classifier,
    path: pathlib.Path,
    data: dict[str, Any],
    reference: dict[str, Any],
    *,
    loss: Callable[[np.ndarray, np.ndarray], float] = log_loss,
    threads: int | None = None,
) -> dict[str, Any]:
    """Score the artifact as served (onnxruntime, CPU) and compare it with the framework.

    reference holds the framework's probabilities and labels on data["X_test"];
    threads, if given, bounds onnxruntime's intra-op threads.
    """
    import onnxruntime as ort

    options = None
    if threads is not None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    X_test, y_test = data["X_test"], data["y_test"]
    outputs = [spec.label_name, spec.probabilities_name]

    def run(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels, probs = session.run(outputs, {spec.input_name: X_test[:n]})
        if labels.shape != (n,) or labels.dtype != np.int64:
            raise RuntimeError(f"batch {n}: {spec.label_name} is {labels.dtype}{labels.shape}")
        if probs.shape != (n, spec.n_classes) or probs.dtype != np.float32:
            raise RuntimeError(
                f"batch {n}: {spec.probabilities_name} is {probs.dtype}{probs.shape}"
            )
        return labels, probs

    # Odd batch sizes prove the batch dim really is dynamic, not fixed at export; a
    # row's answer may move by float32 rounding with its batch (ONNX Runtime may take
    # another path for one row than for many), no further than the parity tolerance.
    partial = [run(n) for n in spec.check_batch_sizes]
    labels, probs = run(len(X_test))
    batch_diff = 0.0
    for part_labels, part_probs in partial:
        n = len(part_labels)
        batch_diff = max(batch_diff, float(np.abs(part_probs - probs[:n]).max()))
        if not np.array_equal(part_labels, labels[:n]) or batch_diff > spec.parity_tolerance:
            raise RuntimeError(f"batch {n}: answers differ from the same rows in a full batch")

    # A float64 reference promotes the float32 answers exactly; a float32 one is
    # compared in float32.
    max_abs_diff = float(np.abs(probs - reference["probabilities"]).max())
    if max_abs_diff > spec.parity_tolerance:
        raise RuntimeError(f"onnxruntime differs from {spec.framework} by {max_abs_diff:.3g}")
    agreement = float((labels == reference["labels"]).mean())
    if agreement < spec.min_label_agreement:
        raise RuntimeError(f"labels agree with {spec.framework} on only {agreement:.4f} of rows")

    correct = int((labels == y_test).sum())
    accuracy = correct / len(labels)
    if accuracy < spec.min_accuracy:
        raise RuntimeError(f"held-out accuracy {accuracy:.4f} < {spec.min_accuracy}")
    return {
        "accuracy": accuracy,
        "correct": correct,
        "log_loss": loss(probs, y_test),
        "max_abs_diff": max_abs_diff,
        "label_agreement": agreement,
        "max_abs_diff_across_batch_sizes": batch_diff,
    }


def write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> bytes:
    """np.savez_compressed's format (np.load reads it) with fixed zip timestamps:
    numpy stamps the current time, which would change the file on every rebuild.
    Returns the bytes written."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def write_parity(
    spec: Classifier, path: pathlib.Path, data: dict[str, Any], reference: dict[str, Any]
) -> bytes:
    """parity.npz: the test inputs as fed to the graph and the framework's answers on
    them, each array named after the tensor it feeds or is compared with."""
    return write_npz(
        path,
        {
            spec.input_name: data["X_test"],
            spec.probabilities_name: reference["probabilities"],
            spec.label_name: reference["labels"],
        },
    )


def framework_record(
    versions: dict[str, Any], contract: dict[str, Any], **notes: Any
) -> dict[str, Any]:
    """model.yaml's framework: the framework's own versions, then onnx's, the opsets
    (ONNX-ML only if used), how it was exported and the onnxruntime that verified it."""
    import onnx
    import onnxruntime

    record = {**versions, "onnx": onnx.__version__, **notes, "onnx_opset": contract["opset"]}
    if contract["ml_opset"] is not None:
        record["onnx_ml_opset"] = contract["ml_opset"]
    return {**record, **contract["exporter"], "onnxruntime_verified_with": onnxruntime.__version__}


def model_yaml(
    spec: Classifier,
    data: dict[str, Any],
    contract: dict[str, Any],
    reference: dict[str, Any],
    evaluation: dict[str, Any],
    files: dict[str, bytes],
    provenance: dict[str, Any],
    *,
    preprocessing: str,
    framework: dict[str, Any],
    dataset: dict[str, Any],
    parameters: dict[str, Any],
    framework_evaluated_with: str,
    parity_reference: str,
    parity_arrays: dict[str, str],
    build_notes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Assemble model.yaml: everything serving needs, and everything needed to rebuild.

    The keyword arguments are the build's own parts; the rest is laid out here."""
    n_train, n_test = data["split"]["n_train"], data["split"]["n_test"]
    payload, parity = files[ONNX_FILE], files[PARITY_FILE]
    return {
        "name": spec.name,
        "version": spec.version,
        "signature": contract["signature"],
        "preprocessing": preprocessing,
        "framework": framework,
        "build": {
            "command": f"gateway models build {spec.name}",
            "equivalent": f"python models/{spec.name}/build.py",
            **(build_notes or {}),
            **provenance,
        },
        "dataset": dataset,
        "parameters": parameters,
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
            "evaluated_with": framework_evaluated_with,
            "split": "test",
            "accuracy": round(reference["accuracy"], 6),
            "correct": reference["correct"],
            "log_loss": round(reference["log_loss"], 6),
        },
        "parity": {
            "file": PARITY_FILE,
            "sha256": sha256_bytes(parity),
            "reference": parity_reference,
            # Each array is named after the tensor it feeds or is compared with.
            "arrays": parity_arrays,
            "n": n_test,
            "tolerance": spec.parity_tolerance,
            "max_abs_diff": evaluation["max_abs_diff"],
            "min_label_agreement": spec.min_label_agreement,
            "label_agreement": evaluation["label_agreement"],
            "max_abs_diff_across_batch_sizes": evaluation["max_abs_diff_across_batch_sizes"],
        },
        "artifact": {
            "file": ONNX_FILE,
            "sha256": sha256_bytes(payload),
            "size_bytes": len(payload),
        },
    }


@contextmanager
def staged(version_dir: pathlib.Path) -> Iterator[pathlib.Path]:
    """A scratch dir inside version_dir; model.onnx, parity.npz and model.yaml move from
    it into version_dir only if the block completes. So a failed build never leaves a
    new model.onnx beside a stale model.yaml."""
    version_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=version_dir, prefix=".build-") as scratch_dir:
        scratch = pathlib.Path(scratch_dir)
        yield scratch
        for name in (ONNX_FILE, PARITY_FILE, YAML_FILE):
            os.replace(scratch / name, version_dir / name)


def finish(
    spec: Classifier,
    scratch: pathlib.Path,
    run: Run,
    data: dict[str, Any],
    reference: dict[str, Any],
    exporter: dict[str, Any],
    describe: Callable[[dict[str, Any]], dict[str, Any]],
    **verify_options: Any,
) -> dict[str, Any]:
    """Check the model.onnx exported into scratch, then write parity.npz and model.yaml
    beside it; return model.yaml's content.

    exporter says how the file was exported (for the framework block); describe is
    given the contract read back from the file and returns the build's own parts of
    model.yaml (model_yaml's keyword arguments); verify_options go to verify().
    """
    onnx_path = scratch / ONNX_FILE
    contract = read_contract(spec, onnx_path, exporter)
    evaluation = verify(spec, onnx_path, data, reference, **verify_options)
    parity = write_parity(spec, scratch / PARITY_FILE, data, reference)
    provenance = run.provenance()
    files = {ONNX_FILE: onnx_path.read_bytes(), PARITY_FILE: parity}
    metadata = model_yaml(
        spec, data, contract, reference, evaluation, files, provenance, **describe(contract)
    )
    (scratch / YAML_FILE).write_text(yaml.safe_dump(metadata, sort_keys=False))
    return metadata


def summary(framework: str) -> Callable[[dict[str, Any], pathlib.Path], str]:
    """The line a build prints: held-out accuracy as served and by the framework, parity, size."""

    def line(metadata: dict[str, Any], out: pathlib.Path) -> str:
        evaluation, parity = metadata["evaluation"], metadata["parity"]
        return (
            f"{metadata['name']} v{metadata['version']}: accuracy "
            f"{evaluation['accuracy']:.4f} on {evaluation['n_test']} held-out samples "
            f"({framework}: {metadata['framework_evaluation']['accuracy']:.4f}), "
            f"parity max |diff| {parity['max_abs_diff']:.3g}, labels agree "
            f"{parity['label_agreement']:.4f}, {metadata['artifact']['size_bytes']} bytes, "
            f"{metadata['build']['duration_seconds']} s -> {out}"
        )

    return line


def main(
    argv: list[str] | None,
    *,
    doc: str,
    default_out: pathlib.Path,
    build: Callable[[pathlib.Path], dict[str, Any]],
    report: Callable[[dict[str, Any], pathlib.Path], str],
) -> int:
    """A build script's command line: [--out DIR]; exit 2 when the train extra is missing."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--out", type=pathlib.Path, default=default_out, help="version directory to write"
    )
    args = parser.parse_args(argv)
    try:
        metadata = build(args.out)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(metadata, args.out))
    return 0
