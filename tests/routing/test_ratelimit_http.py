"""Tenant rate limits through the pipeline: two gateway replicas sharing one
real redis-server hold one tenant's limit together, and answer 429 with
Retry-After beyond it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.api.http_helpers import post
from tests.conftest import digits_config, start_gateway
from tests.observe.inprocess import digits_backend, digits_model, gateway
from tests.redis_server import RedisServer

KEY_ENV = "RATELIMIT_HTTP_TEST_KEY"
KEY = "tenant-key-for-the-rate-limit-test"
ADMIN_KEY_ENV = "RATELIMIT_HTTP_TEST_ADMIN_KEY"  # a config with tenants needs one
ADMIN_KEY = "admin-key-for-the-rate-limit-test"
PER_MINUTE = 1200  # 20/s, with a burst of one second's worth (20)
BODY = json.dumps(
    {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
).encode()


def tenant_config(redis_url: str) -> dict:
    config = digits_config(admin_key_env=ADMIN_KEY_ENV)
    # A generous budget: this test is about the shared limit, and a call over budget
    # would be decided by the per-replica fallback (tested on its own elsewhere).
    config["redis"] = {"url": redis_url, "timeout_ms": 500}
    config["tenants"] = [
        {
            "name": "checkout",
            "key_env": KEY_ENV,
            "models": ["digits"],
            "rate_limit": {"requests_per_minute": PER_MINUTE},
        }
    ]
    return config


def infer(port: int, key: str | None = KEY):
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return post(port, "/v2/models/digits/infer", BODY, headers)


def test_two_replicas_hold_one_tenant_limit_together(redis_server_factory, tmp_path: Path) -> None:
    redis: RedisServer = redis_server_factory()
    env = {KEY_ENV: KEY, ADMIN_KEY_ENV: ADMIN_KEY}
    replicas = [
        start_gateway(tenant_config(redis.url), tmp_path / f"r{i}", env=env) for i in range(2)
    ]
    try:
        assert infer(replicas[0].port, key=None).status == 401  # the tenant needs its key
        statuses: Counter[int] = Counter()
        retry_after: set[str] = set()
        lock = threading.Lock()
        stop_at = time.monotonic() + 3.0

        def hammer(port: int) -> None:
            while time.monotonic() < stop_at:
                reply = infer(port)
                with lock:
                    statuses[reply.status] += 1
                    if reply.status == 429:
                        retry_after.add(reply.headers.get("retry-after", ""))

        started = time.monotonic()
        threads = [
            threading.Thread(target=hammer, args=(r.port,)) for r in replicas for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        # The first request above (401) was refused before the limiter: not counted.
        allowed = PER_MINUTE / 60 * (1 + elapsed)  # the burst, then the rate
        assert set(statuses) == {200, 429}
        assert abs(statuses[200] - allowed) <= 0.05 * allowed + 1, (statuses, allowed)
        assert retry_after and all(v.isdigit() and int(v) >= 1 for v in retry_after)
    finally:
        for replica in replicas:
            replica.stop()


def test_a_tenant_with_a_burst_may_fan_out_that_many_calls(monkeypatch) -> None:
    # 120/min admits 2 at once by default; `burst: 50` lets a client send 50
    # in parallel, and the 51st is refused with the time to wait.
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv(ADMIN_KEY_ENV, ADMIN_KEY)
    config = {
        "server": {"admin_key_env": ADMIN_KEY_ENV},
        "tenants": [
            {
                "name": "fan-out",
                "key_env": KEY_ENV,
                "rate_limit": {"requests_per_minute": 120, "burst": 50},
            }
        ],
        "backends": {"digits-cpu": digits_backend()},
        "models": {"digits": digits_model()},
    }
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}

    async def run() -> tuple[list[int], httpx.Response]:
        async with gateway(config) as gw:
            replies = await asyncio.gather(
                *(
                    gw.client.post("/v2/models/digits/infer", content=BODY, headers=headers)
                    for _ in range(50)
                )
            )
            refused = await gw.client.post("/v2/models/digits/infer", content=BODY, headers=headers)
            return [r.status_code for r in replies], refused

    statuses, refused = asyncio.run(run())
    assert statuses == [200] * 50
    assert refused.status_code == 429
    assert 0 < float(refused.headers["retry-after"]) <= 1
