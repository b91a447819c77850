"""Tenant spend budgets end to end: two gateway replicas sharing one real
redis-server and a chat model on the fake vendor with a price per request.
One replica spends the tenant's day budget (answers and streams alike); the
other, which never served the tenant, refuses its first request, 429 with
Retry-After until UTC midnight; both expose the spent ratio."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from testkit.fake_vendor import start_fake_vendor
from tests.api.http_helpers import Reply, post
from tests.conftest import start_gateway
from tests.metrics_reader import value
from tests.redis_server import RedisServer

KEY_ENV = "BUDGET_HTTP_TEST_KEY"
KEY = "tenant-key-for-the-budget-test"
ADMIN_KEY_ENV = "BUDGET_HTTP_TEST_ADMIN_KEY"  # a config with tenants needs one
ADMIN_KEY = "admin-key-for-the-budget-test"
VENDOR_KEY_ENV = "BUDGET_HTTP_TEST_VENDOR_KEY"
VENDOR_KEY = "vendor-key-for-the-budget-test"
TENANT = "acme"
PRICE = 0.01  # per request: three answers spend the budget
BUDGET = 0.03


def config(vendor_url: str, redis_url: str) -> dict:
    return {
        "server": {"admin_key_env": ADMIN_KEY_ENV},
        "redis": {"url": redis_url, "timeout_ms": 500},  # generous: the budget is under test
        "tenants": [
            {
                "name": TENANT,
                "key_env": KEY_ENV,
                "budget": {"usd_per_day": BUDGET, "usd_per_month": 10.0, "alert_at": [0.5, 0.8]},
            }
        ],
        "backends": {
            "vendor": {
                "type": "openai",
                "base_url": f"http://{vendor_url}/v1",
                "api_key_env": VENDOR_KEY_ENV,
                "model": "fake-chat",
                "retries": {"max": 0},
                "cost": {"usd_per_request": PRICE},
            }
        },
        "models": {"chat": {"kind": "chat", "route": {"backends": ["vendor"]}}},
    }


def chat(port: int, stream: bool = False) -> Reply:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    return post(port, "/v1/chat/completions", json.dumps(body), headers)


def test_a_budget_spent_on_one_replica_is_refused_by_the_other(
    redis_server_factory, tmp_path: Path
) -> None:
    to_midnight = 86_400 - time.time() % 86_400
    if to_midnight < 120:
        pytest.skip("too close to UTC midnight: the day's budget would reset mid-test")
    redis: RedisServer = redis_server_factory()
    vendor = start_fake_vendor(api_key=VENDOR_KEY)
    env = {KEY_ENV: KEY, ADMIN_KEY_ENV: ADMIN_KEY, VENDOR_KEY_ENV: VENDOR_KEY}
    replicas = []
    try:
        for name in ("a", "b"):
            replicas.append(start_gateway(config(vendor.url, redis.url), tmp_path / name, env=env))
        a, b = (replica.port for replica in replicas)

        # Answers and streams alike are charged; a charge lands after its answer,
        # so at most the request sent meanwhile overshoots the budget.
        answered = 0
        while True:
            reply = chat(a, stream=answered % 2 == 1)
            if reply.status != 200:
                break
            answered += 1
            assert answered <= 5, "the budget was never enforced"
        assert reply.status == 429, reply.body
        assert answered in (3, 4), answered
        day_key = f"gw:budget:{{{TENANT}}}:day:{time.strftime('%Y-%m-%d', time.gmtime())}"
        spent = int(str(redis.command("GET", day_key)))  # nano-dollars
        assert spent >= round(BUDGET * 1e9)

        # B never served the tenant: its first request reads the shared total.
        refused = chat(b)
        assert refused.status == 429, refused.body
        message = refused.error
        assert f"tenant '{TENANT}' has spent its budget of $0.03 per day (UTC)" in message
        assert "resets at " in message and "T00:00:00Z" in message
        assert "gw:budget" not in message and KEY not in message
        wait = int(refused.headers["retry-after"])
        assert abs(wait - (86_400 - time.time() % 86_400)) <= 5
        assert chat(b, stream=True).status == 429  # a stream too, before it starts

        for port, refusals in ((a, 1), (b, 2)):
            labels = {"tenant": TENANT}
            assert value(port, "gateway_budget_spent_ratio", **labels, period="day") >= 1.0
            month = value(port, "gateway_budget_spent_ratio", **labels, period="month")
            assert month == pytest.approx(spent / 1e9 / 10.0, rel=0.34)
            assert (
                value(
                    port, "gateway_budget_alert_threshold", **labels, period="day", threshold="0.8"
                )
                == 0.8
            )
            assert value(port, "gateway_budget_exceeded_total", **labels, period="day") == refusals
    finally:
        for replica in replicas:
            replica.stop()
        vendor.stop()
