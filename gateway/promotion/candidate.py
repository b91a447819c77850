"""Which files a promotion swaps, and the first two steps of the gate: the
signature check and the offline evaluation.

A model's versions live side by side: `<dir>/<model>/<version>/model.onnx`.
The backends of the model's route whose `path` is in the serving version's
directory (`models.<name>.version`) are the ones a promotion moves to the
candidate's directory (their `tokenizer.path` too, when the candidate has its
own copy of that file).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gateway.backends.registry import backend_type
from gateway.config.loader import LoadedConfig
from gateway.config.schema import BackendCommon, ModelConfig, Path_
from gateway.core.errors import GatewayError, InvalidInput, NotFound
from gateway.core.signature import compatibility_problems
from gateway.promotion.gate import Evaluation
from gateway.promotion.golden import GateSpec, load_golden, read_manifest
from gateway.runtime import to_signature


@dataclass(frozen=True)
class Plan:
    """What promoting `version` of `model` changes, checked before anything runs."""

    model: str
    version: str
    serving_version: str
    model_dir: Path  # <dir>/<model>: its versions and its lineage file
    candidate_dir: Path
    backends: tuple[str, ...]  # the route's backends serving the serving version's file
    # YAML path in the config file -> the value it gets (as written: relative stays relative).
    rewrites: dict[Path_, str] = field(default_factory=dict)
    spec: GateSpec | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    def candidate_config(self, loaded: LoadedConfig, backend: str) -> BackendCommon:
        """`backend`'s config with its files moved to the candidate's."""
        config = loaded.config.backends[backend]
        update: dict[str, Any] = {"path": self.rewrites[("backends", backend, "path")]}
        tokenizer = getattr(config, "tokenizer", None)
        new_tokenizer = self.rewrites.get(("backends", backend, "tokenizer", "path"))
        if tokenizer is not None and new_tokenizer is not None:
            update["tokenizer"] = tokenizer.model_copy(update={"path": new_tokenizer})
        return config.model_copy(update=update)


def _moved(written: str, version: str) -> str:
    return str(Path(written).parent.parent / version / Path(written).name)


def plan_promotion(loaded: LoadedConfig, model: str, version: str) -> Plan:
    """The promotion of `version` of `model`, or the reason it cannot be done
    (NotFound for what does not exist, InvalidInput for the rest)."""
    config = loaded.config
    entry: ModelConfig | None = config.models.get(model)
    if entry is None:
        raise NotFound(f"unknown model '{model}' (configured: {sorted(config.models)})")
    if entry.kind != "tensor" or entry.signature is None:
        raise InvalidInput(
            f"model '{model}' is of kind '{entry.kind}': the gate promotes tensor models"
        )
    if len(entry.signature.inputs) != 1 or len(entry.signature.outputs) != 1:
        raise InvalidInput(
            f"model '{model}': the gate evaluates models of one input and one output"
        )
    if version == entry.version:
        raise InvalidInput(f"model '{model}' already serves version {version}")
    if loaded.source is None:
        raise InvalidInput("the running config was not read from a file: nothing to promote in")
    raw = yaml.safe_load(loaded.text) or {}
    raw_backends = raw.get("backends") or {}
    backends: list[str] = []
    rewrites: dict[Path_, str] = {}
    serving_dir: Path | None = None
    for name in entry.route.backend_names():
        backend = config.backends[name]
        written = (raw_backends.get(name) or {}).get("path")
        if backend.type != "onnx" or not isinstance(written, str) or "${" in written:
            continue
        resolved = loaded.resolve_path(backend.path)  # type: ignore[attr-defined]  # BackendCommon has no path; onnx configs do (type checked above)
        if resolved.parent.name != entry.version or Path(written).parent.name != entry.version:
            continue
        if serving_dir not in (None, resolved.parent):
            continue  # another copy of the model: left as it is
        serving_dir = resolved.parent
        backends.append(name)
        rewrites[("backends", name, "path")] = _moved(written, version)
        tokenizer = (raw_backends.get(name) or {}).get("tokenizer") or {}
        tokenizer_path = tokenizer.get("path") if isinstance(tokenizer, dict) else None
        if isinstance(tokenizer_path, str) and "${" not in tokenizer_path:
            tokenizer_file = loaded.resolve_path(tokenizer_path)
            candidate_file = serving_dir.parent / version / tokenizer_file.name
            if tokenizer_file.parent == serving_dir and candidate_file.is_file():
                rewrites[("backends", name, "tokenizer", "path")] = _moved(tokenizer_path, version)
    if serving_dir is None:
        raise InvalidInput(
            f"model '{model}': no onnx backend of its route has a path of the form "
            f"<dir>/{model}/{entry.version}/<file> (the serving version's directory) written "
            "without ${VAR}"
        )
    candidate_dir = serving_dir.parent / version
    if not candidate_dir.is_dir():
        raise NotFound(f"model '{model}' has no version directory {candidate_dir}")
    manifest, spec = read_manifest(candidate_dir)
    if str(manifest.get("version")) != version or manifest.get("name") not in (
        None,
        model,
        serving_dir.parent.name,
    ):
        raise InvalidInput(
            f"{candidate_dir / 'model.yaml'} describes {manifest.get('name')} version "
            f"{manifest.get('version')}, not {model} version {version}"
        )
    return Plan(
        model=model,
        version=version,
        serving_version=entry.version,
        model_dir=serving_dir.parent,
        candidate_dir=candidate_dir,
        backends=tuple(backends),
        rewrites=rewrites,
        spec=spec,
        manifest=manifest,
    )


async def _load(name: str, config: BackendCommon, loaded: LoadedConfig) -> Any:
    """A fresh backend of its own (not the serving one: no queue, no metrics of
    live traffic), loaded off the event loop."""
    kind = backend_type(config.type)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, kind.build, name, config, loaded.resolve_path)


async def check_signature(plan: Plan, loaded: LoadedConfig) -> tuple[dict[str, Any], Any]:
    """Load the candidate as the onnx backend type does (its load-time checks)
    and fit it to the model's signature. Returns the numbers and the loaded
    backend (None when refused)."""
    signature = loaded.config.models[plan.model].signature
    assert signature is not None
    backend_name = plan.backends[0]
    config = plan.candidate_config(loaded, backend_name)
    numbers: dict[str, Any] = {"file": str(getattr(config, "path", ""))}
    try:
        backend = await _load(f"{backend_name}.v{plan.version}.gate", config, loaded)
    except Exception as exc:  # noqa: BLE001 - any load failure refuses the candidate
        return {**numbers, "passed": False, "problems": [f"cannot load: {exc}"]}, None
    specs = backend.io_specs()
    problems = compatibility_problems(to_signature(signature), *specs) if specs else []
    if problems:
        await backend.close()
        return {**numbers, "passed": False, "problems": problems}, None
    return {**numbers, "passed": True, "problems": []}, backend


async def evaluate(plan: Plan, loaded: LoadedConfig, candidate: Any) -> Evaluation:
    """Score the serving version and the candidate on the candidate's golden
    set, in process with ONNX Runtime. A version that fails on it scores -inf."""
    assert plan.spec is not None
    signature = loaded.config.models[plan.model].signature
    assert signature is not None
    golden = load_golden(plan.spec, plan.candidate_dir, signature.inputs[0].datatype)
    serving = await _load(
        f"{plan.backends[0]}.v{plan.serving_version}.gate",
        loaded.config.backends[plan.backends[0]],
        loaded,
    )
    feed, output = signature.inputs[0].name, signature.outputs[0].name

    async def score(backend: Any) -> float:
        try:
            answer: dict[str, np.ndarray] = await backend.infer(
                {feed: golden.inputs}, [output], None
            )
        except GatewayError:
            return float("-inf")
        return golden.score(np.asarray(answer[output]))

    try:
        serving_score = await score(serving)
        candidate_score = await score(candidate)
    finally:
        await serving.close()
    return Evaluation(
        metric=golden.metric,
        serving=serving_score,
        candidate=candidate_score,
        max_drop=plan.spec.max_drop,
        samples=golden.samples,
    )
