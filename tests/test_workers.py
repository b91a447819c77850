"""`gateway serve --workers N`: N processes answering on one port."""

from __future__ import annotations

import http.client
import json
import time

import numpy as np

from tests.api.http_helpers import post, tensor_json
from tests.conftest import digits_config, start_gateway
from tests.metrics_reader import scrape, value


def test_two_workers_serve_the_same_port(tmp_path) -> None:
    gateway = start_gateway(digits_config(), tmp_path, "--workers", "2")
    try:
        deadline = time.monotonic() + 60
        while gateway.logs().count("gateway ready (worker") < 2:  # both workers started
            assert time.monotonic() < deadline, gateway.logs()
            time.sleep(0.01)
        body = tensor_json("pixels", "FP32", [1, 64], np.ones(64).tolist())
        replies = [post(gateway.port, "/v2/models/digits/infer", body) for _ in range(20)]
        assert all(r.status == 200 for r in replies)
        assert len({json.dumps(json.loads(r.body)["outputs"]) for r in replies}) == 1
        assert gateway.process.poll() is None
    finally:
        gateway.stop()


def test_metrics_add_up_over_all_workers(tmp_path) -> None:
    gateway = start_gateway(digits_config(), tmp_path, "--workers", "2")
    try:
        deadline = time.monotonic() + 60
        while gateway.logs().count("gateway ready (worker") < 2:
            assert time.monotonic() < deadline, gateway.logs()
            time.sleep(0.01)
        body = tensor_json("pixels", "FP32", [1, 64], np.ones(64).tolist())
        # New connections each time: the kernel spreads them over both workers.
        assert all(
            post(gateway.port, "/v2/models/digits/infer", body).status == 200 for _ in range(30)
        )
        labels = {"model": "digits", "protocol": "v2_http", "code": "200"}
        # Whichever worker answers the scrape, it reports both workers' requests.
        totals = {value(gateway.port, "gateway_requests_total", **labels) for _ in range(10)}
        assert totals == {30.0}
    finally:
        gateway.stop()


def test_slo_is_one_view_of_every_worker(tmp_path) -> None:
    config = digits_config()
    config["models"]["digits"]["slo"] = {
        "latency_ms": 5000,
        "latency_target": 0.99,
        "availability": 0.999,
        "window": "1h",
    }
    gateway = start_gateway(config, tmp_path, "--workers", "2")
    try:
        deadline = time.monotonic() + 60
        while gateway.logs().count("gateway ready (worker") < 2:
            assert time.monotonic() < deadline, gateway.logs()
            time.sleep(0.01)
        labels = {"model": "digits", "protocol": "v2_http", "code": "200"}
        before = value(gateway.port, "gateway_requests_total", **labels)
        slo_before = slo_total(gateway.port)
        body = tensor_json("pixels", "FP32", [1, 64], np.ones(64).tolist())
        # New connections each time: the kernel spreads them over both workers.
        assert all(
            post(gateway.port, "/v2/models/digits/infer", body).status == 200 for _ in range(200)
        )
        served = value(gateway.port, "gateway_requests_total", **labels) - before
        assert served == 200
        # Whichever worker answers /slo, it counts both workers' requests, as /metrics does.
        assert {slo_total(gateway.port) - slo_before for _ in range(10)} == {served}
        # The SLO gauges describe the group: no per-worker series.
        samples = scrape(gateway.port)
        slo_samples = {k: v for k, v in samples.items() if k[0].startswith("gateway_slo_")}
        assert slo_samples
        assert all("pid" not in dict(labels_) for _, labels_ in slo_samples)
        objective = ("gateway_slo_objective", (("model", "digits"), ("slo", "availability")))
        assert slo_samples[objective] == 0.999
    finally:
        gateway.stop()


def slo_total(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/slo")
    doc = json.loads(conn.getresponse().read())
    conn.close()
    availability = doc["models"]["digits"]["objectives"]["availability"]
    assert availability["good"] == availability["total"]
    return int(availability["total"])
