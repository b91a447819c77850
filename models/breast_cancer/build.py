"""Train the `breast_cancer` classifier (Keras 3 on torch), export it to ONNX, write model.yaml.

    python models/breast_cancer/build.py [--out models/breast_cancer/1]
    gateway models build breast_cancer      # same thing, through the CLI

Needs the 'train' extra (keras, torch, scikit-learn for the data, onnx). The
data is scikit-learn's bundled copy of the UCI breast cancer Wisconsin
(diagnostic) set, so nothing is downloaded. Keras runs on its torch backend
whatever KERAS_BACKEND says: the ONNX export below is the torch backend's.

Besides model.onnx and model.yaml, the version directory gets parity.npz: the
held-out inputs and Keras's own answers on them, so that a test can check the
served graph against the framework without installing it. What the framework
builds share (checks, parity file, model.yaml layout) is in models/lineage.py.
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

# Run by path, this script has only its own directory on sys.path: the repository
# root makes the shared models/lineage.py importable (see its docstring).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from models import lineage

if TYPE_CHECKING:
    import keras

NAME = "breast_cancer"
VERSION = 1
HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / str(VERSION)

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

SPEC = lineage.Classifier(
    name=NAME,
    version=VERSION,
    framework="Keras",
    input_name=INPUT_NAME,
    label_name=LABEL_NAME,
    probabilities_name=PROBABILITIES_NAME,
    n_features=N_FEATURES,
    n_classes=N_CLASSES,
    # Gates that stop a bad artifact from reaching the serving side.
    min_accuracy=0.9,
    # Keras (torch kernels) and ONNX Runtime compute the same float32 graph; they
    # differ only in the order of float32 sums (about 1e-7), far below this.
    parity_tolerance=1e-5,
    # A label could flip only where both probabilities are 0.5 to float32 precision;
    # none is expected, so none is allowed.
    min_label_agreement=1.0,
    # Odd batch sizes: a batch dim traced as a constant would fail them.
    check_batch_sizes=(1, 37),
)


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
        raise ImportError(f"{lineage.TRAIN_EXTRA_HINT} ({exc})") from exc
    if keras.backend.backend() != KERAS_BACKEND:
        raise RuntimeError(f"keras was imported with the {keras.backend.backend()} backend")


def load_data() -> dict[str, Any]:
    from sklearn.datasets import load_breast_cancer

    return lineage.split_dataset(load_breast_cancer(), test_size=TEST_SIZE, seed=SEED)


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


def framework_answers(model: keras.Model, data: dict[str, Any]) -> dict[str, Any]:
    """Keras's own predictions and held-out metric: the reference for parity."""
    labels, probabilities = model.predict(data["X_test"], batch_size=len(data["X_test"]), verbose=0)
    return lineage.scored(
        np.asarray(probabilities), np.asarray(labels, dtype=np.int64), data["y_test"]
    )


def describe(data: dict[str, Any], contract: dict[str, Any]) -> dict[str, Any]:
    """This build's own parts of model.yaml (lineage.model_yaml lays out the rest)."""
    import keras
    import torch

    return {
        "preprocessing": (
            f"Inputs are the {N_FEATURES} raw measurements of one fine-needle aspirate "
            "image per row, in dataset.feature_names order (as "
            "sklearn.datasets.load_breast_cancer gives them); standardisation (a Keras "
            "Normalization layer adapted on the training split) happens inside the graph. "
            "Outputs: label is the predicted class, 0 = malignant, 1 = benign "
            "(dataset.class_names); probabilities[:, i] is the softmax probability of class i."
        ),
        "framework": lineage.framework_record(
            {
                "keras": keras.__version__,
                "keras_backend": keras.backend.backend(),
                "torch": str(torch.__version__),
                "numpy": np.__version__,
            },
            contract,
        ),
        "dataset": lineage.dataset_record("sklearn.datasets.load_breast_cancer", data),
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
        "framework_evaluated_with": f"keras Model.predict ({KERAS_BACKEND} backend)",
        "parity_reference": (
            "keras Model.predict on the test split (label and probabilities outputs)"
        ),
        "parity_arrays": {
            INPUT_NAME: "X_test, float32, as fed to the graph",
            PROBABILITIES_NAME: "Model.predict(X_test) probabilities, float32",
            LABEL_NAME: "Model.predict(X_test) label, int64",
        },
    }


def build(version_dir: pathlib.Path) -> dict[str, Any]:
    """Train, export and verify; write model.onnx, parity.npz and model.yaml."""
    run = lineage.Run.start(HERE)
    require_train_extra()

    data = load_data()
    model = train_deterministically(data["X_train"], data["y_train"])
    reference = framework_answers(model, data)

    with lineage.staged(version_dir) as scratch:
        exporter = export_onnx(model, scratch / lineage.ONNX_FILE)
        metadata = lineage.finish(
            SPEC, scratch, run, data, reference, exporter, functools.partial(describe, data)
        )
    return metadata


def main(argv: list[str] | None = None) -> int:
    return lineage.main(
        argv, doc=__doc__, default_out=DEFAULT_OUT, build=build, report=lineage.summary("keras")
    )


if __name__ == "__main__":
    sys.exit(main())
