"""The promotion gate end to end: a real gateway process, the CLI
(`gateway models promote`), and traffic this test sends while the canary
runs. One promotion passes, one is refused by the evaluation, one is rolled
back by the canary. Each gateway serves a private copy of the digits
versions, so the lineage files and the config the gate rewrites are the
test's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.api.http_helpers import post
from tests.conftest import GatewayProcess, start_gateway
from tests.promotion.helpers import (
    ADMIN_KEY,
    ADMIN_KEY_ENV,
    agreed_rows,
    copy_digits,
    digits_config,
    infer_body,
    read_jsonl,
)

ENV = {ADMIN_KEY_ENV: ADMIN_KEY}
# Traffic is sent until the CLI has its verdict; past this long the test fails.
VERDICT_WITHIN_S = 60.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[GatewayProcess, Path, Path]]:
    """A gateway serving digits version 1 from a private copy; (gateway, the
    model's directory, the audit file). Its config: config_file(model directory)."""
    model_dir = copy_digits(tmp_path)
    config = digits_config(model_dir)
    audit = tmp_path / "audit.jsonl"
    config["audit"] = {"sink": "file", "path": str(audit), "flush_interval_ms": 10}
    gateway = start_gateway(config, tmp_path / "gateway", env=ENV)
    yield gateway, model_dir, audit
    gateway.stop()


def config_file(model_dir: Path) -> Path:
    """The served config, as start_gateway wrote it (beside the models' copy)."""
    return model_dir.parent.parent / "gateway" / "gateway.yaml"


def promote(gateway: GatewayProcess, version: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "models",
            "promote",
            "digits",
            version,
            "--url",
            f"http://{gateway.url}",
            "--admin-key-env",
            ADMIN_KEY_ENV,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **ENV},
    )


def drive(gateway: GatewayProcess, cli: subprocess.Popen[bytes]) -> tuple[int, dict[str, Any]]:
    """Send inference requests until the CLI exits; (its exit status, the
    promotion document it printed)."""
    rows = agreed_rows()
    sent = 0
    deadline = time.monotonic() + VERDICT_WITHIN_S
    while cli.poll() is None:
        assert time.monotonic() < deadline, f"no verdict after {sent} requests:\n{gateway.logs()}"
        batch = rows[(sent * 4) % (len(rows) - 4) :][:4]
        reply = post(gateway.port, "/v2/models/digits/infer", infer_body(batch))
        assert reply.status == 200, reply.body
        sent += 1
    out, err = cli.communicate()
    assert out, err.decode()
    return cli.returncode, json.loads(out)


def served_version(gateway: GatewayProcess) -> str:
    reply = post(gateway.port, "/v2/models/digits/infer", infer_body(agreed_rows()[:1]))
    assert reply.status == 200
    return str(reply.json()["model_version"])  # type: ignore[index]


def test_a_sound_retrain_is_promoted(served: tuple[GatewayProcess, Path, Path]) -> None:
    gateway, model_dir, audit = served
    code, doc = drive(gateway, promote(gateway, "2"))
    assert (code, doc["state"]) == (0, "promoted"), doc
    assert doc["signature"]["passed"] and doc["evaluation"]["passed"]
    assert doc["evaluation"]["candidate"] == pytest.approx(0.977778)
    assert doc["evaluation"]["serving"] == pytest.approx(0.972222)
    canary = doc["canary"]
    assert canary["requests"] >= 8 and canary["errors"] == 0
    assert canary["rows_compared"] >= 8 * 4 and canary["rows_disagreeing"] == 0
    assert canary["elapsed_s"] >= 1.0

    assert served_version(gateway) == "2"
    config = yaml.safe_load(config_file(model_dir).read_text())
    assert config["backends"]["digits-cpu"]["path"] == str(model_dir / "2" / "model.onnx")
    assert str(config["models"]["digits"]["version"]) == "2"

    steps = [(r["step"], r["outcome"]) for r in read_jsonl(model_dir / "lineage.jsonl")]
    assert steps == [
        ("signature", "pass"),
        ("evaluation", "pass"),
        ("canary_start", "started"),
        ("canary_verdict", "promote"),
        ("promotion", "promoted"),
    ]
    audited = [r for r in read_jsonl(audit) if r.get("type") == "promotion"]
    assert [(r["step"], r["outcome"]) for r in audited] == steps
    # Requests the candidate answered name its backend in their audit records.
    backends = {r.get("backend") for r in read_jsonl(audit) if r.get("model") == "digits"}
    assert "digits-cpu.v2" in backends

    # /admin/rollback undoes the promotion in the running gateway.
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert post(gateway.port, "/admin/rollback", b"", auth).status == 200
    assert served_version(gateway) == "1"


