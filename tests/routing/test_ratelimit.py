"""Tenant rate limits and the fail-open Redis client, against a real redis-server.

The GCRA arithmetic is checked with an injected clock, through both the Redis
script and the in-process fallback (they must agree exactly); the shared limit,
the time budget and the recovery run on Redis's own clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from gateway.config.schema import RateLimitConfig
from gateway.core.errors import RateLimited
from gateway.observe.metrics import REGISTRY
from gateway.redis_client import UNAVAILABLE, SharedRedis
from gateway.routing.ratelimit import RateLimiter
from tests.redis_server import RedisServer

T = TypeVar("T")

# A call to a Redis that is slow or hung comes back at its 5 ms budget, not at
# the socket timeout (PROBE_MS in these tests, also the probe's): the tests see
# it in the order of events (the call is decided while Redis is still busy, or
# while the probe it started is still waiting), never in a measured duration.
# A call to a Redis that is down does not wait at all: it never gives the event
# loop a turn.
PROBE_MS = 1000.0
SLOW_S = 0.3  # how long a slow Redis stays busy: far past the budget, well within PROBE_MS
# Where the budget is not under test: no call of a busy test host may overrun it
# (a call over budget is decided in-process, which the arithmetic would notice).
RELAXED_MS = 1000.0


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def unique_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())


async def admitted(limiter: RateLimiter, tenant: str) -> bool:
    try:
        await limiter.admit(tenant)
    except RateLimited:
        return False
    return True


async def retry_after(limiter: RateLimiter, tenant: str) -> float:
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(tenant)
    assert refused.value.retry_after_s is not None
    return refused.value.retry_after_s


async def ready(limiter: RateLimiter) -> None:
    """Connect the limiter's Redis client, as the app does at start-up."""
    if limiter.redis is not None:
        assert await limiter.redis.connect()


async def at_once(call: Awaitable[T]) -> T:
    """Await `call` and check that it waited for nothing: no socket, no timer, no
    other task. Such a call never gives the event loop a turn, so a callback
    scheduled before it is still pending when it returns."""
    turns: list[None] = []
    handle = asyncio.get_running_loop().call_soon(turns.append, None)
    result = await call
    handle.cancel()
    assert not turns, "the call waited (it gave the event loop a turn)"
    return result


@pytest.fixture(params=["shared", "local"])
def limiter_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., RateLimiter]]:
    """Limiters on a fake clock, through the Redis script or the in-process path."""
    server: RedisServer | None = None
    if request.param == "shared":
        server = request.getfixturevalue("redis_server")  # the local path needs none
    clients: list[SharedRedis] = []

    def make(limits: dict[str, RateLimitConfig], clock: FakeClock, **options) -> RateLimiter:
        shared = None
        if server is not None:
            shared = SharedRedis(server.url, timeout_ms=RELAXED_MS)
            clients.append(shared)
        return RateLimiter(limits, shared, clock=clock, **options)

    yield make
    for client in clients:
        assert not client.degraded, "Redis failed during an arithmetic test"


# --- GCRA arithmetic (injected clock) ---------------------------------------------


def test_admits_the_burst_then_one_per_interval(limiter_factory) -> None:
    tenant, clock = unique_tenant(), FakeClock()
    limiter = limiter_factory({tenant: RateLimitConfig(requests_per_minute=600)}, clock)

    async def scenario() -> None:
        await ready(limiter)
        # 600/min: one per 100 ms, and a burst of one second's worth (10).
        assert [await admitted(limiter, tenant) for _ in range(10)] == [True] * 10
        assert await retry_after(limiter, tenant) == pytest.approx(0.1)
        clock.advance(0.04)
        assert await retry_after(limiter, tenant) == pytest.approx(0.06)
        clock.advance(0.06)
        assert await admitted(limiter, tenant)
        assert await retry_after(limiter, tenant) == pytest.approx(0.1)
        # Hammered every millisecond for 2 s: exactly the rate gets through.
        count = 0
        for _ in range(2000):
            clock.advance(0.001)
            count += await admitted(limiter, tenant)
        assert count == 20
        # Idle for a while: the burst is back, and no more than the burst.
        clock.advance(30)
        assert sum([await admitted(limiter, tenant) for _ in range(15)]) == 10

    run(scenario)


