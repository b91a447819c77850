"""Golden sets and the metrics the gate scores on them, and the agreement rule
the canary compares answers with.

A candidate's model.yaml names them in its `promotion` section:

    promotion:
      golden_set: ../golden/test.npz   # relative to the version directory
      metric: accuracy                 # accuracy | paraphrase_margin
      max_drop: 0.01                   # refused if worse than serving by more
      agreement: argmax                # argmax | cosine
      min_cosine: 0.99                 # agreement: cosine

- `accuracy`: an .npz of `X` (the model's input, any numeric dtype) and `y`
  (class indices); the share of rows whose argmax is `y`.
- `paraphrase_margin`: a .jsonl of `{"a": text, "b": text, "paraphrase":
  bool}`; the mean cosine of the paraphrase pairs minus that of the others
  (how well the embedding separates them).

Both read with numpy and the standard library: serving needs no training stack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.core.errors import InvalidInput


class GateSpec(BaseModel):
    """The `promotion` section of a candidate's model.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    golden_set: str
    metric: Literal["accuracy", "paraphrase_margin"]
    max_drop: float = Field(ge=0)
    agreement: Literal["argmax", "cosine"]
    min_cosine: float = Field(0.99, ge=-1, le=1)


def read_manifest(version_dir: Path) -> tuple[dict[str, Any], GateSpec]:
    """A candidate's model.yaml and its `promotion` section."""
    path = version_dir / "model.yaml"
    try:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or "promotion" not in manifest:
        raise InvalidInput(
            f"{path} has no `promotion` section naming the golden set and its threshold"
        )
    try:
        spec = GateSpec.model_validate(manifest["promotion"])
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"{path}: promotion: {problems}") from None
    return manifest, spec


@dataclass(frozen=True)
class GoldenSet:
    """What the model is run on (`inputs`) and what scores its answers."""

    path: Path
    metric: str
    inputs: np.ndarray
    labels: np.ndarray | None = None  # accuracy: the class of each row
    pairs: np.ndarray | None = None  # paraphrase_margin: (a, b, is_paraphrase) indices

    @property
    def samples(self) -> int:
        if self.labels is not None:
            return len(self.labels)
        return 0 if self.pairs is None else len(self.pairs)

    def score(self, outputs: np.ndarray) -> float:
        if self.metric == "accuracy":
            assert self.labels is not None
            return accuracy(outputs, self.labels)
        assert self.pairs is not None
        return paraphrase_margin(outputs, self.pairs)


def load_golden(spec: GateSpec, version_dir: Path, input_datatype: str) -> GoldenSet:
    path = (version_dir / spec.golden_set).resolve()
    try:
        if spec.metric == "accuracy":
            with np.load(path) as data:
                X, y = data["X"], data["y"]
            dtype = np.float32 if input_datatype == "FP32" else None
            return GoldenSet(path, spec.metric, X.astype(dtype) if dtype else X, labels=y)
        texts: dict[str, int] = {}
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            pair = json.loads(line)
            a = texts.setdefault(pair["a"], len(texts))
            b = texts.setdefault(pair["b"], len(texts))
            rows.append((a, b, 1 if pair["paraphrase"] else 0))
    except (OSError, KeyError, ValueError) as exc:
        raise InvalidInput(f"cannot read the golden set {path}: {exc}") from None
    pairs = np.array(rows, dtype=np.int64).reshape(-1, 3)
    if not pairs[:, 2].any() or pairs[:, 2].all():
        raise InvalidInput(f"golden set {path}: needs paraphrase pairs and unrelated pairs")
    inputs = np.array([t.encode() for t in texts], dtype=object)
    return GoldenSet(path, spec.metric, inputs, pairs=pairs)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=-1) == labels).mean())


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.asarray(np.sum(a * b, axis=-1) / np.maximum(norms, 1e-12))


def paraphrase_margin(embeddings: np.ndarray, pairs: np.ndarray) -> float:
    """Mean cosine of the paraphrase pairs minus that of the unrelated pairs."""
    cos = _cosines(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]])
    paraphrase = pairs[:, 2] == 1
    return float(cos[paraphrase].mean() - cos[~paraphrase].mean())


def disagreements(
    rule: str, served: np.ndarray, candidate: np.ndarray, min_cosine: float = 0.99
) -> tuple[int, int]:
    """(rows compared, rows that disagree) of two answers to the same request:
    `argmax` agrees on the predicted class, `cosine` when the rows' cosine is at
    least `min_cosine`. Answers of different shapes disagree on every row."""
    rows = served.shape[0] if served.ndim > 1 else 1
    if served.shape != candidate.shape:
        return rows, rows
    if served.ndim == 1:
        served, candidate = served[None, :], candidate[None, :]
    if rule == "argmax":
        same = served.argmax(axis=-1) == candidate.argmax(axis=-1)
    else:
        same = _cosines(served, candidate) >= min_cosine
    flat = same.reshape(rows, -1).all(axis=1)
    return rows, int(rows - flat.sum())
