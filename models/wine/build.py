"""Train the `wine` classifier (scikit-learn), convert it with skl2onnx, write model.yaml.

    python models/wine/build.py [--out models/wine/1]
    gateway models build wine          # same thing, through the CLI

Needs the 'train' extra (scikit-learn, skl2onnx, onnx). The data is
scikit-learn's bundled copy of the UCI wine set, so nothing is downloaded.

Besides model.onnx and model.yaml, the version directory gets parity.npz: the
held-out inputs and scikit-learn's own answers on them, so that a test can
check the served graph against the framework without installing it. What the
framework builds share (checks, parity file, model.yaml layout) is in
models/lineage.py.
"""

from __future__ import annotations

import functools
import pathlib
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

# Run by path, this script has only its own directory on sys.path: the repository
# root makes the shared models/lineage.py importable (see its docstring).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from models import lineage

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

NAME = "wine"
VERSION = 1
HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / str(VERSION)

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

SPEC = lineage.Classifier(
    name=NAME,
    version=VERSION,
    framework="scikit-learn",
    input_name=INPUT_NAME,
    label_name=LABEL_NAME,
    probabilities_name=PROBABILITIES_NAME,
    n_features=N_FEATURES,
    n_classes=N_CLASSES,
    # Gates that stop a bad artifact from reaching the serving side.
    min_accuracy=0.9,
    # Probabilities: scikit-learn sums the trees' scores in float64, ONNX Runtime in
    # float32, so they differ by float32 rounding (a few 1e-7), far below this.
    parity_tolerance=1e-5,
    # A label could flip only on a float32 tie; none is expected, so none is allowed.
    min_label_agreement=1.0,
    # ONNX Runtime's tree ensemble takes another path for one row than for many (a
    # row's answer moves by ~1e-12 here), within the parity tolerance.
    check_batch_sizes=(1, 7),
)


def require_train_extra() -> None:
    """Fail early, with the fix in the message, when training deps are absent."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import skl2onnx  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{lineage.TRAIN_EXTRA_HINT} ({exc})") from exc


def load_data() -> dict[str, Any]:
    from sklearn.datasets import load_wine

    return lineage.split_dataset(load_wine(), test_size=TEST_SIZE, seed=SEED)


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
    # skl2onnx lists the opsets in an order that changes from run to run.
    lineage.sort_opsets(model)
    path.write_bytes(model.SerializeToString())
    return {
        "exporter": "skl2onnx.convert_sklearn",
        "exporter_options": {
            "zipmap": False,
            # "" is how skl2onnx spells the default domain.
            "target_opset": {domain or "ai.onnx": v for domain, v in TARGET_OPSET.items()},
        },
    }


def framework_answers(pipeline: Pipeline, data: dict[str, Any]) -> dict[str, Any]:
    """scikit-learn's own predictions and held-out metric: the reference for parity."""
    probabilities = pipeline.predict_proba(data["X_test"])
    labels = pipeline.predict(data["X_test"]).astype(np.int64)
    return lineage.scored(probabilities, labels, data["y_test"])


def describe(data: dict[str, Any], contract: dict[str, Any]) -> dict[str, Any]:
    """This build's own parts of model.yaml (lineage.model_yaml lays out the rest)."""
    import skl2onnx
    import sklearn

    return {
        "preprocessing": (
            f"Inputs are the {N_FEATURES} raw chemical measurements of one wine per row, in "
            "dataset.feature_names order (as sklearn.datasets.load_wine gives them); "
            "standardisation (the StandardScaler fitted on the training split) happens "
            f"inside the graph. Outputs: label is the predicted cultivar, 0..{N_CLASSES - 1} "
            "(dataset.class_names); probabilities[:, i] is the probability of class i."
        ),
        "framework": lineage.framework_record(
            {
                "scikit_learn": sklearn.__version__,
                "skl2onnx": skl2onnx.__version__,
                "numpy": np.__version__,
            },
            contract,
        ),
        "dataset": lineage.dataset_record("sklearn.datasets.load_wine", data),
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
        "framework_evaluated_with": "scikit-learn Pipeline.predict / predict_proba",
        "parity_reference": "scikit-learn Pipeline.predict_proba and .predict on the test split",
        "parity_arrays": {
            INPUT_NAME: "X_test, float32, as fed to the graph",
            PROBABILITIES_NAME: "Pipeline.predict_proba(X_test), float64",
            LABEL_NAME: "Pipeline.predict(X_test), int64",
        },
    }


def build(version_dir: pathlib.Path) -> dict[str, Any]:
    """Train, convert and verify; write model.onnx, parity.npz and model.yaml."""
    run = lineage.Run.start(HERE)
    require_train_extra()

    data = load_data()
    pipeline = train(data["X_train"], data["y_train"])
    reference = framework_answers(pipeline, data)

    with lineage.staged(version_dir) as scratch:
        exporter = export_onnx(pipeline, scratch / lineage.ONNX_FILE)
        metadata = lineage.finish(
            SPEC, scratch, run, data, reference, exporter, functools.partial(describe, data)
        )
    return metadata


def main(argv: list[str] | None = None) -> int:
    return lineage.main(
        argv,
        doc=__doc__,
        default_out=DEFAULT_OUT,
        build=build,
        report=lineage.summary("scikit-learn"),
    )


if __name__ == "__main__":
    sys.exit(main())
