"""Tenant spend budgets against a real redis-server, in process, on an injected
clock: the periods and their reset, exact sums, the shared totals between two
replicas, the round trips a request costs, the gauges, reconfiguration, and
the fail-open rule when Redis is down (and what it owes once it is back)."""

from __future__ import annotations

import asyncio
import calendar
import logging
import re
import uuid

import pytest
from pydantic import ValidationError

from gateway.config.schema import AuditConfig, BudgetConfig, TenantConfig
from gateway.core.errors import RateLimited
from gateway.observe.metrics import REGISTRY
from gateway.redis_client import SharedRedis
from gateway.routing.budget import Budgets
from gateway.routing.budget_periods import Periods
from tests.redis_server import RedisServer
from tests.routing.test_ratelimit import RELAXED_MS, FakeClock, at_once, metric, run


def epoch(text: str) -> float:
    """2026-12-07T23:00:00 (UTC) as epoch seconds."""
    parts = [int(p) for p in re.split(r"[-T:]", text)]
    return float(calendar.timegm((*parts, 0, 0, 0)))


def tenant() -> str:
    return f"b-{uuid.uuid4().hex[:12]}"


async def admitted(budgets: Budgets, name: str) -> bool:
    try:
        await budgets.admit(name)
    except RateLimited:
        return False
    return True


async def refusal(budgets: Budgets, name: str) -> RateLimited:
    with pytest.raises(RateLimited) as refused:
        await budgets.admit(name)
    return refused.value


def sample(name: str, **labels: str) -> float | None:
    """A sample's value, None when it is not exposed."""
    return REGISTRY.get_sample_value(name, labels)


def evalsha_calls(server: RedisServer) -> int:
    """Scripts Redis has run so far (every budget call is one)."""
    stats = str(server.command("INFO", "commandstats"))
    return sum(int(n) for n in re.findall(r"cmdstat_eval(?:sha)?:calls=(\d+)", stats))


# --- periods and refusals ----------------------------------------------------------


def test_periods_are_utc_days_and_months() -> None:
    p = Periods.at(epoch("2026-12-31T23:59:59"))
    assert (p.day, p.month) == ("2026-12-31", "2026-12")
    assert p.day_end == p.month_end == epoch("2027-01-01T00:00:00")
    p = Periods.at(epoch("2027-02-28T00:00:00"))
    assert (p.day, p.month, p.start) == ("2027-02-28", "2027-02", epoch("2027-02-28T00:00:00"))
    assert p.month_end == epoch("2027-03-01T00:00:00")


def test_a_spent_day_refuses_until_midnight_and_the_month_goes_on(
    redis_server: RedisServer,
) -> None:
    name = tenant()
    clock = FakeClock(epoch("2026-12-07T23:00:00"))

    async def scenario() -> None:
        shared = SharedRedis(redis_server.url, timeout_ms=RELAXED_MS)
        budgets = Budgets(
            {name: BudgetConfig(usd_per_day=1.0, usd_per_month=1.5)}, shared, clock=clock
        )
        assert await shared.connect()
        refused_before = metric("gateway_budget_exceeded_total", tenant=name, period="day")
        for _ in range(10):  # 0.1 ten times: exactly the limit, no float drift
            assert await admitted(budgets, name)
            await budgets.charge(name, 0.1)
        assert budgets.spent(name) == {"day": 1.0, "month": 1.0}
        key = f"gw:budget:{{{name}}}:day:2026-12-07"
        assert redis_server.command("GET", key) == "1000000000"
        # It expires a day after its period: no reset job, nothing left behind.
        expires = int(str(redis_server.command("EXPIRETIME", key)))
        assert expires == epoch("2026-12-09T00:00:00")

        refused = await refusal(budgets, name)
        assert refused.retry_after_s == pytest.approx(3600)
        text = str(refused)
        assert f"tenant '{name}' has spent its budget of $1.00 per day" in text
        assert "resets at 2026-12-08T00:00:00Z, in 1h 0m" in text
        assert "gw:budget" not in text  # never a key
        assert metric("gateway_budget_exceeded_total", tenant=name, period="day") == (
            refused_before + 1
        )

        clock.advance(3600)  # midnight: a new day, the same month
        assert await admitted(budgets, name)
        await budgets.charge(name, 0.5)
        refused = await refusal(budgets, name)  # now the month is spent
        assert "$1.50 per month" in str(refused)
        assert refused.retry_after_s == pytest.approx(epoch("2027-01-01T00:00:00") - clock())
        await shared.close()

    run(scenario)


