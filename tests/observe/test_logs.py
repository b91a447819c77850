"""Structured logs: JSON lines that carry the request id and trace id of the
request they were written for; and the whole observability set-up wired in a
real `gateway serve` process (JSON logs, console spans, an audit file)."""

from __future__ import annotations

import asyncio
import contextvars
import http.client
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.api.http_request import request_context
from gateway.observe import tracing
from gateway.observe.logs import CURRENT_REQUEST, JsonFormatter, formatter, setup_logging
from tests.conftest import digits_config, start_gateway
from tests.observe.inprocess import (
    DIGITS_BODY,
    VENDOR_KEY,
    VENDOR_KEY_ENV,
    fake_vendor,
    gateway,
    vendor_backend,
)

TRACE_ID = "5b8aa5a2d2c872e8321cf37308d69df2"
TRACEPARENT = f"00-{TRACE_ID}-051581bf3cb55c13-01"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the gateway's loggers write, as JSON lines."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    try:
        yield out
    finally:
        logger.removeHandler(handler)


def test_a_json_line_carries_the_request_and_its_trace(json_lines: io.StringIO) -> None:
    log = logging.getLogger("gateway.test")

    def in_a_request() -> None:
        request_context(
            {b"x-request-id": b"req-42", b"traceparent": TRACEPARENT.encode()}, "v2_http"
        )
        log.warning("backend %s is slow", "digits-cpu", extra={"backend": "digits-cpu"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it broke")

    contextvars.Context().run(in_a_request)
    contextvars.Context().run(log.warning, "outside any request")
    slow, broke, outside = map(json.loads, json_lines.getvalue().splitlines())
    assert slow["message"] == "backend digits-cpu is slow"
    assert (
        slow["level"],
        slow["logger"],
        slow["request_id"],
        slow["trace_id"],
        slow["backend"],
    ) == ("WARNING", "gateway.test", "req-42", TRACE_ID, "digits-cpu")
    assert slow["time"].endswith("Z") and "T" in slow["time"]
    assert broke["request_id"] == "req-42" and "ValueError: boom" in broke["exception"]
    assert "request_id" not in outside and "trace_id" not in outside
    assert contextvars.Context().run(CURRENT_REQUEST.get) is None


def test_request_logs_carry_the_request_id_and_span_trace_id(
    json_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fallback logs a warning from inside the pipeline: it names the request
    and the trace the gateway exported (the caller's trace id)."""
    monkeypatch.setenv(VENDOR_KEY_ENV, VENDOR_KEY)
    exporter = InMemorySpanExporter()
    tracing.setup(exporter=exporter)

    async def run() -> int:
        async with fake_vendor(error_rate=1.0, error_kind="500") as bad, fake_vendor() as good:
            config = {
                "backends": {"bad": vendor_backend(bad.url), "good": vendor_backend(good.url)},
                "models": {"chat": {"kind": "chat", "route": {"backends": ["bad", "good"]}}},
            }
            async with gateway(config) as gw:
                reply = await gw.client.post(
                    "/v1/chat/completions",
                    headers={"traceparent": TRACEPARENT, "x-request-id": "logged-request"},
                    json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
                )
                return reply.status_code

    try:
        assert asyncio.run(run()) == 200
    finally:
        tracing.shutdown()
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    [fallback] = [line for line in lines if "backend bad" in line["message"]]
    assert fallback["request_id"] == "logged-request"
    assert fallback["trace_id"] == TRACE_ID
    assert {f"{s.context.trace_id:032x}" for s in exporter.get_finished_spans()} == {TRACE_ID}


def test_formats() -> None:
    assert isinstance(formatter("json"), JsonFormatter)
    assert not isinstance(formatter("text"), JsonFormatter)
    with pytest.raises(ValueError):
        formatter("xml")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("warning", "json")
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.WARNING
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])


def test_a_served_gateway_logs_json_exports_spans_and_writes_audit(tmp_path: Path) -> None:
    audit_file = tmp_path / "audit.jsonl"
    config = digits_config(log_format="json")
    config["audit"] = {"sink": "file", "path": str(audit_file)}
    gw = start_gateway(
        config,
        tmp_path / "gw",
        env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "gw-test"},
    )
    try:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        conn.request(
            "POST",
            "/v2/models/digits/infer",
            json.dumps(DIGITS_BODY),
            {
                "traceparent": TRACEPARENT,
                "x-request-id": "served-1",
                "content-type": "application/json",
            },
        )
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        conn.close()
    finally:
        gw.stop()  # flushes the spans and the audit log, then the output is all read
    docs = [json.loads(line) for line in gw.logs().splitlines() if line.strip()]
    logs = [d for d in docs if "logger" in d]
    spans = [d for d in docs if "context" in d]
    assert len(logs) + len(spans) == len(docs)  # every line is one or the other
    assert any("gateway ready" in d["message"] for d in logs)
    [root] = [s for s in spans if s["name"] == "infer digits"]
    assert root["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert root["resource"]["attributes"]["service.name"] == "gw-test"
    assert root["attributes"]["gateway.request_id"] == "served-1"
    assert {s["name"] for s in spans} >= {
        "validate",
        "attempt digits-cpu",
        "queue wait",
        "batch execution",
    }
    [record] = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert (record["request_id"], record["trace_id"], record["status"]) == (
        "served-1",
        TRACE_ID,
        200,
    )