def test_a_worse_model_is_refused_by_the_evaluation(
    served: tuple[GatewayProcess, Path, Path],
) -> None:
    gateway, model_dir, _ = served
    cli = promote(gateway, "3")
    out, err = cli.communicate(timeout=60)
    doc = json.loads(out)
    assert (cli.returncode, doc["state"]) == (1, "refused"), err
    evaluation = doc["evaluation"]
    assert evaluation["candidate"] == pytest.approx(0.841667)
    assert evaluation["drop"] > evaluation["max_drop"] == 0.01
    assert doc["canary"] is None
    assert "evaluation: accuracy 0.8417" in doc["reasons"][0]
    steps = [(r["step"], r["outcome"]) for r in read_jsonl(model_dir / "lineage.jsonl")]
    assert steps == [("signature", "pass"), ("evaluation", "refused")]
    assert served_version(gateway) == "1"


def test_a_slow_model_is_rolled_back_by_the_canary(
    served: tuple[GatewayProcess, Path, Path],
) -> None:
    gateway, model_dir, _ = served
    config_before = config_file(model_dir).read_text()
    code, doc = drive(gateway, promote(gateway, "4"))
    assert (code, doc["state"]) == (1, "rolled_back"), doc
    assert doc["evaluation"]["passed"]  # as accurate as version 2 offline
    canary = doc["canary"]
    assert canary["requests"] >= 8
    assert canary["slow"] == canary["requests"]
    assert canary["latency_burn"] > canary["max_burn_rate"]
    assert canary["rows_disagreeing"] == 0  # right answers, too late
    assert "latency burn" in doc["reasons"][0]
    steps = [(r["step"], r["outcome"]) for r in read_jsonl(model_dir / "lineage.jsonl")]
    assert steps[-2:] == [("canary_verdict", "rollback"), ("rollback", "rolled_back")]
    assert served_version(gateway) == "1"
    assert config_file(model_dir).read_text() == config_before


def test_the_admin_key_is_required_and_a_canary_can_be_aborted(
    served: tuple[GatewayProcess, Path, Path],
) -> None:
    gateway, model_dir, _ = served
    body = json.dumps({"version": "2"}).encode()
    refused = post(gateway.port, "/admin/models/digits/promote", body)
    assert refused.status == 401
    assert read_jsonl(model_dir / "lineage.jsonl") == []  # refused before any step

    cli = promote(gateway, "2", "--no-wait")  # no traffic: the canary waits for requests
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    assert json.loads(out)["state"] == "canary"
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    busy = post(gateway.port, "/admin/models/digits/promote", body, auth)
    assert busy.status == 400 and "abort it first" in busy.error

    cli = promote(gateway, "2", "--abort")
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    doc = json.loads(out)
    assert (doc["state"], doc["reasons"]) == ("aborted", ["aborted by an admin"])
    assert served_version(gateway) == "1"
    steps = [(r["step"], r["outcome"]) for r in read_jsonl(model_dir / "lineage.jsonl")]
    assert steps[-2:] == [("canary_start", "started"), ("abort", "aborted")]
