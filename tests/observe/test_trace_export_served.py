"""Spans of a served gateway (`gateway serve`, uvloop, the OTLP exporter posting
from the event loop) reach a collector on loopback: full batches while it
serves, the rest as it stops, none lost and none answered with an error."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import digits_config, start_gateway
from tests.observe.collector import ThreadedCollector

BATCH = 8
REQUESTS = 20
BODY = orjson.dumps(
    {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
)


def spans_of(body: bytes) -> list[Any]:
    return [
        span
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


def infer(port: int) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/digits/infer",
        data=BODY,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        reply.read()
        return reply.status


def test_a_served_gateway_posts_its_spans_in_batches_and_at_shutdown(tmp_path: Path) -> None:
    collector = ThreadedCollector()
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(BATCH),
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }  # only full batches go before shutdown
    gateway = start_gateway(digits_config(), tmp_path, env=env)
    try:
        statuses = [infer(gateway.port) for _ in range(REQUESTS)]
        # Each request makes at least 4 spans: 20 requests fill more than 8 batches.
        assert collector.wait_for(posts=8), gateway.logs()
        while_serving = len(collector.received)
    finally:
        gateway.stop()
        collector.close()
    exports = [spans_of(body) for body in collector.bodies]
    assert statuses == [200] * REQUESTS
    assert "Traceback" not in gateway.logs()
    assert all(len(spans) == BATCH for spans in exports[:while_serving])
    assert all(len(spans) <= BATCH for spans in exports)
    spans = [span for export in exports for span in export]
    requests = [span for span in spans if span.name == "infer digits"]
    assert len(requests) == REQUESTS
    traces = {span.trace_id for span in requests}
    assert len(traces) == REQUESTS and {span.trace_id for span in spans} == traces
    assert len({span.span_id for span in spans}) == len(spans)
    for request in requests:
        children = {s.name for s in spans if s.parent_span_id == request.span_id}
        assert {"validate", "attempt digits-cpu"} <= children


def test_a_collector_that_is_down_costs_one_warning_and_no_answer(tmp_path: Path) -> None:
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there once closed
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(BATCH),
    }
    gateway = start_gateway(digits_config(), tmp_path, env=env)
    requests = 80  # some 50 batches: posting each at shutdown would take half a minute
    try:
        statuses = [infer(gateway.port) for _ in range(requests)]
    finally:
        gateway.stop()
    assert statuses == [200] * requests
    logs = gateway.logs()
    assert "Traceback" not in logs
    assert logs.count("OTLP export to") == 1 and "failed" in logs
    # It stopped by itself on SIGTERM (killed after 10 s it would read -9).
    assert gateway.process.returncode != -9
