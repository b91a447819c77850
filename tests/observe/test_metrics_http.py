"""Request metrics and SLOs seen from outside: a scripted sequence of requests
against a real gateway (a local model and two fake vendors), and the exact
amounts each metric moves by; /slo turning to breach when a vendor is slow
and back to ok when it is fast again."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from testkit.fake_vendor import control_fake_vendor, reset_fake_vendor, start_fake_vendor
from tests.api.http_helpers import Reply, post, tensor_json
from tests.conftest import DIGITS_MODEL, GatewayProcess, start_gateway
from tests.metrics_reader import scrape

KEY_ENV = "METRICS_HTTP_TEST_VENDOR_KEY"
DIGITS_SIGNATURE = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
}


def vendor_backend(url: str) -> dict:
    return {
        "type": "openai",
        "base_url": f"http://{url}/v1",
        "api_key_env": KEY_ENV,
        "model": "fake",
        "timeout_ms": 5000,
        "circuit_breaker": {"enabled": False},
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, ...]]:
    a, b = start_fake_vendor(), start_fake_vendor()
    config = {
        "backends": {
            "digits-cpu": {"type": "onnx", "path": str(DIGITS_MODEL), "intra_op_threads": 1},
            "a": vendor_backend(a.url),
            "b": vendor_backend(b.url),
        },
        "models": {
            "digits": {
                "signature": DIGITS_SIGNATURE,
                "route": {"backends": ["digits-cpu"]},
                "cache": {"ttl_s": 600},
            },
            "chain": {"kind": "chat", "route": {"backends": ["a", "b"]}},
            "slow-chat": {
                "kind": "chat",
                "route": {"backends": ["a"]},
                "slo": {
                    "latency_ms": 50,
                    "latency_target": 0.95,
                    "availability": 0.95,
                    "window": "1h",
                },
            },
        },
    }
    gateway = start_gateway(config, tmp_path_factory.mktemp("metrics"), env={KEY_ENV: "fake-key"})
    yield gateway, a, b
    alive = gateway.process.poll() is None
    for process in (gateway, a, b):
        process.stop()
    assert alive, gateway.logs()


def digits(gateway: GatewayProcess, pixels: list[float] | None = None) -> Reply:
    return post(
        gateway.port,
        "/v2/models/digits/infer",
        tensor_json("pixels", "FP32", [1, 64], pixels or [1.0] * 64),
    )


def chat(gateway: GatewayProcess, model: str, text: str = "hello") -> Reply:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}]})
    return post(
        gateway.port, "/v1/chat/completions", body.encode(), {"content-type": "application/json"}
    )


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_move_by_exactly_what_a_scripted_sequence_did(setup) -> None:
    gateway, a, b = setup
    reset_fake_vendor(a.url)
    reset_fake_vendor(b.url)
    before = scrape(gateway.port)
    assert [digits(gateway).status for _ in range(3)] == [200] * 3  # 1 miss, then 2 hits
    bad = post(
        gateway.port, "/v2/models/digits/infer", tensor_json("pixels", "FP32", [1, 63], [1.0] * 63)
    )
    assert bad.status == 400
    assert post(gateway.port, "/v2/models/nope/infer", b"{}").status == 404
    control_fake_vendor(a.url, error_rate=1.0, error_kind="500")
    assert chat(gateway, "chain").status == 200  # A fails, B answers
    post(gateway.port, "/admin/backends/digits-cpu/disable", b"")
    try:
        shed = digits(gateway, [2.0] * 64)  # not cached, and its only backend is off
    finally:
        post(gateway.port, "/admin/backends/digits-cpu/enable", b"")
    assert shed.status == 503
    after = scrape(gateway.port)

    requests = "gateway_requests_total"
    assert delta(before, after, requests, model="digits", protocol="v2_http", code="200") == 3
    assert delta(before, after, requests, model="digits", protocol="v2_http", code="400") == 1
    assert delta(before, after, requests, model="digits", protocol="v2_http", code="503") == 1
    assert delta(before, after, requests, model="_none", protocol="v2_http", code="404") == 1
    assert delta(before, after, requests, model="chain", protocol="openai", code="200") == 1
    cache = "gateway_cache_requests_total"
    assert delta(before, after, cache, model="digits", tier="local", result="hit") == 2
    # The miss, and the 503's lookup (its answer was not there either).
    assert delta(before, after, cache, model="digits", tier="local", result="miss") == 2
    assert (
        delta(
            before,
            after,
            "gateway_fallbacks_total",
            model="chain",
            from_backend="a",
            to_backend="b",
            reason="5xx",
        )
        == 1
    )
    durations = "gateway_request_duration_seconds_count"
    assert delta(before, after, durations, model="digits", protocol="v2_http") == 5
    assert (
        delta(
            before,
            after,
            "gateway_backend_duration_seconds_count",
            model="chain",
            backend="a",
            outcome="5xx",
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "gateway_backend_duration_seconds_count",
            model="digits",
            backend="digits-cpu",
            outcome="ok",
        )
        == 1
    )


def slo_status(gateway: GatewayProcess) -> dict:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("GET", "/slo")
    doc = json.loads(conn.getresponse().read())
    conn.close()
    return doc["models"]["slow-chat"]


def test_slo_breaches_when_the_vendor_is_slow_and_recovers_when_it_is_fast(setup) -> None:
    # slow-chat serves this test alone: its window starts empty (the counts are
    # still compared as deltas, as everywhere on a gateway shared by the module).
    gateway, a, _ = setup
    reset_fake_vendor(a.url)
    start = slo_status(gateway)
    assert start["status"] == "ok"
    good_before = start["objectives"]["latency"]["good"]
    total_before = start["objectives"]["latency"]["total"]
    control_fake_vendor(a.url, latency_ms=80)  # over the 50 ms objective
    assert [chat(gateway, "slow-chat").status for _ in range(20)] == [200] * 20
    status = slo_status(gateway)
    assert status["status"] == "breach"
    latency = status["objectives"]["latency"]
    assert (latency["good"] - good_before, latency["total"] - total_before) == (0, 20)
    # The bad share over the 5-minute window, over the 5 % the objective allows.
    bad_share = (latency["total"] - latency["good"]) / latency["total"]
    assert latency["burn_rates"]["5m"] == pytest.approx(bad_share / 0.05)
    control_fake_vendor(a.url, latency_ms=0)
    # Enough fast answers bring the bad share (20 of 620) under every burn threshold.
    assert all(chat(gateway, "slow-chat").status == 200 for _ in range(600))
    status = slo_status(gateway)
    assert status["status"] == "ok", status
    latency = status["objectives"]["latency"]
    assert latency["total"] - total_before == 620
    assert latency["good"] - good_before >= 590
    assert 0 < latency["budget_remaining"] < 1
