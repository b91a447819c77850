"""Shared by the promotion tests: a private copy of the digits versions (the
gate writes lineage beside them and may rewrite the config), configs, and
traffic drawn from the golden set."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tests.conftest import ROOT

DIGITS = ROOT / "models" / "digits"
ADMIN_KEY_ENV = "PROMOTION_TEST_ADMIN_KEY"
ADMIN_KEY = "promotion-admin-key"
SIGNATURE = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
}


def copy_digits(root: Path) -> Path:
    """models/digits/{1,2,3,4,golden} under `root`; returns the model's directory."""
    target = root / "models" / "digits"
    target.mkdir(parents=True)
    for name in ("1", "2", "3", "4", "golden"):
        shutil.copytree(DIGITS / name, target / name)
    return target


def digits_config(model_dir: Path, **promotion: Any) -> dict[str, Any]:
    """digits version 1 on one backend (an absolute path: the copy, never the
    repository's files), with an SLO and a quick canary."""
    return {
        "server": {"max_request_bytes": 1 << 20, "admin_key_env": ADMIN_KEY_ENV},
        "backends": {
            "digits-cpu": {
                "type": "onnx",
                "path": str(model_dir / "1" / "model.onnx"),
                "providers": ["cpu"],
                "max_concurrency": 2,
                "timeout_ms": 5000,
                "intra_op_threads": 1,
            }
        },
        "models": {
            "digits": {
                "version": 1,
                "signature": SIGNATURE,
                "route": {"backends": ["digits-cpu"]},
                # Version 4 takes ~200 ms a call, the others well under 1 ms.
                "slo": {"latency_ms": 50, "latency_target": 0.9, "availability": 0.99},
            }
        },
        "promotion": {
            "canary_weight": 0.5,
            "watch_s": 1.0,
            "min_requests": 8,
            "max_watch_s": 60,
            "max_burn_rate": 5,
            "max_disagreement": 0.02,
            **promotion,
        },
    }


@cache
def golden() -> tuple[np.ndarray, np.ndarray]:
    with np.load(DIGITS / "golden" / "test.npz") as data:
        return np.asarray(data["X"], dtype=np.float32), np.asarray(data["y"])


def predictions(version: str) -> np.ndarray:
    session = ort.InferenceSession(
        str(DIGITS / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (probabilities,) = session.run(["probabilities"], {"pixels": golden()[0]})
    return np.asarray(np.asarray(probabilities).argmax(axis=1))


def agreed_rows() -> np.ndarray:
    """Golden digits that versions 1 and 2 both classify correctly: live traffic
    on which a sound retrain agrees with the serving version."""
    X, y = golden()
    return np.asarray(X[(predictions("1") == y) & (predictions("2") == y)])


def infer_body(rows: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "FP32",
                    "shape": list(rows.shape),
                    "data": rows.ravel().tolist(),
                }
            ]
        }
    ).encode()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
