"""The `make run` path: the runtime dependencies alone serve the default config.

`make test` builds .venv-runtime from requirements/runtime.txt (no extras) in a
fresh virtualenv; these tests import every module of the package with it and
serve config/gateway.yaml from it, called by the clients users use (from the
dev environment). A module that imports an undeclared package, or a runtime
dependency that breaks start-up, fails here even when the dev extras would
have hidden it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from packaging.utils import canonicalize_name
from sklearn.datasets import load_digits

from testkit.gateway_process import READY_LINE, ROOT, GatewayProcess, free_port, start_server
from tests.lockfiles import locked_versions

RUNTIME_VENV = ROOT / ".venv-runtime"
RUNTIME_PY = RUNTIME_VENV / "bin" / "python"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
# What a virtualenv holds besides the lock: the installer, the locked build
# backend, and the project itself.
NOT_FROM_THE_RUNTIME_LOCK = {"pip", "setuptools", "inference-gateway"}


def _require_runtime_venv() -> None:
    stamp = RUNTIME_VENV / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < RUNTIME_LOCK.stat().st_mtime:
        pytest.fail(
            f"{RUNTIME_VENV} is missing or older than {RUNTIME_LOCK.name}: "
            "`make test` builds it (make .venv-runtime/.installed)"
        )


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)


def test_the_runtime_venv_holds_the_runtime_lock_and_nothing_else() -> None:
    _require_runtime_venv()
    listed = _run(str(RUNTIME_PY), "-m", "pip", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed.stdout)}
    locked = locked_versions(RUNTIME_LOCK)
    extra = sorted(set(installed) - set(locked) - NOT_FROM_THE_RUNTIME_LOCK)
    assert not extra, f"not in the runtime lock: {extra}"
    assert {n: installed.get(n) for n in locked} == locked


def test_every_module_imports_with_the_runtime_dependencies_alone() -> None:
    _require_runtime_venv()
    script = (
        "import importlib, pkgutil, gateway\n"
        "bad = []\n"
        "for m in pkgutil.walk_packages(gateway.__path__, 'gateway.'):\n"
        "    if m.name == 'gateway.__main__':\n"
        "        continue  # runs the command line\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except BaseException as e:\n"
        "        bad.append(f'{m.name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(bad))\n"
        "print(len(list(pkgutil.walk_packages(gateway.__path__, 'gateway.'))), 'modules')\n"
    )
    result = _run(str(RUNTIME_PY), "-c", script)
    assert result.returncode == 0, result.stderr
    *failures, count = result.stdout.strip().splitlines()
    assert not failures, "\n".join(failures)
    assert int(count.split()[0]) > 50


@pytest.fixture(scope="module")
def runtime_gateway() -> Iterator[tuple[GatewayProcess, int]]:
    """`gateway serve` on the default config from the runtime venv, as `make run` does."""
    _require_runtime_venv()
    http_port, grpc_port = free_port(), free_port()
    argv = [
        str(RUNTIME_VENV / "bin" / "gateway"),
        "serve",
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
    ]
    # No --config: the default, config/gateway.yaml, from the project root.
    gateway = start_server("gateway (runtime venv)", argv, http_port, READY_LINE)
    yield gateway, grpc_port
    alive = gateway.process.poll() is None
    gateway.stop()
    assert alive, f"the gateway died during the tests:\n{gateway.logs()}"


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64 images, their labels, and the probabilities ONNX Runtime gives for them directly."""
    data = load_digits()
    pixels = data.data[:64].astype(np.float32)
    session = ort.InferenceSession(str(ROOT / "models/digits/1/model.onnx"))
    (expected,) = session.run(["probabilities"], {"pixels": pixels})
    return pixels, data.target[:64], expected


def _check_digits(probabilities: np.ndarray, labels: np.ndarray, expected: np.ndarray) -> None:
    assert probabilities.shape == (64, 10)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    assert (probabilities.argmax(axis=1) == labels).mean() >= 0.9


def test_digits_over_http_from_the_runtime_venv(runtime_gateway) -> None:
    gateway, _ = runtime_gateway
    pixels, labels, expected = _digits()
    with httpclient.InferenceServerClient(gateway.url) as client:
        assert client.is_server_ready()
        tensor = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels, binary_data=True)
        result = client.infer("digits", [tensor])
        _check_digits(result.as_numpy("probabilities"), labels, expected)
        # JSON tensors too
        tensor.set_data_from_numpy(pixels, binary_data=False)
        wanted = httpclient.InferRequestedOutput("probabilities", binary_data=False)
        result = client.infer("digits", [tensor], outputs=[wanted])
        _check_digits(result.as_numpy("probabilities"), labels, expected)


def test_digits_over_grpc_from_the_runtime_venv(runtime_gateway) -> None:
    _, grpc_port = runtime_gateway
    pixels, labels, expected = _digits()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        assert client.is_server_ready()
        tensor = grpcclient.InferInput("pixels", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        result = client.infer("digits", [tensor], client_timeout=10.0)
        _check_digits(result.as_numpy("probabilities"), labels, expected)


def test_the_default_config_checks_from_the_runtime_venv() -> None:
    _require_runtime_venv()
    result = _run(str(RUNTIME_VENV / "bin" / "gateway"), "check", "config/gateway.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_optional_extra_that_is_missing_is_named_at_load(tmp_path: Path) -> None:
    """`protocol: http` of a triton backend needs the triton-http extra, which the
    runtime install lacks: the config is refused with the pip command, not a
    traceback."""
    _require_runtime_venv()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "backends:\n"
        "  t: {type: triton, url: '127.0.0.1:1', model: digits, protocol: http}\n"
        "models:\n"
        "  digits:\n"
        "    signature:\n"
        "      inputs: [{name: pixels, datatype: FP32, shape: [-1, 64]}]\n"
        "      outputs: [{name: probabilities, datatype: FP32, shape: [-1, 10]}]\n"
        "    route: {backends: [t]}\n"
    )
    result = _run(str(RUNTIME_VENV / "bin" / "gateway"), "check", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pip install 'inference-gateway[triton-http]'" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
