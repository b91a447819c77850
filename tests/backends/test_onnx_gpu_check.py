"""`make gpu-check` (loadtests/gpu_check.py) on this machine: the CPU rows of its
table, the line naming the GPU providers this onnxruntime build does not offer,
exit code 0; and exit code 2 for a model the config does not have."""

from __future__ import annotations

import re
import subprocess
import sys

import onnxruntime as ort

from tests.conftest import ROOT

SCRIPT = ROOT / "loadtests" / "gpu_check.py"


def gpu_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_it_prints_the_cpu_rows_and_the_providers_not_offered() -> None:
    run = gpu_check(
        "--seconds", "0.1", "--batch-sizes", "1,3", "--models", "digits,embedder", "--io-binding"
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    header = next(line for line in lines if line.startswith("model "))
    assert header.split() == [
        "model", "provider", "batch", "req/s", "rows/s", "p50", "ms", "vs", "CPU", "max", "|Δ|", "CPU"
    ]  # fmt: skip
    for model in ("digits", "embedder"):
        for batch in (1, 3):
            # model, provider, batch, req/s, rows/s, p50 ms, speedup, max difference
            plain = rf"^{model}\s+cpu\s+{batch}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+1\.00x\s+0$"
            bound = (
                rf"^{model}\s+cpu \+io_binding\s+{batch}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+x\s+0$"
            )
            assert any(re.match(plain, line) for line in lines), (plain, run.stdout)
            assert any(re.match(bound, line) for line in lines), (bound, run.stdout)
    missing = [
        short
        for short, name in (
            ("cuda", "CUDAExecutionProvider"),
            ("tensorrt", "TensorrtExecutionProvider"),
        )
        if name not in ort.get_available_providers()
    ]
    if missing:
        assert "GPU providers not offered by this onnxruntime build: " in run.stdout
        for short in missing:
            assert short in run.stdout.split("not offered by this onnxruntime build: ")[1]
    assert "FAIL" not in run.stdout


def test_a_model_the_config_lacks_is_a_usage_error() -> None:
    run = gpu_check("--models", "nope")
    assert run.returncode == 2
    assert "no model 'nope' in the config" in run.stderr