def test_a_slow_rate_has_a_burst_of_one(limiter_factory) -> None:
    tenant, clock = unique_tenant(), FakeClock()
    limiter = limiter_factory({tenant: RateLimitConfig(requests_per_minute=6)}, clock)

    async def scenario() -> None:
        await ready(limiter)
        assert await admitted(limiter, tenant)
        assert await retry_after(limiter, tenant) == pytest.approx(10.0)
        clock.advance(9.5)
        assert await retry_after(limiter, tenant) == pytest.approx(0.5)
        clock.advance(0.5)
        assert await admitted(limiter, tenant)

    run(scenario)


def test_a_configured_burst_admits_that_many_at_once_then_the_rate(limiter_factory) -> None:
    tenant, clock = unique_tenant(), FakeClock()
    config = RateLimitConfig(requests_per_minute=120, burst=50)
    limiter = limiter_factory({tenant: config}, clock)

    async def scenario() -> None:
        await ready(limiter)
        # A client fanning out 50 calls: all admitted (the default burst, 2, refused 48).
        assert [await admitted(limiter, tenant) for _ in range(50)] == [True] * 50
        assert await retry_after(limiter, tenant) == pytest.approx(0.5)
        clock.advance(0.5)
        assert await admitted(limiter, tenant)
        assert not await admitted(limiter, tenant)
        # Over a minute of steady hammering after the burst: the rate, no more.
        count = 0
        for _ in range(600):
            clock.advance(0.1)
            count += await admitted(limiter, tenant)
        assert count == 120
        # Idle long enough to refill: the whole burst again, and not one more.
        clock.advance(60)
        assert sum([await admitted(limiter, tenant) for _ in range(60)]) == 50

    run(scenario)


def test_a_burst_needs_a_request_rate() -> None:
    with pytest.raises(ValueError, match="burst: applies to requests_per_minute"):
        RateLimitConfig(tokens_per_minute=1000, burst=5)


def test_refusal_names_the_limit_and_counts(limiter_factory) -> None:
    tenant, clock = unique_tenant(), FakeClock()
    limiter = limiter_factory({tenant: RateLimitConfig(requests_per_minute=60)}, clock)
    before = metric("gateway_ratelimited_total", tenant=tenant, limit="requests")

    async def scenario() -> None:
        await ready(limiter)
        await limiter.admit(tenant)
        with pytest.raises(
            RateLimited,
            match=f"tenant '{tenant}' is over its limit of 60 requests per minute; retry in 1.00 s",
        ):
            await limiter.admit(tenant)

    run(scenario)
    assert metric("gateway_ratelimited_total", tenant=tenant, limit="requests") == before + 1


def test_token_quota_refuses_until_it_refills(limiter_factory) -> None:
    tenant, clock = unique_tenant(), FakeClock()
    # 6000 tokens/min: one per 10 ms; the whole minute's quota may be spent at once.
    limiter = limiter_factory(
        {tenant: RateLimitConfig(requests_per_minute=60, tokens_per_minute=6000)}, clock
    )

    async def scenario() -> None:
        await ready(limiter)
        await limiter.admit(tenant)
        await limiter.spend_tokens(tenant, 6000)  # the quota, used up
        with pytest.raises(RateLimited, match="quota of 6000 tokens per minute") as refused:
            await limiter.admit(tenant)
        assert refused.value.retry_after_s == pytest.approx(0.01)  # one token's refill
        clock.advance(0.01)
        with pytest.raises(RateLimited, match="60 requests per minute") as refused:
            await limiter.admit(tenant)  # the quota allows, the rate not yet
        assert refused.value.retry_after_s == pytest.approx(0.99)
        clock.advance(0.99)
        assert await admitted(limiter, tenant)

        await limiter.spend_tokens(tenant, 3000)  # an overdraft: 30 s of debt
        wait = await retry_after(limiter, tenant)
        assert wait == pytest.approx(90.01 - 60 - 1)
        clock.advance(wait - 0.005)
        assert await retry_after(limiter, tenant) == pytest.approx(0.005)
        # That refusal, by the quota, did not take the request slot it would need.
        clock.advance(0.005)
        assert await admitted(limiter, tenant)
        assert await retry_after(limiter, tenant) == pytest.approx(1.0)  # 60/min again

    run(scenario)


