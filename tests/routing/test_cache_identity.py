"""What a cached answer is tied to: runtimes built from configs that differ in one
field only, read through `runtime.service.models[name].cache_prefix`.

A field an answer depends on (the model's `version`; an ONNX backend's model
file `path` or `tokenizer`; a vendor backend's `model` or `base_url`) gives
the model another cache prefix, so no answer computed before the change is
served after it (nor by a replica still running the old config through a
shared Redis). Identical configs give equal prefixes, and a change no answer
depends on (a timeout, a description, queue limits) keeps the prefix, so a
reload does not throw the cache away.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from gateway.config.loader import parse_config
from gateway.runtime import build_runtime
from tests.conftest import DIGITS_MODEL, ROOT

TOKENIZER = ROOT / "models" / "embedder" / "1" / "tokenizer.json"
Change = Callable[[dict[str, Any]], None]


def token_model(path: Path) -> Path:
    """A tiny graph a tokenizer feeds: input_ids and attention_mask [n, s] (INT64)
    -> their sum as FP32 `tokens` [n, s]."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "s"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", "s"])
    out = helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["n", "s"])
    nodes = [
        helper.make_node("Add", ["input_ids", "attention_mask"], ["summed"]),
        helper.make_node("Cast", ["summed"], ["tokens"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "tokens", [ids, mask], [out])
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    built.ir_version = 8
    onnx.checker.check_model(built)
    onnx.save(built, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model and tokenizer files, and copies of them under other paths."""
    workdir = tmp_path_factory.mktemp("cache-identity")
    other_model = workdir / "digits-copy.onnx"
    shutil.copyfile(DIGITS_MODEL, other_model)
    other_tokenizer = workdir / "tokenizer-copy.json"
    shutil.copyfile(TOKENIZER, other_tokenizer)
    return {
        "digits": DIGITS_MODEL,
        "digits_copy": other_model,
        "tokens": token_model(workdir / "tokens.onnx"),
        "tokenizer": TOKENIZER,
        "tokenizer_copy": other_tokenizer,
    }


def base_config(files: dict[str, Path]) -> dict[str, Any]:
    return {
        "backends": {
            "digits-cpu": {
                "type": "onnx",
                "path": str(files["digits"]),
                "max_concurrency": 1,
                "intra_op_threads": 1,
                "timeout_ms": 5000,
            },
            "tokens-cpu": {
                "type": "onnx",
                "path": str(files["tokens"]),
                "max_concurrency": 1,
                "intra_op_threads": 1,
                "tokenizer": {"path": str(files["tokenizer"]), "max_length": 64},
            },
            "openai": {
                "type": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "model": "text-embedder-a",
                "timeout_ms": 5000,
            },
            "anthropic": {
                "type": "anthropic",
                "base_url": "http://127.0.0.1:9",
                "model": "chatter-a",
                "timeout_ms": 5000,
            },
        },
        "models": {
            "digits": {
                "version": 1,
                "description": "digits",
                "signature": {
                    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
                    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
                },
                "route": {"backends": ["digits-cpu"]},
                "cache": {"ttl_s": 60},
            },
            "tokens": {
                "signature": {
                    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                    "outputs": [{"name": "tokens", "datatype": "FP32", "shape": [-1, -1]}],
                },
                "route": {"backends": ["tokens-cpu"]},
                "cache": {"ttl_s": 60},
            },
            "embed": {
                "kind": "embeddings",
                "route": {"backends": ["openai"]},
                "cache": {"ttl_s": 60},
            },
            "chat": {
                "kind": "chat",
                "route": {"backends": ["anthropic"]},
                "cache": {"ttl_s": 60},
            },
        },
    }


def prefixes(config: dict[str, Any]) -> dict[str, bytes]:
    """Each model's cache prefix in a runtime built from `config` (then closed)."""
    runtime = build_runtime(parse_config(yaml.safe_dump(config, sort_keys=False), env={}))
    try:
        return {name: entry.cache_prefix for name, entry in runtime.service.models.items()}
    finally:
        asyncio.run(runtime.close())


@pytest.fixture(scope="module")
def base(files: dict[str, Path]) -> Iterator[dict[str, bytes]]:
    yield prefixes(base_config(files))


def changed(files: dict[str, Path], change: Change) -> dict[str, bytes]:
    config = copy.deepcopy(base_config(files))
    change(config)
    return prefixes(config)


def backend(name: str, key: str, value: Any) -> Change:
    return lambda c: c["backends"][name].__setitem__(key, value)


def model(name: str, key: str, value: Any) -> Change:
    return lambda c: c["models"][name].__setitem__(key, value)


def tokenizer(key: str, value: Any) -> Change:
    return lambda c: c["backends"]["tokens-cpu"]["tokenizer"].__setitem__(key, value)


def test_every_model_has_a_prefix_and_no_two_models_share_one(base: dict[str, bytes]) -> None:
    assert set(base) == {"digits", "tokens", "embed", "chat"}
    assert all(base.values())
    assert len(set(base.values())) == len(base)


def test_identical_configs_give_equal_prefixes(
    files: dict[str, Path], base: dict[str, bytes]
) -> None:
    assert prefixes(base_config(files)) == base


# (the model whose prefix must change, the change)
IDENTITY_CHANGES: dict[str, tuple[str, Callable[[dict[str, Path]], Change]]] = {
    "model version": ("digits", lambda f: model("digits", "version", 2)),
    "onnx path": ("digits", lambda f: backend("digits-cpu", "path", str(f["digits_copy"]))),
    "tokenizer path": ("tokens", lambda f: tokenizer("path", str(f["tokenizer_copy"]))),
    "tokenizer max_length": ("tokens", lambda f: tokenizer("max_length", 32)),
    "openai model": ("embed", lambda f: backend("openai", "model", "text-embedder-b")),
    "openai base_url": (
        "embed",
        lambda f: backend("openai", "base_url", "http://127.0.0.1:10/v1"),
    ),
    "anthropic model": ("chat", lambda f: backend("anthropic", "model", "chatter-b")),
    "anthropic base_url": (
        "chat",
        lambda f: backend("anthropic", "base_url", "http://127.0.0.1:10"),
    ),
}


@pytest.mark.parametrize("field", list(IDENTITY_CHANGES))
def test_a_field_the_answer_depends_on_changes_the_prefix(
    files: dict[str, Path], base: dict[str, bytes], field: str
) -> None:
    target, make_change = IDENTITY_CHANGES[field]
    after = changed(files, make_change(files))
    assert after[target] != base[target], f"changing the {field} kept the cache prefix"
    # Only the model that depends on the field is affected.
    assert {n: p for n, p in after.items() if n != target} == {
        n: p for n, p in base.items() if n != target
    }


UNRELATED_CHANGES: dict[str, Change] = {
    "backend timeout_ms": backend("digits-cpu", "timeout_ms", 1234),
    "backend max_queue": backend("digits-cpu", "max_queue", 7),
    "backend max_concurrency": backend("digits-cpu", "max_concurrency", 2),
    "model description": model("digits", "description", "another description"),
    "vendor timeout_ms": backend("openai", "timeout_ms", 999),
    "vendor cost": backend("openai", "cost", {"usd_per_request": 0.5}),
    "chat description": model("chat", "description", "a chat model"),
}


@pytest.mark.parametrize("field", list(UNRELATED_CHANGES))
def test_a_change_no_answer_depends_on_keeps_every_prefix(
    files: dict[str, Path], base: dict[str, bytes], field: str
) -> None:
    assert changed(files, UNRELATED_CHANGES[field]) == base
