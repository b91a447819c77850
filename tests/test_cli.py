"""The `gateway` console script, run as users run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT, digits_config


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def write(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def line_of(path: str, text: str, after: str | None = None) -> int:
    """1-based line of the first line holding `text` (after the line holding `after`)."""
    lines = Path(path).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    return next(i for i, line in enumerate(lines) if i >= start and text in line) + 1


def test_check_accepts_the_embedded_default() -> None:
    default = yaml.safe_load((ROOT / "config/gateway.yaml").read_text())
    result = gateway("check", "config/gateway.yaml")
    assert result.returncode == 0, result.stderr
    counts = f"ok ({len(default['models'])} model(s), {len(default['backends'])} backend(s)"
    assert counts in result.stdout


def test_check_rejects_a_backend_that_does_not_fit_the_signature(tmp_path: Path) -> None:
    config = digits_config()
    config["models"]["digits"]["signature"]["inputs"][0]["shape"] = [-1, 32]
    config["models"]["digits"]["signature"]["outputs"][0]["datatype"] = "FP64"
    path = write(tmp_path, config)
    result = gateway("check", path)
    assert result.returncode == 1
    line = line_of(path, "- digits-cpu")
    assert (
        f"models.digits.route.backends[0] (line {line}): backend 'digits-cpu' does not fit the "
        "signature: input 'pixels': signature declares size 32 in dimension 1, the model has 64"
    ) in result.stderr
    assert (
        "output 'probabilities': signature declares FP64 [-1,10], the model has FP32 [-1,10]"
        in result.stderr
    )


def test_check_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    config = digits_config()
    config["backends"]["digits-cpu"]["path"] = "models/missing.onnx"
    config["backends"]["digits-cpu"]["max_queue"] = -1
    config["models"]["digits"]["route"]["backends"].append("nowhere")
    path = write(tmp_path, config)
    result = gateway("check", path)
    assert result.returncode == 1
    assert (
        f"backends.digits-cpu.max_queue (line {line_of(path, 'max_queue')}): Input should be "
        "greater than or equal to 0 (got -1)"
    ) in result.stderr
    config["backends"]["digits-cpu"]["max_queue"] = 4
    path = write(tmp_path, config)
    result = gateway("check", path)
    assert (
        f"models.digits.route.backends[1] (line {line_of(path, '- nowhere')}): unknown backend "
        "'nowhere'"
    ) in result.stderr
    config["models"]["digits"]["route"]["backends"].pop()
    path = write(tmp_path, config)
    result = gateway("check", path)
    assert (
        f"backends.digits-cpu (line {line_of(path, 'digits-cpu:')}): model file not found:"
        in result.stderr
    )
    assert "missing.onnx" in result.stderr


def test_a_required_gpu_that_is_not_there_refuses_to_load(tmp_path: Path) -> None:
    config = digits_config()
    config["backends"]["digits-cpu"].update(providers=["cuda", "cpu"], require_gpu=True)
    path = write(tmp_path, config)
    result = gateway("check", path)
    assert result.returncode == 1
    assert (
        f"backends.digits-cpu (line {line_of(path, 'digits-cpu:')}): require_gpu is set"
        in result.stderr
    )


def test_serve_with_a_bad_config_exits_1_with_the_report(tmp_path: Path) -> None:
    config = digits_config()
    config["server"]["http_port"] = "eighty"
    path = write(tmp_path, config)
    result = gateway("serve", "--config", path)
    assert result.returncode == 1
    assert (
        f"server.http_port (line {line_of(path, 'http_port')}): Input should be a valid integer"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_models_build_names_the_known_models() -> None:
    result = gateway("models", "build", "nonesuch")
    assert result.returncode == 1
    assert "no build script for model 'nonesuch'" in result.stderr and "digits" in result.stderr