def test_tenants_without_limits_are_always_admitted(limiter_factory) -> None:
    tenant, clock = unique_tenant(), FakeClock()
    limiter = limiter_factory({tenant: RateLimitConfig()}, clock)

    async def scenario() -> None:
        await ready(limiter)
        for name in (tenant, "unknown", None):
            assert all([await admitted(limiter, name) for _ in range(100)])
            await limiter.spend_tokens(name, 10**9)

    run(scenario)


def test_redis_script_and_fallback_decide_alike(redis_server: RedisServer) -> None:
    """The fallback is the same algorithm: a random run gives identical answers."""
    tenant, clock = unique_tenant(), FakeClock()
    limits = {tenant: RateLimitConfig(requests_per_minute=900, tokens_per_minute=30_000)}
    shared = SharedRedis(redis_server.url, timeout_ms=RELAXED_MS)
    through_redis = RateLimiter(limits, shared, clock=clock, token_burst_s=2.0)
    in_process = RateLimiter(limits, None, clock=clock, token_burst_s=2.0)
    rng = random.Random(7)

    async def decide(limiter: RateLimiter) -> tuple[str, float]:
        try:
            await limiter.admit(tenant)
        except RateLimited as refused:
            assert refused.retry_after_s is not None
            return refused.message.split(";")[0], refused.retry_after_s
        return "admitted", 0.0

    async def scenario() -> dict[str, int]:
        await ready(through_redis)
        seen: dict[str, int] = {}
        for _ in range(600):
            clock.advance(rng.choice([0.0, 0.0, 0.0, 0.01, 0.05, 0.2]))
            if rng.random() < 0.1:
                tokens = rng.randint(0, 400)
                await through_redis.spend_tokens(tenant, tokens)
                await in_process.spend_tokens(tenant, tokens)
            answer = await decide(through_redis)
            assert answer == await decide(in_process)
            # admitted, or "is" (over the rate) or "has" (used the quota)
            kind = "admitted" if answer[0] == "admitted" else answer[0].split()[2]
            seen[kind] = seen.get(kind, 0) + 1
        assert not shared.degraded
        await shared.close()
        return seen

    seen = run(scenario)
    assert min(seen.get(kind, 0) for kind in ("admitted", "is", "has")) > 30, seen


# --- Two replicas sharing one Redis (Redis's clock) --------------------------------


def test_two_replicas_hold_the_shared_limit_under_concurrent_load(
    redis_server: RedisServer,
) -> None:
    # 6000/min = 100/s with a burst of 100: over the window, admitted = 100 +
    # 100/s x elapsed. (At 600/min the +-1 request at each end of the window
    # would be a large share of a small count; the algorithm is the same.)
    rate_per_s, window_s, workers = 100, 2.5, 8
    tenant = unique_tenant()
    limits = {tenant: RateLimitConfig(requests_per_minute=rate_per_s * 60)}
    fallbacks_before = metric("gateway_ratelimit_fallback_total", op="admit")

    async def scenario() -> tuple[list[int], int, float]:
        # Each replica has its own client and connections. A relaxed budget:
        # 16 coroutines hammering one event loop (or a GC pause in a big test
        # process) can delay a call past 5 ms, and such a call is decided
        # in-process (tested below); here the shared algorithm is under test.
        clients = [SharedRedis(redis_server.url, timeout_ms=RELAXED_MS) for _ in range(2)]
        replicas = [RateLimiter(limits, client) for client in clients]
        for replica in replicas:
            await ready(replica)
        counts, calls = [0, 0], [0]
        stop_at = time.monotonic() + window_s

        async def hammer(replica: int) -> None:
            while time.monotonic() < stop_at:
                # (Not `counts[r] += await ...`: that reads counts[r] before awaiting.)
                was_admitted = await admitted(replicas[replica], tenant)
                counts[replica] += was_admitted
                calls[0] += 1
                await asyncio.sleep(0)  # a refusal may not need to wait: be fair

        start = time.monotonic()
        await asyncio.gather(*(hammer(r) for r in (0, 1) for _ in range(workers)))
        elapsed = time.monotonic() - start
        for client in clients:
            await client.close()
        return counts, calls[0], elapsed

    counts, calls, elapsed = run(scenario)
    allowed = rate_per_s * 1.0 + rate_per_s * elapsed
    total = sum(counts)
    assert abs(total - allowed) <= 0.05 * allowed, (counts, elapsed, allowed)
    assert min(counts) > 0.2 * total, counts  # both replicas really took part
    fallbacks = metric("gateway_ratelimit_fallback_total", op="admit") - fallbacks_before
    assert fallbacks < 0.01 * calls, (fallbacks, calls)  # Redis decided


