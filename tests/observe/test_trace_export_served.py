"""Spans of a served gateway (`gateway serve`, uvloop, the OTLP exporter posting
from the event loop) reach a collector on loopback: full batches while it
serves, the rest as it stops, none lost and none answered with an error."""

from __future__ import annotations

import http.server
import threading
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import digits_config, start_gateway

BATCH = 8
REQUESTS = 20
BODY = orjson.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                                 "data": [0.5] * 64}]})


class Collector:
    """An OTLP/HTTP collector on a thread: keeps each export's spans."""

    def __init__(self) -> None:
        self.exports: list[list[Any]] = []
        self.changed = threading.Condition()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the exporter expects

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["content-length"]))
                spans = [span for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                         for ss in rs.scope_spans for span in ss.spans]
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                with collector.changed:
                    collector.exports.append(spans)
                    collector.changed.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, exports: int, timeout_s: float = 30.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.exports) >= exports, timeout_s)


def infer(port: int) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/digits/infer",
                                     data=BODY, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        reply.read()
        return reply.status


def test_a_served_gateway_posts_its_spans_in_batches_and_at_shutdown(tmp_path: Path) -> None:
    collector = Collector()
    env = {"OTEL_TRACES_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
           "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(BATCH),
           "OTEL_BSP_SCHEDULE_DELAY": "600000"}  # only full batches go before shutdown
    gateway = start_gateway(digits_config(), tmp_path, env=env)
    try:
        statuses = [infer(gateway.port) for _ in range(REQUESTS)]
        # Each request makes at least 4 spans: 20 requests fill more than 8 batches.
        assert collector.wait_for(exports=8), gateway.logs()
        while_serving = len(collector.exports)
    finally:
        gateway.stop()
        collector.server.shutdown()
    assert statuses == [200] * REQUESTS
    assert "Traceback" not in gateway.logs()
    assert all(len(spans) == BATCH for spans in collector.exports[:while_serving])
    assert all(len(spans) <= BATCH for spans in collector.exports)
    spans = [span for export in collector.exports for span in export]
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
    env = {"OTEL_TRACES_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
           "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(BATCH)}
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
