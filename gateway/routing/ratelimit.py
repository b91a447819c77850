"""Tenant rate limits and token quotas, held across replicas through Redis.

`RateLimiter` enforces each tenant's `rate_limit` (config: `requests_per_minute`,
`tokens_per_minute`):

* `admit(tenant)` before a request: refuses (RateLimited -> 429 + Retry-After)
  when the request rate is exceeded or the token quota is used up;
* `spend_tokens(tenant, n)` after a response: charges the tokens it used.
  Tokens are known only afterwards, so they are charged even past the quota
  (the request was served); the debt then keeps the tenant out until it is
  paid back at the quota's rate.

Algorithm: GCRA (the generic cell rate algorithm), one key per tenant per
dimension holding a "theoretical arrival time" (TAT): O(1) memory and one
atomic Lua script per decision, whatever the load. With `T` the emission
interval (60 s / limit) and `C` the capacity (burst window), a request is
admitted when `max(TAT, now) + T - now <= C`, which moves TAT by `T`; the
refused request's Retry-After is the excess. Equivalent to a token bucket of
`C / T` tokens refilled continuously, with no refill timer.

Burst: a tenant's `burst` (requests) is how many it may send at once, after
which the rate applies: with 120/min and `burst: 50`, fifty parallel calls are
admitted, then one per 500 ms. Any 60 s window then admits at most
`limit + burst` requests. The default is `request_burst_s` (1 s) worth of the
rate, at least one request (600/min: 10 at once; 120/min: 2): within +1.7% of
the limit in any window, which is right for steady traffic but refuses a
client that fans out (50 calls at 120/min: 48 refused), so such tenants set
`burst` to their parallelism. Tokens get `token_burst_s` (60 s): the whole
minute's quota may be spent at once (one long completion must fit), then it
refills continuously; `admit` refuses while not even one token is left.

Clock: the shared path takes the time from Redis (`TIME` inside the script):
one clock for every replica, so host clock skew cannot hand one replica extra
capacity or lock another out. `clock` injects a time instead (seconds), for
tests that check the arithmetic exactly; the in-process fallback runs the same
arithmetic on `time.monotonic()`.

Redis unavailable (`SharedRedis` returns UNAVAILABLE: down, or this one call
over its time budget): the decision falls back to an in-process limiter with
the same algorithm and limits, so each replica enforces the full limit on its
own (the fleet admits up to `replicas x limit`: degraded, but never unlimited
and never stricter than configured). That limiter also records every request
Redis admitted and every token spent here, so a replica falls back from what it
has itself admitted lately, not from a full burst. Logged once on each outage
and recovery; every fallback decision counts in
`gateway_ratelimit_fallback_total{op}`.

Keys: `gw:rl:{tenant}:req` and `gw:rl:{tenant}:tok` (µs TATs, expiring once
idle). The braces are a Redis Cluster hash tag: both keys of a tenant live in
one slot, so one script may touch both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from gateway.config.schema import RateLimitConfig, TenantConfig
from gateway.core.errors import RateLimited
from gateway.observe.metrics import REGISTRY
from gateway.redis_client import UNAVAILABLE, SharedRedis

if TYPE_CHECKING:
    from typing import TypedDict, Unpack

    from gateway.redis_client import MaybeUnavailable

    class _Options(TypedDict, total=False):
        """RateLimiter's keyword-only options (for_tenants passes them on)."""

        request_burst_s: float
        token_burst_s: float
        clock: Callable[[], float] | None
        key_prefix: str


log = logging.getLogger("gateway.routing.ratelimit")

REQUEST_BURST_S = 1.0
TOKEN_BURST_S = 60.0

RATELIMIT_FALLBACK = Counter(
    "gateway_ratelimit_fallback_total",
    "Rate-limit decisions made in this replica alone because Redis was unavailable",
    ["op"],
    registry=REGISTRY,
)
RATELIMITED = Counter(
    "gateway_ratelimited_total",
    "Requests refused by a tenant's rate limit or token quota",
    ["tenant", "limit"],
    registry=REGISTRY,
)

_US = 1_000_000
_REQUESTS, _TOKENS = 1, 2  # which limit refused, as the admit script reports it

