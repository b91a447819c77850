"""Audit records of decisions: refusals name the tenant they refused, and every
admin call (and every reload) is recorded with its caller and the config
before and after."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.api.http_helpers import post
from tests.conftest import digits_config, start_gateway
from tests.observe.inprocess import DIGITS_BODY, digits_backend, digits_model, gateway

TENANT_KEY_ENV = "AUDIT_DECISIONS_TENANT_KEY"
ADMIN_KEY_ENV = "AUDIT_DECISIONS_ADMIN_KEY"
ADMIN_KEY = "admin-key-of-the-audit-decision-tests"


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TENANT_KEY_ENV, "key-of-the-limited-tenant")
    monkeypatch.setenv(ADMIN_KEY_ENV, ADMIN_KEY)


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_403_and_a_429_name_the_tenant_they_refused(tmp_path: Path) -> None:
    audit_file = tmp_path / "audit.jsonl"
    config = {
        "server": {"admin_key_env": ADMIN_KEY_ENV},
        "audit": {"sink": "file", "path": str(audit_file)},
        "tenants": [
            {
                "name": "limited",
                "key_env": TENANT_KEY_ENV,
                "models": ["digits"],
                "rate_limit": {"requests_per_minute": 1},
            }
        ],
        "backends": {"digits-cpu": digits_backend()},
        "models": {"digits": digits_model(), "other": digits_model()},
    }
    auth = {"authorization": "Bearer key-of-the-limited-tenant"}

    async def run() -> list[int]:
        async with gateway(config) as gw:
            statuses = []
            for model, request_id in (("other", "forbidden"), ("digits", "ok"), ("digits", "over")):
                reply = await gw.client.post(
                    f"/v2/models/{model}/infer",
                    json=DIGITS_BODY,
                    headers={**auth, "x-request-id": request_id},
                )
                statuses.append(reply.status_code)
            return statuses

    assert asyncio.run(run()) == [403, 200, 429]
    records = {r["request_id"]: r for r in read_records(audit_file)}
    assert [(records[i]["status"], records[i]["tenant"]) for i in ("forbidden", "ok", "over")] == [
        (403, "limited"),
        (200, "limited"),
        (429, "limited"),
    ]


def test_every_admin_call_and_reload_is_recorded_with_the_config_before_and_after(
    tmp_path: Path,
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    config = digits_config(admin_key_env=ADMIN_KEY_ENV, watch_config_s=0)
    config["audit"] = {"sink": "file", "path": str(audit_file)}
    gateway_process = start_gateway(config, tmp_path / "gw")
    config_file = tmp_path / "gw" / "gateway.yaml"
    first = hashlib.sha256(config_file.read_bytes()).hexdigest()
    key = {"authorization": f"Bearer {ADMIN_KEY}"}
    try:
        port = gateway_process.port
        assert post(port, "/admin/backends/digits-cpu/disable", b"", key).status == 200
        assert post(port, "/admin/reload", b"", {"authorization": "Bearer wrong"}).status == 401
        config["models"]["digits"]["description"] = "changed"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        second = hashlib.sha256(config_file.read_bytes()).hexdigest()
        assert post(port, "/admin/reload", b"", key).status == 200
        assert post(port, "/admin/rollback", b"", key).status == 200
        assert post(port, "/admin/backends/nope/enable", b"", key).status == 404
    finally:
        gateway_process.stop()  # a clean stop writes every record
    admin = [r for r in read_records(audit_file) if r.get("type") == "admin"]
    seen = [
        (
            r["action"],
            r["status"],
            r["target"],
            r["caller"]["admin_key"],
            r["config_before"],
            r["config_after"],
        )
        for r in admin
    ]
    assert seen == [
        ("disable", 200, "digits-cpu", True, first, first),
        ("reload", 401, None, False, first, first),
        ("reload", 200, None, True, first, second),
        ("rollback", 200, None, True, second, first),
        ("enable", 404, "nope", True, first, first),
    ]
    assert all(r["caller"]["address"] == "127.0.0.1" for r in admin)
    assert "error" in admin[1] and ADMIN_KEY not in audit_file.read_text()
