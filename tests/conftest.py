"""Shared fixtures: real gateway processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.gateway_process import ROOT, GatewayProcess, free_port, start_gateway
from tests.redis_server import redis_server, redis_server_factory

__all__ = ["DIGITS_MODEL", "ROOT", "GatewayProcess", "digits_config", "free_port", "start_gateway"]

DIGITS_MODEL = ROOT / "models" / "digits" / "1" / "model.onnx"


def digits_config(**server: object) -> dict:
    return {
        "server": {"max_request_bytes": 1 << 20, **server},
        "backends": {
            "digits-cpu": {
                "type": "onnx",
                "path": str(DIGITS_MODEL),
                "providers": ["cpu"],
                "max_concurrency": 2,
                "timeout_ms": 5000,
                "intra_op_threads": 1,
            }
        },
        "models": {
            "digits": {
                "version": 1,
                "signature": {
                    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
                    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
                },
                "route": {"strategy": "fallback", "backends": ["digits-cpu"]},
            }
        },
    }


@pytest.fixture(scope="session")
def digits_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = start_gateway(digits_config(), tmp_path_factory.mktemp("digits-gateway"))
    yield gateway
    alive_until_the_end = gateway.process.poll() is None
    gateway.stop()
    assert alive_until_the_end, f"the gateway died during the tests:\n{gateway.logs()}"
