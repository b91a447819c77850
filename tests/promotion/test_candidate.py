"""Which files a promotion swaps, the first two steps of the gate (signature
check and offline evaluation, in process with ONNX Runtime on the committed
candidates), the canary's config and the config file edit."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from gateway.config.loader import LoadedConfig, load_config, parse_config
from gateway.core.errors import InvalidInput, NotFound
from gateway.promotion.canary import canary_config, promoted_text
from gateway.promotion.candidate import check_signature, evaluate, plan_promotion
from gateway.promotion.gate import Evaluation
from tests.conftest import ROOT
from tests.promotion.helpers import copy_digits, digits_config

COMMENTED = """\
# the team's config
backends:
  digits-cpu:
    type: onnx
    path: {path}   # the serving version
    providers: [cpu]
models:
  digits:
    description: "8x8 digits"   # no version: it defaults to 1
    signature:
      inputs:  [{{name: pixels, datatype: FP32, shape: [-1, 64]}}]
      outputs: [{{name: probabilities, datatype: FP32, shape: [-1, 10]}}]
    route:
      backends: [digits-cpu]
promotion: {{}}
"""


def loaded_for(tmp_path: Path, text: str | None = None) -> tuple[LoadedConfig, Path]:
    model_dir = copy_digits(tmp_path)
    path = tmp_path / "gateway.yaml"
    if text is None:
        text = yaml.safe_dump(digits_config(model_dir), sort_keys=False)
    path.write_text(text)
    return load_config(path), model_dir


def gate(loaded: LoadedConfig, version: str) -> tuple[dict[str, object], Evaluation | None]:
    async def run() -> tuple[dict[str, object], Evaluation | None]:
        plan = plan_promotion(loaded, "digits", version)
        signature, candidate = await check_signature(plan, loaded)
        if candidate is None:
            return signature, None
        try:
            return signature, await evaluate(plan, loaded, candidate)
        finally:
            await candidate.close()

    return asyncio.run(run())


def test_the_plan_moves_the_serving_backends_files(tmp_path: Path) -> None:
    loaded, model_dir = loaded_for(tmp_path)
    plan = plan_promotion(loaded, "digits", "2")
    assert (plan.serving_version, plan.backends, plan.model_dir) == (
        "1",
        ("digits-cpu",),
        model_dir,
    )
    assert plan.rewrites == {
        ("backends", "digits-cpu", "path"): str(model_dir / "2" / "model.onnx")
    }
    assert plan.spec is not None and plan.spec.metric == "accuracy"


def test_what_cannot_be_promoted_is_refused_with_the_reason(tmp_path: Path) -> None:
    loaded, model_dir = loaded_for(tmp_path)
    with pytest.raises(NotFound, match="unknown model 'dgits'"):
        plan_promotion(loaded, "dgits", "2")
    with pytest.raises(NotFound, match="no version directory"):
        plan_promotion(loaded, "digits", "7")
    with pytest.raises(InvalidInput, match="already serves version 1"):
        plan_promotion(loaded, "digits", "1")
    (model_dir / "5").mkdir()
    (model_dir / "5" / "model.yaml").write_text(
        "name: digits\nversion: 6\npromotion: {golden_set: ../golden/test.npz, metric: accuracy, max_drop: 0.01, agreement: argmax}\n"
    )
    with pytest.raises(InvalidInput, match="not digits version 5"):
        plan_promotion(loaded, "digits", "5")


def test_a_sound_retrain_passes_the_evaluation(tmp_path: Path) -> None:
    loaded, _ = loaded_for(tmp_path)
    signature, evaluation = gate(loaded, "2")
    assert signature["passed"] is True
    assert evaluation is not None and evaluation.passed
    assert (evaluation.serving, evaluation.candidate) == pytest.approx(
        (0.972222, 0.977778), abs=1e-6
    )
    assert evaluation.samples == 360


def test_a_model_trained_on_three_images_a_digit_is_refused(tmp_path: Path) -> None:
    loaded, _ = loaded_for(tmp_path)
    _, evaluation = gate(loaded, "3")
    assert evaluation is not None and not evaluation.passed
    assert evaluation.candidate == pytest.approx(0.841667, abs=1e-6)
    assert evaluation.drop == pytest.approx(0.130556, abs=1e-6)


def test_a_candidate_whose_outputs_break_the_signature_is_refused(tmp_path: Path) -> None:
    loaded, model_dir = loaded_for(tmp_path)
    version = model_dir / "8"
    version.mkdir()
    # Nine classes where the model promises ten.
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["pixels", "w"], ["probabilities"])],
        "nine",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 9])],
        [onnx.numpy_helper.from_array(np.zeros((64, 9), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, version / "model.onnx")
    manifest = yaml.safe_load((model_dir / "2" / "model.yaml").read_text())
    (version / "model.yaml").write_text(yaml.safe_dump({**manifest, "version": 8}))
    signature, evaluation = gate(loaded, "8")
    assert evaluation is None and signature["passed"] is False
    assert "probabilities" in signature["problems"][0]  # type: ignore[index]


def test_the_canary_config_adds_the_candidate_as_a_weighted_variant(tmp_path: Path) -> None:
    loaded, model_dir = loaded_for(tmp_path)
    plan = plan_promotion(loaded, "digits", "2")
    canary = canary_config(loaded, plan, 0.1, "digits-cpu.v2")
    route = canary.config.models["digits"].route
    assert route.strategy == "weighted"
    assert [(b.name, b.weight) for b in route.backends] == [  # type: ignore[union-attr]
        ("digits-cpu", pytest.approx(0.9)),
        ("digits-cpu.v2", 0.1),
    ]
    assert canary.config.backends["digits-cpu.v2"].path == str(model_dir / "2" / "model.onnx")  # type: ignore[attr-defined]
    assert canary.config.backends["digits-cpu"] == loaded.config.backends["digits-cpu"]
    assert canary.source == loaded.source


def test_the_promotion_edits_only_the_promoted_values(tmp_path: Path) -> None:
    model_dir = copy_digits(tmp_path / "m")
    text = COMMENTED.format(path=model_dir / "1" / "model.onnx")
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    loaded = load_config(path)
    plan = plan_promotion(loaded, "digits", "2")
    edited = promoted_text(text, plan)
    expected = text.replace(f"{model_dir}/1/model.onnx", f"{model_dir}/2/model.onnx").replace(
        '    description: "8x8 digits"', '    version: 2\n    description: "8x8 digits"'
    )
    assert edited == expected  # comments and layout kept; the missing version added
    promoted = parse_config(edited, source=path)
    assert promoted.config.models["digits"].version == "2"


def test_the_embedder_is_scored_on_its_paraphrase_pairs(tmp_path: Path) -> None:
    """A candidate embedder (here v1's files again) against the serving one:
    the same margin, the tokenizer moved with the model."""
    source = ROOT / "models" / "embedder"
    model_dir = tmp_path / "models" / "embedder"
    shutil.copytree(source / "golden", model_dir / "golden")
    for version in ("1", "2"):
        (model_dir / version).mkdir()
        for name in ("model.onnx", "tokenizer.json"):
            (model_dir / version / name).symlink_to(source / "1" / name)
    (model_dir / "2" / "model.yaml").write_text(
        "name: embedder\nversion: 2\npromotion: {golden_set: ../golden/pairs.jsonl, "
        "metric: paraphrase_margin, max_drop: 0.02, agreement: cosine}\n"
    )
    config = {
        "backends": {
            "embedder-cpu": {
                "type": "onnx",
                "path": str(model_dir / "1" / "model.onnx"),
                "tokenizer": {"path": str(model_dir / "1" / "tokenizer.json")},
            }
        },
        "models": {
            "embedder": {
                "signature": {
                    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                    "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
                },
                "route": {"backends": ["embedder-cpu"]},
            }
        },
        "promotion": {},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    plan = plan_promotion(loaded, "embedder", "2")
    assert plan.rewrites[("backends", "embedder-cpu", "tokenizer", "path")] == str(
        model_dir / "2" / "tokenizer.json"
    )

    async def run() -> Evaluation:
        _, candidate = await check_signature(plan, loaded)
        assert candidate is not None
        try:
            return await evaluate(plan, loaded, candidate)
        finally:
            await candidate.close()

    evaluation = asyncio.run(run())
    assert evaluation.metric == "paraphrase_margin" and evaluation.samples == 16
    assert evaluation.passed and evaluation.drop == 0.0
    assert evaluation.serving == pytest.approx(0.7556, abs=1e-3)  # paraphrases well apart
