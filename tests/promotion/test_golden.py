"""Golden sets, their metrics and the agreement rule, on numbers worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.core.errors import InvalidInput
from gateway.promotion.golden import (
    GateSpec,
    accuracy,
    disagreements,
    load_golden,
    paraphrase_margin,
    read_manifest,
)
from tests.conftest import ROOT


def test_accuracy_counts_rows_whose_argmax_is_the_label() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert accuracy(probabilities, np.array([0, 1, 1, 1])) == 0.75


def test_the_paraphrase_margin_separates_pairs_from_unrelated_ones() -> None:
    embeddings = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    pairs = np.array([[0, 1, 1], [1, 2, 1], [0, 3, 0], [0, 2, 0]])
    # paraphrases: cos 0.7071 twice; unrelated: -1 and 0
    assert paraphrase_margin(embeddings, pairs) == pytest.approx(0.70711 + 0.5, abs=1e-4)


def test_disagreements_by_argmax_and_by_cosine() -> None:
    served = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]])
    candidate = np.array([[0.8, 0.2], [0.7, 0.3], [0.5, 0.5]])
    assert disagreements("argmax", served, candidate) == (3, 1)
    assert disagreements("cosine", served, candidate, min_cosine=0.99) == (3, 1)
    assert disagreements("cosine", served, candidate, min_cosine=0.5) == (3, 0)
    assert disagreements("argmax", served, candidate[:2]) == (3, 3)  # shapes differ


def test_the_digits_golden_set_is_the_recorded_split() -> None:
    spec = GateSpec(
        golden_set="../golden/test.npz", metric="accuracy", max_drop=0.01, agreement="argmax"
    )
    golden = load_golden(spec, ROOT / "models" / "digits" / "2", "FP32")
    assert golden.inputs.shape == (360, 64) and golden.inputs.dtype == np.float32
    assert golden.samples == 360
    assert np.bincount(golden.labels).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]  # type: ignore[arg-type]
    assert golden.inputs.max() == 16.0


def test_the_embedder_golden_set_holds_both_kinds_of_pairs() -> None:
    spec = GateSpec(
        golden_set="golden/pairs.jsonl",
        metric="paraphrase_margin",
        max_drop=0.02,
        agreement="cosine",
    )
    golden = load_golden(spec, ROOT / "models" / "embedder", "BYTES")
    assert golden.samples == 16
    assert golden.inputs.dtype == object and isinstance(golden.inputs[0], bytes)
    assert golden.pairs is not None and golden.pairs[:, 2].sum() == 8


def test_a_manifest_without_a_promotion_section_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.yaml").write_text("name: digits\nversion: 9\n")
    with pytest.raises(InvalidInput, match="no `promotion` section"):
        read_manifest(tmp_path)
    (tmp_path / "model.yaml").write_text(
        "name: digits\nversion: 9\npromotion: {golden_set: x.npz, metric: recall, max_drop: 0.1, agreement: argmax}\n"
    )
    with pytest.raises(InvalidInput, match="metric"):
        read_manifest(tmp_path)
    manifest, spec = read_manifest(ROOT / "models" / "digits" / "2")
    assert manifest["version"] == 2 and spec.max_drop == 0.01
