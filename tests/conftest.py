"""Shared fixtures: real gateway processes on free loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DIGITS_MODEL = ROOT / "models" / "digits" / "1" / "model.onnx"
START_TIMEOUT_S = 60.0
READY_LINE = b"gateway ready"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class GatewayProcess:
    """A `gateway serve` subprocess; `url` is its HTTP address (host:port)."""

    process: subprocess.Popen[bytes]
    port: int
    output: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def logs(self) -> str:
        return b"".join(self.output).decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_gateway(config: dict, workdir: Path, *extra_args: str) -> GatewayProcess:
    """Write `config`, start a gateway on a free port, return once it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path),
         "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "0", *extra_args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    gateway = GatewayProcess(process, port)
    ready = threading.Event()

    def drain() -> None:
        # Keeps reading for the process's whole life so its pipe never fills.
        assert process.stdout is not None
        for line in process.stdout:
            gateway.output.append(line)
            if READY_LINE in line:
                ready.set()
        ready.set()  # exited: wake the waiter, which then sees the exit code

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(START_TIMEOUT_S) or process.poll() is not None:
        gateway.stop()
        raise RuntimeError(f"gateway did not start (exit {process.returncode}):\n{gateway.logs()}")
    return gateway


def digits_config(**server: object) -> dict:
    return {
        "server": {"max_request_bytes": 1 << 20, **server},
        "backends": {
            "digits-cpu": {
                "type": "onnx", "path": str(DIGITS_MODEL), "providers": ["cpu"],
                "max_concurrency": 2, "timeout_ms": 5000, "intra_op_threads": 1,
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
