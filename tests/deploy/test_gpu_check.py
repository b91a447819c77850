"""deploy/check_gpu_image.py runs only on a GPU machine; what it serves is
checked here, so that it cannot drift from the default config."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from gateway.config.loader import parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_serves_the_default_config_requiring_a_gpu() -> None:
    spec = importlib.util.spec_from_file_location("check_gpu", ROOT / "deploy/check_gpu_image.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.gpu_config()
    loaded = parse_config(text, source=ROOT / "config/gateway.yaml")
    onnx = [b for b in loaded.config.backends.values() if b.type == "onnx"]
    default = yaml.safe_load((ROOT / "config/gateway.yaml").read_text())
    assert len(onnx) == sum(b["type"] == "onnx" for b in default["backends"].values()) >= 1
    assert all(getattr(b, "require_gpu", False) for b in onnx)
    assert set(loaded.config.models) == set(default["models"])