def test_a_budget_needs_a_limit_and_thresholds_below_one() -> None:
    with pytest.raises(ValidationError, match="set usd_per_day, usd_per_month or both"):
        BudgetConfig()
    with pytest.raises(ValidationError):
        BudgetConfig(usd_per_day=1.0, alert_at=[0.5, 1.0])  # 1.0 has its own alert
    with pytest.raises(ValidationError):
        BudgetConfig(usd_per_day=0)
    tenant_config = TenantConfig(name="t", key_env="K", budget={"usd_per_month": 100})
    assert tenant_config.budget is not None and tenant_config.budget.alert_at == [0.5, 0.8]
    with pytest.raises(ValidationError, match="only a file sink can expire records"):
        AuditConfig(sink="stdout", payload_retention_days=30)


# --- shared between replicas, and what a request costs -----------------------------


def test_a_replica_refuses_what_another_spent(redis_server: RedisServer) -> None:
    name = tenant()
    clock = FakeClock(epoch("2026-12-07T12:00:00"))
    config = {name: BudgetConfig(usd_per_day=0.03)}

    async def scenario() -> None:
        clients = [SharedRedis(redis_server.url, timeout_ms=RELAXED_MS) for _ in range(2)]
        a, b = (Budgets(config, client, clock=clock, refresh_s=1.0) for client in clients)
        for client in clients:
            assert await client.connect()
        assert await admitted(b, name)  # B has read the totals: nothing spent yet
        for _ in range(3):
            assert await admitted(a, name)
            await a.charge(name, 0.01)
        assert not await admitted(a, name)  # A knows at once (its charges' replies)
        # B decides on what it read, for up to refresh_s; then it reads again.
        assert await at_once(admitted(b, name))
        clock.advance(1.0)
        assert await at_once(admitted(b, name))  # decided as before; the read runs meanwhile
        await b.settle()
        assert not await admitted(b, name)
        assert metric("gateway_budget_spent_ratio", tenant=name, period="day") == 1.0
        for client in clients:
            await client.close()

    run(scenario)


def test_round_trips_only_for_tenants_with_a_budget(redis_server_factory) -> None:
    server = redis_server_factory()
    paying, free = tenant(), tenant()
    clock = FakeClock(epoch("2026-12-07T12:00:00"))

    async def scenario() -> None:
        shared = SharedRedis(server.url, timeout_ms=RELAXED_MS)
        budgets = Budgets({paying: BudgetConfig(usd_per_month=10.0)}, shared, clock=clock)
        assert await shared.connect()
        # Load both scripts (the first call of each: EVALSHA, NOSCRIPT, then EVAL).
        assert await admitted(budgets, paying)
        await budgets.charge(paying, 0.001)
        before = evalsha_calls(server)
        for _ in range(10):
            assert await at_once(admitted(budgets, free))
            await at_once(budgets.charge(free, 1.0))
        assert evalsha_calls(server) == before

        # The first requests of a period share one read; then none until refresh_s.
        clock.advance(86_400)
        assert all(await asyncio.gather(*(admitted(budgets, paying) for _ in range(20))))
        assert evalsha_calls(server) == before + 1
        for _ in range(10):
            assert await at_once(admitted(budgets, paying))
        assert evalsha_calls(server) == before + 1
        await budgets.charge(paying, 0.002)  # one script: both periods' keys
        assert evalsha_calls(server) == before + 2
        assert budgets.spent(paying) == {"day": 0.002, "month": pytest.approx(0.003)}
        await shared.close()

    run(scenario)


# --- gauges and reconfiguration ------------------------------------------------------


