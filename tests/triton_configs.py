"""Gateway configs whose models are served by the test Triton server
(testkit/triton_server.py), shared by the triton backend's tests."""

from __future__ import annotations

import copy
from typing import Any

from tests.conftest import digits_config

DIGITS_SIGNATURE = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
}
SLOW_SIGNATURE = {
    "inputs": [
        {"name": "seconds", "datatype": "FP32", "shape": [-1, 1]},
        {"name": "marker", "datatype": "FP32", "shape": [-1, 1]},
    ],
    "outputs": [{"name": "marker", "datatype": "FP32", "shape": [-1, 1]}],
}


def triton_backend(url: str, model: str = "digits", **extra: Any) -> dict[str, Any]:
    return {"type": "triton", "url": url, "model": model, "timeout_ms": 5000, **extra}


def local_digits() -> dict[str, Any]:
    """The suite's local digits backend (tests/conftest.py), as a fallback."""
    backend: dict[str, Any] = digits_config()["backends"]["digits-cpu"]
    return backend


def gateway_config(
    backends: dict[str, dict[str, Any]],
    route: list[str],
    signature: dict[str, Any] = DIGITS_SIGNATURE,
    model: str = "digits",
) -> dict[str, Any]:
    return {
        "server": {"max_request_bytes": 1 << 20},
        "backends": backends,
        "models": {
            model: {
                "version": 1,
                "signature": copy.deepcopy(signature),
                "route": {"strategy": "fallback", "backends": route},
            }
        },
    }