# Times are integer microseconds, so the script and the in-process limiter
# compute exactly the same numbers. GET returns false for a missing key.
_NOW_LUA = """
local now = tonumber(ARGV[#ARGV])
if not now then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

# KEYS: request TAT, token TAT. ARGV: µs per request (0: no limit), request
# capacity µs, µs per token (0: no quota), token capacity µs, now µs or "".
# Returns {1, 0, 0} admitted, or {0, wait µs, 1 requests | 2 tokens}.
_ADMIT_LUA = (
    _NOW_LUA
    + """
local per_token = tonumber(ARGV[3])
if per_token > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or now), now)
  local wait = tat + per_token - tonumber(ARGV[4]) - now
  if wait > 0 then return {0, wait, 2} end
end
local per_request = tonumber(ARGV[1])
if per_request > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now) + per_request
  local wait = tat - tonumber(ARGV[2]) - now
  if wait > 0 then return {0, wait, 1} end
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
return {1, 0, 0}
"""
)

# KEYS: token TAT. ARGV: µs per token, tokens, now µs or "".
_SPEND_LUA = (
    _NOW_LUA
    + """
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
tat = tat + tonumber(ARGV[1]) * tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return 1
"""
)


@dataclass(frozen=True)
class TenantLimits:
    """One tenant's limits as GCRA parameters (integer µs; 0: no such limit)."""

    tenant: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    us_per_request: int
    request_capacity_us: int
    us_per_token: int
    token_capacity_us: int
    request_key: str
    token_key: str

    @classmethod
    def build(
        cls,
        tenant: str,
        config: RateLimitConfig,
        *,
        request_burst_s: float,
        token_burst_s: float,
        key_prefix: str,
    ) -> TenantLimits:
        rpm, tpm = config.requests_per_minute, config.tokens_per_minute
        per_request = round(60 * _US / rpm) if rpm else 0
        per_token = round(60 * _US / tpm) if tpm else 0
        # GCRA admits n requests at once when n emission intervals fit the capacity.
        if config.burst is not None:
            request_capacity = config.burst * per_request
        else:
            request_capacity = max(per_request, round(request_burst_s * _US))
        return cls(
            tenant=tenant,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            us_per_request=per_request,
            request_capacity_us=request_capacity,
            us_per_token=per_token,
            token_capacity_us=max(per_token, round(token_burst_s * _US)),
            request_key=f"{key_prefix}{{{tenant}}}:req",
            token_key=f"{key_prefix}{{{tenant}}}:tok",
        )


class LocalGcra:
    """The admit and spend scripts' arithmetic on in-process state.

    Used while Redis is unavailable; `tat` maps a key to its TAT (µs).
    """

    def __init__(self) -> None:
        self.tat: dict[str, int] = {}

    def admit(self, limits: TenantLimits, now: int) -> tuple[bool, int, int]:
        """(admitted, wait µs, which limit refused), as the admit script returns it."""
        if limits.us_per_token:
            tat = max(self.tat.get(limits.token_key, now), now)
            wait = tat + limits.us_per_token - limits.token_capacity_us - now
            if wait > 0:
                return False, wait, _TOKENS
        if limits.us_per_request:
            tat = max(self.tat.get(limits.request_key, now), now) + limits.us_per_request
            wait = tat - limits.request_capacity_us - now
            if wait > 0:
                return False, wait, _REQUESTS
            self.tat[limits.request_key] = tat
        return True, 0, 0

    def record(self, limits: TenantLimits, now: int) -> None:
        """Count a request admitted elsewhere (by Redis), without judging it."""
        if limits.us_per_request:
            tat = max(self.tat.get(limits.request_key, now), now)
            self.tat[limits.request_key] = tat + limits.us_per_request

    def spend(self, limits: TenantLimits, tokens: int, now: int) -> None:
        tat = max(self.tat.get(limits.token_key, now), now)
        self.tat[limits.token_key] = tat + limits.us_per_token * tokens