# --- Redis slow, hung, down, then back ----------------------------------------------


def test_a_slow_call_falls_back_alone_and_redis_stays_up(redis_server_factory) -> None:
    """A call over budget is not an outage: a probe with time to spare says so."""
    server = redis_server_factory()
    tenant = unique_tenant()
    shared = SharedRedis(server.url, probe_timeout_ms=PROBE_MS)  # the default 5 ms budget
    limiter = RateLimiter({tenant: RateLimitConfig(requests_per_minute=60)}, shared)
    pings_failed = metric("gateway_redis_errors_total", op="ping")
    evals_failed = metric("gateway_redis_errors_total", op="eval")
    fallbacks = metric("gateway_ratelimit_fallback_total", op="admit")

    async def scenario() -> None:
        await ready(limiter)
        slow = asyncio.create_task(asyncio.to_thread(server.busy, SLOW_S))
        await asyncio.sleep(0.02)  # the server is busy now
        decision = await admitted(limiter, tenant)
        # Decided while Redis was still busy: the call did not wait for it.
        assert not slow.done()
        assert decision  # decided in-process, with the same limit
        assert metric("gateway_ratelimit_fallback_total", op="admit") == fallbacks + 1
        assert metric("gateway_redis_errors_total", op="eval") == evals_failed + 1
        assert shared.probing and shared.available
        await slow
        while shared.probing:
            await asyncio.sleep(0.001)
        assert shared.available and not shared.degraded
        assert metric("gateway_redis_up") == 1
        # The call was abandoned, not cancelled: it lands once Redis is free.
        deadline = time.monotonic() + 2
        while server.command("EXISTS", f"gw:rl:{{{tenant}}}:req") == 0:
            assert time.monotonic() < deadline, "the abandoned call never landed"
            await asyncio.sleep(0.005)
        await shared.close()

    run(scenario)
    assert metric("gateway_redis_errors_total", op="ping") == pings_failed
    assert metric("gateway_ratelimit_fallback_total", op="admit") == fallbacks + 1


