"""The response cache across replicas: two gateway processes sharing one real
redis-server, a fake vendor that counts the calls it gets. Expected counts come
from the requests sent, never from the gateway's answers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testkit.fake_vendor import (
    control_fake_vendor,
    fake_vendor_stats,
    reset_fake_vendor,
    start_fake_vendor,
)
from tests.api.http_helpers import Reply, post
from tests.conftest import GatewayProcess, start_gateway
from tests.metrics_reader import value
from tests.redis_server import RedisServer

KEY_ENV = "CACHE_TEST_VENDOR_KEY"
# The secret that signs values in Redis: every replica of a deployment has it.
SIGNING_KEY_ENV = "CACHE_TEST_SIGNING_KEY"
# Given to each gateway process it starts (this process's environment is left alone).
ENV = {KEY_ENV: "fake-key", SIGNING_KEY_ENV: "cache-signing-secret-for-the-tests"}
EMBEDDINGS = "/v1/embeddings"
CHAT = "/v1/chat/completions"


def config(vendor_url: str, redis_url: str | None, max_bytes: int = 64 << 20) -> dict:
    vendor = {
        "type": "openai",
        "base_url": f"http://{vendor_url}/v1",
        "api_key_env": KEY_ENV,
        "model": "fake",
        "timeout_ms": 10000,
        "circuit_breaker": {"enabled": False},
    }
    doc = {
        "cache": {"max_bytes": max_bytes, "lock_ttl_ms": 5000},
        "backends": {"vendor": vendor},
        "models": {
            "embed": {
                "kind": "embeddings",
                "route": {"backends": ["vendor"]},
                "cache": {"ttl_s": 600},
            },
            "embed-short": {
                "kind": "embeddings",
                "route": {"backends": ["vendor"]},
                "cache": {"ttl_s": 0.3},
            },
            "chat": {"kind": "chat", "route": {"backends": ["vendor"]}, "cache": {"ttl_s": 600}},
        },
    }
    if redis_url is not None:
        doc["redis"] = {"url": redis_url, "timeout_ms": 50}
        doc["cache"]["signing_key_env"] = SIGNING_KEY_ENV
    return doc


@pytest.fixture(scope="module")
def vendor() -> Iterator[GatewayProcess]:
    process = start_fake_vendor()
    yield process
    process.stop()


@pytest.fixture()
def fresh_vendor(vendor: GatewayProcess) -> GatewayProcess:
    reset_fake_vendor(vendor.url)
    return vendor


@pytest.fixture(scope="module")
def replicas(
    vendor: GatewayProcess, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, ...]]:
    started = [
        start_gateway(
            config(vendor.url, redis_server.url),
            tmp_path_factory.mktemp(f"replica-{i}"),
            env=ENV,
        )
        for i in range(2)
    ]
    yield tuple(started)
    alive = [g.process.poll() is None for g in started]
    for g in started:
        g.stop()
    assert all(alive), "a replica died during the tests"
    for g in started:
        assert "internal error" not in g.logs()


def embed(
    gateway: GatewayProcess, text: str, model: str = "embed", headers: dict[str, str] | None = None
) -> Reply:
    return post(
        gateway.port,
        EMBEDDINGS,
        json.dumps({"model": model, "input": text}).encode(),
        {"content-type": "application/json", **(headers or {})},
    )


def vendor_calls(vendor: GatewayProcess, route: str = EMBEDDINGS) -> int:
    return fake_vendor_stats(vendor.url)["routes"].get(route, {}).get("received", 0)


def unique(label: str) -> str:
    return f"{label} {time.monotonic_ns()}"


def test_a_hit_on_one_replica_for_a_request_first_served_by_the_other(
    replicas: tuple[GatewayProcess, ...], fresh_vendor: GatewayProcess
) -> None:
    a, b = replicas
    text = unique("shared across replicas")
    first = embed(a, text)
    second = embed(b, text)
    again = embed(b, text)
    assert (first.status, second.status, again.status) == (200, 200, 200)
    assert [r.headers["x-gateway-cache"] for r in (first, second, again)] == ["miss", "hit", "hit"]
    assert json.loads(second.body)["data"] == json.loads(first.body)["data"]
    assert vendor_calls(fresh_vendor) == 1
    assert float(second.headers["x-gateway-cost-usd"]) == 0.0


def test_cache_control_no_cache_bypasses(
    replicas: tuple[GatewayProcess, ...], fresh_vendor: GatewayProcess
) -> None:
    a, _ = replicas
    text = unique("bypass")
    assert embed(a, text).headers["x-gateway-cache"] == "miss"
    bypassed = embed(a, text, headers={"cache-control": "no-cache"})
    assert bypassed.headers["x-gateway-cache"] == "bypass"
    assert vendor_calls(fresh_vendor) == 2


def test_entries_expire_after_their_ttl(
    replicas: tuple[GatewayProcess, ...], fresh_vendor: GatewayProcess
) -> None:
    a, b = replicas
    text = unique("expires")
    started = time.monotonic()
    assert embed(a, text, "embed-short").headers["x-gateway-cache"] == "miss"
    # Until the TTL (0.3 s) passes the answer is cached; after it, it is asked again.
    results = []
    while time.monotonic() - started < 5:
        result = embed(b, text, "embed-short").headers["x-gateway-cache"]
        results.append((time.monotonic() - started, result))
        if result == "miss":
            break
    assert results[-1][1] == "miss"
    assert results[-1][0] >= 0.3
    assert vendor_calls(fresh_vendor) == 2


def test_temperature_above_zero_is_not_cached_unless_opted_in(
    replicas: tuple[GatewayProcess, ...], fresh_vendor: GatewayProcess
) -> None:
    a, _ = replicas
    message = [{"role": "user", "content": unique("sampled")}]
    for temperature, expected in ((0.7, "bypass"), (0.7, "bypass"), (0, "miss"), (0, "hit")):
        reply = post(
            a.port,
            CHAT,
            json.dumps({"model": "chat", "messages": message, "temperature": temperature}).encode(),
            {"content-type": "application/json"},
        )
        assert reply.status == 200
        assert reply.headers["x-gateway-cache"] == expected
    assert vendor_calls(fresh_vendor, CHAT) == 3


def test_a_thundering_herd_across_two_replicas_makes_one_backend_call(
    replicas: tuple[GatewayProcess, ...], fresh_vendor: GatewayProcess
) -> None:
    control_fake_vendor(fresh_vendor.url, latency_ms=300)  # the herd arrives while it computes
    text = unique("herd")
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda i: embed(replicas[i % 2], text), range(50)))
    assert [r.status for r in replies] == [200] * 50
    assert vendor_calls(fresh_vendor) == 1
    assert sorted(r.headers["x-gateway-cache"] for r in replies).count("miss") == 1


def test_the_local_tier_is_bounded_in_bytes(fresh_vendor: GatewayProcess, tmp_path: Path) -> None:
    # 384 floats per answer: about 1.6 KB each in the local tier; 16 KB hold about 8.
    gateway = start_gateway(config(fresh_vendor.url, None, max_bytes=16 * 1024), tmp_path, env=ENV)
    try:
        texts = [unique(f"lru {i}") for i in range(30)]
        for text in texts:
            assert embed(gateway, text).status == 200
        assert value(gateway.port, "gateway_cache_local_bytes") <= 16 * 1024
        assert embed(gateway, texts[-1]).headers["x-gateway-cache"] == "hit"  # recent: kept
        assert embed(gateway, texts[0]).headers["x-gateway-cache"] == "miss"  # oldest: evicted
    finally:
        gateway.stop()


def test_redis_down_then_back_costs_no_request_and_the_cache_recovers(
    fresh_vendor: GatewayProcess, redis_server_factory, tmp_path: Path
) -> None:
    redis = redis_server_factory()
    a = start_gateway(config(fresh_vendor.url, redis.url), tmp_path / "a", env=ENV)
    b = start_gateway(config(fresh_vendor.url, redis.url), tmp_path / "b", env=ENV)
    try:
        statuses = []
        for i in range(20):
            statuses.append(embed(a, unique(f"before {i}")).status)
        redis.stop()
        for i in range(20):  # Redis is down: served from the vendor, never an error
            statuses.append(embed((a, b)[i % 2], unique(f"while down {i}")).status)
        redis.restart()
        # The replicas reconnect by themselves: a value cached by A through Redis
        # becomes a hit on B again, within a bounded time.
        deadline = time.monotonic() + 20
        recovered = False
        while time.monotonic() < deadline and not recovered:
            text = unique("after")
            statuses.append(embed(a, text).status)
            reply = embed(b, text)
            statuses.append(reply.status)
            recovered = reply.headers["x-gateway-cache"] == "hit"
        assert recovered
        assert set(statuses) == {200}
    finally:
        a.stop()
        b.stop()


def test_workers_of_one_gateway_share_the_cache_through_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    from tests.api.http_helpers import tensor_json
    from tests.conftest import digits_config

    config = digits_config()
    config["models"]["digits"]["cache"] = {"ttl_s": 600}
    config["redis"] = {"url": redis_server.url, "timeout_ms": 200}
    config["cache"] = {"signing_key_env": SIGNING_KEY_ENV}
    gateway = start_gateway(config, tmp_path, "--workers", "2", env=ENV)
    try:
        deadline = time.monotonic() + 60
        while gateway.logs().count("gateway ready (worker") < 2:
            assert time.monotonic() < deadline, gateway.logs()
            time.sleep(0.01)
        results = []
        seed = time.monotonic_ns() % 1000
        for i in range(30):  # each input twice, each request on a new connection
            body = tensor_json("pixels", "FP32", [1, 64], [float(seed + i)] * 64)
            for _ in range(2):
                reply = post(gateway.port, "/v2/models/digits/infer", body)
                assert reply.status == 200
                results.append(reply.headers["x-gateway-cache"])
        # Whichever worker the repeat lands on, it is a hit: the other worker's
        # answer reaches it through Redis (one miss per distinct input, never two).
        assert results.count("miss") == 30 and results.count("hit") == 30
        local = value(
            gateway.port, "gateway_cache_requests_total", model="digits", tier="local", result="hit"
        )
        shared = value(
            gateway.port, "gateway_cache_requests_total", model="digits", tier="redis", result="hit"
        )
        assert local + shared == 30
    finally:
        gateway.stop()