class RateLimiter:
    """Per-tenant request rates and token quotas, shared by all replicas.

    Tenants without limits (or unknown to it) are always admitted, without a
    call to Redis. Without `redis`, limits are per process. A Redis failure
    never fails a request: see the module docstring for the fallback.
    """

    def __init__(
        self,
        limits: Mapping[str, RateLimitConfig],
        redis: SharedRedis | None = None,
        *,
        request_burst_s: float = REQUEST_BURST_S,
        token_burst_s: float = TOKEN_BURST_S,
        clock: Callable[[], float] | None = None,
        key_prefix: str = "gw:rl:",
    ) -> None:
        self.redis = redis
        self._clock = clock
        self._limits = {
            tenant: TenantLimits.build(
                tenant,
                config,
                request_burst_s=request_burst_s,
                token_burst_s=token_burst_s,
                key_prefix=key_prefix,
            )
            for tenant, config in limits.items()
            if config.requests_per_minute or config.tokens_per_minute
        }
        self._local = LocalGcra()
        self._in_fallback = False

    @classmethod
    def for_tenants(
        cls,
        tenants: Iterable[TenantConfig],
        redis: SharedRedis | None = None,
        **options: Unpack[_Options],
    ) -> RateLimiter:
        """The limiter for the config's `tenants[].rate_limit`."""
        return cls({t.name: t.rate_limit for t in tenants if t.rate_limit}, redis, **options)

    def limits(self, tenant: str) -> TenantLimits | None:
        return self._limits.get(tenant)

    async def admit(self, tenant: str | None) -> None:
        """Return if `tenant` may send a request now; raise RateLimited if not."""
        limits = self._limits.get(tenant) if tenant is not None else None
        if limits is None:
            return
        now = self._now_us()
        reply: Any | MaybeUnavailable = UNAVAILABLE
        if self.redis is not None:
            reply = await self.redis.eval_script(
                _ADMIT_LUA,
                [limits.request_key, limits.token_key],
                [
                    limits.us_per_request,
                    limits.request_capacity_us,
                    limits.us_per_token,
                    limits.token_capacity_us,
                    "" if now is None else now,
                ],
            )
        admitted: int  # a bool from the local limiter, 0 or 1 from the script
        if reply is UNAVAILABLE:
            self._fell_back("admit")
            admitted, wait_us, refused_by = self._local.admit(limits, self._local_now_us(now))
        else:
            self._shared_again()
            admitted, wait_us, refused_by = (int(part) for part in reply)
            if admitted:
                self._local.record(limits, self._local_now_us(now))
        if not admitted:
            raise self._refusal(limits, refused_by, wait_us / _US)

    async def spend_tokens(self, tenant: str | None, tokens: int) -> None:
        """Charge `tokens` to the tenant's quota (after the response: never refuses)."""
        limits = self._limits.get(tenant) if tenant is not None else None
        if limits is None or not limits.us_per_token or tokens <= 0:
            return
        now = self._now_us()
        reply: Any | MaybeUnavailable = UNAVAILABLE
        if self.redis is not None:
            reply = await self.redis.eval_script(
                _SPEND_LUA,
                [limits.token_key],
                [limits.us_per_token, int(tokens), "" if now is None else now],
            )
        if reply is UNAVAILABLE:
            self._fell_back("spend")
        else:
            self._shared_again()
        self._local.spend(limits, int(tokens), self._local_now_us(now))

    def _now_us(self) -> int | None:
        """The injected time, or None: Redis takes its own TIME."""
        return None if self._clock is None else round(self._clock() * _US)

    @staticmethod
    def _local_now_us(now: int | None) -> int:
        return round(time.monotonic() * _US) if now is None else now

    def _refusal(self, limits: TenantLimits, refused_by: int, wait_s: float) -> RateLimited:
        if refused_by == _TOKENS:
            RATELIMITED.labels(limits.tenant, "tokens").inc()
            message = (
                f"tenant '{limits.tenant}' has used its quota of "
                f"{limits.tokens_per_minute} tokens per minute; retry in {wait_s:.2f} s"
            )
        else:
            RATELIMITED.labels(limits.tenant, "requests").inc()
            message = (
                f"tenant '{limits.tenant}' is over its limit of "
                f"{limits.requests_per_minute} requests per minute; "
                f"retry in {wait_s:.2f} s"
            )
        return RateLimited(message, retry_after_s=wait_s)

    def _fell_back(self, op: str) -> None:
        if self.redis is None:
            return  # per-process limits by configuration, not a fallback
        RATELIMIT_FALLBACK.labels(op).inc()
        # One call over its budget is counted, not logged: only an outage is news.
        if self.redis.degraded and not self._in_fallback:
            self._in_fallback = True
            log.warning(
                "redis unavailable: tenant rate limits are enforced by each replica "
                "on its own until it answers again"
            )

    def _shared_again(self) -> None:
        if self._in_fallback:
            self._in_fallback = False
            log.info("tenant rate limits are shared through redis again")