def test_a_hung_redis_costs_each_call_its_budget_and_limits_fall_back(
    redis_server_factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    tenant = unique_tenant()
    shared = SharedRedis(server.url, probe_timeout_ms=PROBE_MS)  # the default 5 ms budget
    limiter = RateLimiter({tenant: RateLimitConfig(requests_per_minute=6)}, shared)
    caplog.set_level(logging.INFO, logger="gateway")
    pings_failed = metric("gateway_redis_errors_total", op="ping")
    evals_failed = metric("gateway_redis_errors_total", op="eval")
    fallbacks = metric("gateway_ratelimit_fallback_total", op="admit")

    async def scenario() -> tuple[list[bool], list[bool]]:
        await ready(limiter)
        assert await admitted(limiter, tenant)  # through Redis: 1 of 6/min, burst 1
        assert metric("gateway_redis_up") == 1
        server.pause()  # accepts connections, never answers
        paused_at = time.monotonic()
        decisions: list[bool] = []
        probe_pending: list[bool] = []
        # Each call overruns its budget (and is decided in-process) until the
        # probe it started times out too: then Redis is down.
        while not shared.degraded:
            assert time.monotonic() - paused_at < 30, "a hung Redis was never marked down"
            decisions.append(await admitted(limiter, tenant))
            probe_pending.append(shared.probing)
        for _ in range(20):  # down: no more waiting at all
            decisions.append(await at_once(admitted(limiter, tenant)))
        server.resume()
        await shared.close()
        return decisions, probe_pending

    decisions, probe_pending = run(scenario)
    # Each call came back at its budget, while the probe the first one started
    # (PROBE_MS, as long as the socket timeout) was still waiting; only the call
    # in flight when that probe gave up can have returned after it.
    assert len(probe_pending) >= 2 and all(probe_pending[:-1]), probe_pending
    # Every one of those calls ran out of time and was decided in-process; the
    # probe's timeout, once, is what marked Redis down; the calls after that
    # were skipped, not tried (and not counted as errors).
    assert metric("gateway_redis_errors_total", op="eval") == evals_failed + len(probe_pending)
    assert metric("gateway_redis_errors_total", op="ping") == pings_failed + 1
    assert metric("gateway_ratelimit_fallback_total", op="admit") == fallbacks + len(decisions)
    # In-process, with the same limit, and knowing this replica's request
    # through Redis: nothing more within those 10 s.
    assert not any(decisions)
    assert metric("gateway_redis_up") == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable (TimeoutError on ping" in m for m in messages) == 1, messages
    assert sum("enforced by each replica" in m for m in messages) == 1, messages


def test_redis_back_restores_the_shared_limit(
    redis_server_factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    outage, after = unique_tenant(), unique_tenant()
    limits = {
        outage: RateLimitConfig(requests_per_minute=600),
        after: RateLimitConfig(requests_per_minute=60),
    }
    caplog.set_level(logging.INFO, logger="gateway")
    fallbacks = metric("gateway_ratelimit_fallback_total", op="admit")

    async def admitted_while_down(replica: RateLimiter) -> bool:
        """A call to a Redis known to be down waits for nothing (a probe it
        starts after the back-off runs on its own)."""
        assert replica.redis is not None
        if replica.redis.degraded:
            return await at_once(admitted(replica, outage))
        return await admitted(replica, outage)

    async def scenario() -> None:
        clients = [
            SharedRedis(server.url, probe_timeout_ms=PROBE_MS, backoff_s=0.1) for _ in range(2)
        ]
        replica_a, replica_b = (RateLimiter(limits, client) for client in clients)
        for replica in (replica_a, replica_b):
            await ready(replica)
            assert await admitted(replica, outage)
        server.stop()  # connection refused
        deadline = time.monotonic() + 30
        while not all(client.degraded for client in clients):
            assert time.monotonic() < deadline, "a stopped Redis was never marked down"
            for replica in (replica_a, replica_b):
                await admitted_while_down(replica)
            await asyncio.sleep(0.001)
        assert metric("gateway_redis_up") == 0

        server.restart()  # same port, empty
        deadline = time.monotonic() + 30
        while any(client.degraded for client in clients):
            assert time.monotonic() < deadline, "SharedRedis did not recover by itself"
            for replica in (replica_a, replica_b):
                await admitted_while_down(replica)
            await asyncio.sleep(0.02)  # the back-off is 0.1 s
        assert metric("gateway_redis_up") == 1
        assert await admitted(replica_a, outage)
        assert server.command("EXISTS", f"gw:rl:{{{outage}}}:req") == 1

        # Shared again: B is refused what A took (B's own in-process state is empty).
        assert await admitted(replica_a, after)
        assert await retry_after(replica_b, after) == pytest.approx(1.0, abs=0.05)
        for client in clients:
            await client.close()

    run(scenario)
    assert metric("gateway_ratelimit_fallback_total", op="admit") > fallbacks
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable (ConnectionError on" in m for m in messages) == 2, messages
    assert sum("answers again: shared state restored" in m for m in messages) == 2, messages
    assert sum("enforced by each replica" in m for m in messages) == 2, messages
    assert sum("shared through redis again" in m for m in messages) == 2, messages


# --- SharedRedis itself --------------------------------------------------------------


def test_shared_redis_operations(redis_server: RedisServer) -> None:
    key = f"test:{uuid.uuid4().hex}"
    script = "return {KEYS[1], ARGV[1] + 1}"

    async def scenario() -> None:
        shared = SharedRedis(redis_server.url, timeout_ms=RELAXED_MS)
        assert await shared.connect()
        assert await shared.get(key) is None
        assert await shared.set(key, b"v1", ttl_ms=60_000) is True
        assert await shared.get(key) == b"v1"
        assert await shared.set_nx(key, b"v2", ttl_ms=60_000) is False
        assert await shared.delete(key) == 1
        assert await shared.set_nx(key, b"v3", ttl_ms=60_000) is True
        assert 0 < int(redis_server.command("PTTL", key)) <= 60_000
        assert await shared.eval_script(script, [key], [41]) == [key.encode(), 42]
        redis_server.command("SCRIPT", "FLUSH")  # as after a restart: NOSCRIPT, then reload
        assert await shared.eval_script(script, [key], [1]) == [key.encode(), 2]
        assert await shared.delete(key) == 1
        assert shared.available
        await shared.close()

    run(scenario)


def test_shared_redis_starts_by_probing(redis_server: RedisServer) -> None:
    """Before the first probe answers, calls do not wait for a connection."""

    async def scenario() -> None:
        shared = SharedRedis(redis_server.url, timeout_ms=RELAXED_MS)
        assert not shared.available and not shared.degraded
        assert await shared.get("missing") is UNAVAILABLE  # starts the probe
        assert shared.probing
        assert await shared.connect()  # waits for that probe
        assert await shared.get("missing") is None
        await shared.close()

    run(scenario)


def test_shared_redis_survives_a_new_event_loop(redis_server: RedisServer) -> None:
    shared = SharedRedis(redis_server.url, timeout_ms=RELAXED_MS)
    key = f"test:{uuid.uuid4().hex}"

    async def first() -> bool | object:
        assert await shared.connect()
        return await shared.set(key, b"x", ttl_ms=10_000)

    assert asyncio.run(first()) is True
    # The first loop is gone: the client is rebuilt on this one.
    assert asyncio.run(shared.get(key)) == b"x"
    asyncio.run(shared.close())


def test_shared_redis_backs_off_without_touching_the_network(
    redis_server_factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    clock = FakeClock()
    # Back-off 1 s doubling to 10 s; the budget is not under test.
    shared = SharedRedis(server.url, timeout_ms=RELAXED_MS, clock=clock)
    caplog.set_level(logging.INFO, logger="gateway.redis")

    def errors(op: str) -> float:
        return metric("gateway_redis_errors_total", op=op)

    async def scenario() -> None:
        assert await shared.connect()
        assert await shared.get("k") is None
        server.stop()
        gets, pings = errors("get"), errors("ping")
        assert await shared.get("k") is UNAVAILABLE
        assert errors("get") == gets + 1 and shared.degraded
        # Each probe fails: the wait doubles, capped at 10 s; in between, calls
        # return at once, start nothing and count nothing (nothing was tried).
        for backoff in (1, 2, 4, 8, 10, 10):
            clock.advance(backoff - 0.01)
            for _ in range(3):
                assert await at_once(shared.get("k")) is UNAVAILABLE
                assert not shared.probing
            clock.advance(0.01)
            assert await shared.get("k") is UNAVAILABLE  # starts the probe...
            assert shared.probing
            assert not await shared.connect()  # ...which fails
            pings += 1
            assert (errors("get"), errors("ping")) == (gets + 1, pings)
        server.restart()
        clock.advance(10)
        assert await shared.set("k", b"back", ttl_ms=1000) is UNAVAILABLE
        assert await shared.connect()
        assert not shared.degraded and metric("gateway_redis_up") == 1
        assert await shared.set("k", b"back", ttl_ms=1000) is True
        assert await shared.get("k") == b"back"
        # Recovery resets the back-off to 1 s.
        server.stop()
        assert await shared.get("k") is UNAVAILABLE
        clock.advance(1.0)
        assert await shared.get("k") is UNAVAILABLE and shared.probing
        assert not await shared.connect()
        assert (errors("get"), errors("ping")) == (gets + 2, pings + 1)
        await shared.close()

    run(scenario)
    messages = [
        r.getMessage()
        for r in caplog.records
        if r.name == "gateway.redis" and r.levelno >= logging.INFO
    ]
    assert len(messages) == 4, messages  # connected, down, up again, down
    assert "connected" in messages[0]
    assert "unavailable (ConnectionError on get" in messages[1]
    assert "answers again" in messages[2]
