"""A gateway killed outright loses at most `audit.max_unwritten_records` audit
records: the bound docs/operations.md gives, checked with SIGKILL."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.api.http_helpers import post
from tests.conftest import digits_config, start_gateway

BODY = json.dumps(
    {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}
).encode()
ANSWERED = 60
MAX_UNWRITTEN = 16


def test_sigkill_loses_at_most_max_unwritten_records(tmp_path: Path) -> None:
    audit_file = tmp_path / "audit.jsonl"
    config = digits_config()
    config["audit"] = {
        "sink": "file",
        "path": str(audit_file),
        # Never by time: only the record bound hands records to the writer.
        "flush_interval_ms": 600_000,
        "max_unwritten_records": MAX_UNWRITTEN,
    }
    gateway = start_gateway(config, tmp_path / "gateway")
    try:
        for i in range(ANSWERED):
            reply = post(
                gateway.port,
                "/v2/models/digits/infer",
                BODY,
                {"content-type": "application/json", "x-request-id": f"crash-{i}"},
            )
            assert reply.status == 200
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(timeout=10)
    finally:
        gateway.stop()
    lines = audit_file.read_text().splitlines() if audit_file.exists() else []
    ids = [json.loads(line)["request_id"] for line in lines]
    # Whole records, the oldest first, none twice.
    assert ids == [f"crash-{i}" for i in range(len(ids))]
    assert len(ids) >= ANSWERED - MAX_UNWRITTEN, f"{len(ids)} of {ANSWERED} records on disk"
