"""One real gateway for the edge tests (issue 14: the edge holds), on HTTP and gRPC.

It serves the default config's models (digits, the embedder on v2 and on
/v1/embeddings) plus every datatype (Identity graphs), an FP32 [-1,-1] model
whose signature fixes no dimension, a cached digits, and a chat model on the
fake vendor. The process runs under an address-space limit (RLIMIT_AS), so a
regression that allocates from a declared shape fails a test (MemoryError:
a 500) instead of taking the machine down, and `Memory` reads its resident
set from /proc: the peak since the baseline is what the tests bound.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.fake_vendor import start_fake_vendor
from testkit.gateway_process import ROOT, GatewayProcess, free_port, start_gateway
from tests.onnx_models import ONNX_ELEMENT, identity_model, passthrough_model

DATATYPES = sorted(ONNX_ELEMENT)
EMBEDDER = ROOT / "models" / "embedder" / "1"
MAX_REQUEST_BYTES = 4 << 20
# Texts per run of the embedder here (config/gateway.yaml: 32): small, so that the
# tests are quick and ONNX Runtime's arena stays small.
EMBEDDER_ROWS = 8
MAX_TEXTS = 128  # tokenizer.max_texts' default
# A text of more than max_length (256) tokens.
EDGE_TEXT = " ".join(f"word{i}" for i in range(300))
# Address space the gateway may map: about 1.1 GB at start, a few GB with all of
# gRPC's threads and ONNX Runtime's arenas; a 2**31-element object array (17 GB) is not.
ADDRESS_SPACE = 8 << 30
VENDOR_KEY_ENV = "EDGE_TEST_VENDOR_KEY"


def edge_config(vendor_url: str, workdir: Path) -> dict:
    identity = identity_model(workdir / "identity.onnx", DATATYPES)
    passthrough = passthrough_model(workdir / "passthrough.onnx")
    spec = lambda side, dt: {"name": f"{side}_{dt}", "datatype": dt, "shape": [-1, 3]}  # noqa: E731
    digits_signature = {
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    text_signature = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
    }
    return {
        "server": {"max_request_bytes": MAX_REQUEST_BYTES},
        "backends": {
            # As in config/gateway.yaml.
            "digits-cpu": {
                "type": "onnx",
                "path": str(ROOT / "models" / "digits" / "1" / "model.onnx"),
                "max_concurrency": 2,
                "timeout_ms": 5000,
                "intra_op_threads": 1,
                "batching": {"max_batch_size": 64, "max_queue_delay_us": 0},
            },
            "embedder-cpu": {
                "type": "onnx",
                "path": str(EMBEDDER / "model.onnx"),
                "max_concurrency": 1,
                "timeout_ms": 30000,
                "tokenizer": {"path": str(EMBEDDER / "tokenizer.json"), "max_length": 256},
                "batching": {"max_batch_size": EMBEDDER_ROWS, "max_queue_delay_us": 2000},
            },
            "identity": {"type": "onnx", "path": str(identity), "max_concurrency": 1},
            "passthrough": {"type": "onnx", "path": str(passthrough), "max_concurrency": 1},
            "vendor": {
                "type": "openai",
                "base_url": f"http://{vendor_url}/v1",
                "api_key_env": VENDOR_KEY_ENV,
                "model": "fake-chat",
                "retries": {"max": 0},
                "circuit_breaker": {"enabled": False},
            },
        },
        "models": {
            "digits": {"signature": digits_signature, "route": {"backends": ["digits-cpu"]}},
            "digits-cached": {
                "signature": digits_signature,
                "route": {"backends": ["digits-cpu"]},
                "cache": {"ttl_s": 60},
            },
            "embedder": {"signature": text_signature, "route": {"backends": ["embedder-cpu"]}},
            "embeddings": {
                "kind": "embeddings",
                "signature": text_signature,
                "route": {"backends": ["embedder-cpu"]},
            },
            "typed": {
                "signature": {
                    "inputs": [spec("in", dt) for dt in DATATYPES],
                    "outputs": [spec("out", dt) for dt in DATATYPES],
                },
                "route": {"backends": ["identity"]},
            },
            "wide": {
                "signature": {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}],
                },
                "route": {"backends": ["passthrough"]},
            },
            "chat": {"kind": "chat", "route": {"backends": ["vendor"]}},
        },
    }


def read_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM... of a process, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key.startswith("Vm"):
                values[key] = int(rest.split()[0]) * 1024
    return values


@dataclass
class EdgeGateway:
    gateway: GatewayProcess
    grpc_port: int

    @property
    def pid(self) -> int:
        return self.gateway.pid

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def alive(self) -> bool:
        return self.gateway.process.poll() is None

    def reset_peak(self) -> int:
        """Start a new peak (VmHWM) at the current resident set; returns it."""
        with open(f"/proc/{self.pid}/clear_refs", "w") as refs:
            refs.write("5")
        return read_status(self.pid)["VmRSS"]

    def peak(self) -> int:
        return read_status(self.pid)["VmHWM"]


@pytest.fixture(scope="session")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeGateway]:
    workdir = tmp_path_factory.mktemp("edge")
    vendor = start_fake_vendor()
    try:
        grpc_port = free_port()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(VENDOR_KEY_ENV, "fake-key")
            gateway = start_gateway(
                edge_config(vendor.url, workdir), workdir, "--grpc-port", str(grpc_port)
            )
        try:
            resource.prlimit(gateway.pid, resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
            yield EdgeGateway(gateway, grpc_port)
        finally:
            alive_until_the_end = gateway.process.poll() is None
            gateway.stop()
        logs = gateway.logs()
        assert alive_until_the_end, f"the gateway died during the tests:\n{logs}"
        assert "this is a gateway bug" not in logs and "Traceback" not in logs, logs
    finally:
        vendor.stop()