def test_ratio_and_threshold_gauges_follow_spend_periods_and_config(
    redis_server: RedisServer,
) -> None:
    name = tenant()
    clock = FakeClock(epoch("2026-12-07T12:00:00"))

    async def scenario() -> None:
        shared = SharedRedis(redis_server.url, timeout_ms=RELAXED_MS)
        budgets = Budgets(
            {name: BudgetConfig(usd_per_day=2.0, usd_per_month=8.0, alert_at=[0.25, 0.9])},
            shared,
            clock=clock,
        )
        assert await shared.connect()
        for period in ("day", "month"):
            for share in (0.25, 0.9):
                labels = {"tenant": name, "period": period, "threshold": f"{share:g}"}
                assert metric("gateway_budget_alert_threshold", **labels) == share
        await budgets.charge(name, 1.5)
        assert metric("gateway_budget_spent_ratio", tenant=name, period="day") == 0.75
        assert metric("gateway_budget_spent_ratio", tenant=name, period="month") == 0.1875

        clock.advance(86_400)  # the next day: an idle tenant's day ratio drops at midnight
        budgets.roll_over()
        assert metric("gateway_budget_spent_ratio", tenant=name, period="day") == 0.0
        assert metric("gateway_budget_spent_ratio", tenant=name, period="month") == 0.1875

        # A reload: new limits judge what was spent; a removed threshold is gone.
        await budgets.charge(name, 0.5)
        budgets.configure({name: BudgetConfig(usd_per_day=0.5, alert_at=[0.9])}, shared)
        assert metric("gateway_budget_spent_ratio", tenant=name, period="day") == 1.0
        assert not await admitted(budgets, name)
        threshold = "gateway_budget_alert_threshold"
        assert metric(threshold, tenant=name, period="day", threshold="0.9") == 0.9
        assert sample(threshold, tenant=name, period="day", threshold="0.25") is None
        assert sample(threshold, tenant=name, period="month", threshold="0.9") is None
        assert sample("gateway_budget_spent_ratio", tenant=name, period="month") is None
        budgets.configure({}, shared)  # no budget any more: always admitted, no gauges
        assert await at_once(admitted(budgets, name))
        assert sample("gateway_budget_spent_ratio", tenant=name, period="day") is None
        assert sample(threshold, tenant=name, period="day", threshold="0.9") is None
        await shared.close()

    run(scenario)


# --- Redis down: fail open, then catch up ------------------------------------------


def test_redis_down_fails_open_per_replica_and_what_was_owed_lands_after(
    redis_server_factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    name = tenant()
    clock = FakeClock(epoch("2026-12-07T12:00:00"))
    caplog.set_level(logging.INFO, logger="gateway")
    checks = metric("gateway_budget_fallback_total", op="check")
    charges = metric("gateway_budget_fallback_total", op="charge")
    key = f"gw:budget:{{{name}}}:day:2026-12-07"

    async def scenario() -> None:
        shared = SharedRedis(server.url, timeout_ms=RELAXED_MS)
        budgets = Budgets({name: BudgetConfig(usd_per_day=1.0)}, shared, clock=clock)
        assert await shared.connect()
        await budgets.charge(name, 0.25)
        assert await admitted(budgets, name)

        server.stop()  # connection refused: the next call marks Redis down at once
        clock.advance(1.0)
        assert await admitted(budgets, name)  # decided on what it knew; the read fails
        await budgets.settle()
        assert shared.degraded
        for _ in range(3):  # charged here, owed to Redis
            await at_once(budgets.charge(name, 0.25))
            clock.advance(1.0)
        refused = await refusal(budgets, name)  # the replica's own count: 1.0 spent
        assert "per day" in str(refused)
        assert metric("gateway_budget_spent_ratio", tenant=name, period="day") == 1.0

        server.restart()  # same port, empty: what the old server held is gone
        assert await shared.connect()
        await budgets.charge(name, 0.01)  # with what was owed
        assert server.command("GET", key) == "760000000"  # 3 x 0.25 + 0.01, once
        await budgets.charge(name, 0.01)
        assert server.command("GET", key) == "770000000"

        # Shared again: a replica with no memory of its own sees the total.
        other = Budgets({name: BudgetConfig(usd_per_day=0.77)}, shared, clock=clock)
        assert not await admitted(other, name)
        await shared.close()

    run(scenario)
    assert metric("gateway_budget_fallback_total", op="check") > checks
    assert metric("gateway_budget_fallback_total", op="charge") == charges + 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("budgets are enforced by each replica" in m for m in messages) == 1, messages
    assert sum("budgets are shared through redis again" in m for m in messages) == 1, messages


def test_without_redis_budgets_are_per_process() -> None:
    name = tenant()
    clock = FakeClock(epoch("2026-12-07T12:00:00"))
    fallbacks = [metric("gateway_budget_fallback_total", op=op) for op in ("check", "charge")]

    async def scenario() -> None:
        budgets = Budgets({name: BudgetConfig(usd_per_day=0.02)}, None, clock=clock)
        assert await at_once(admitted(budgets, name))
        await at_once(budgets.charge(name, 0.01))
        assert await at_once(admitted(budgets, name))
        await at_once(budgets.charge(name, 0.01))
        assert not await at_once(admitted(budgets, name))
        clock.advance(86_400)
        assert await at_once(admitted(budgets, name))

    run(scenario)
    # Per process by configuration: not a fallback.
    assert [metric("gateway_budget_fallback_total", op=op) for op in ("check", "charge")] == (
        fallbacks
    )
