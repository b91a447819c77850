"""Tenant spend budgets per UTC day and month, held across replicas through Redis.

`Budgets` enforces each tenant's `budget` (config: `usd_per_day`,
`usd_per_month`, `alert_at`) with the cost the gateway computes per answer
(the backends' `cost` prices, `gateway_cost_usd_total`):

* `admit(tenant)` before a request to a priced model: refuses (RateLimited ->
  429, Retry-After until the period ends) once the tenant's spend in the
  current UTC day or month has reached its limit;
* `charge(tenant, usd)` after the answer (a stream: once it ends): adds its
  cost. A request admitted before the limit was reached is always charged,
  so spend may overshoot the limit by the cost of the requests in flight at
  that moment (plus, across replicas, what the others admit within
  `refresh_s`: below).

Keys: `gw:budget:{tenant}:day:YYYY-MM-DD` and `gw:budget:{tenant}:month:YYYY-MM`,
integers in nano-dollars (INCRBY: exact, no float drift however many charges;
exact to 2^53 n$ ~ $9M per period, where Lua's doubles stop counting units). The
period is in the key, so a new day starts from zero with no reset job, and
each key expires (EXPIREAT) a day after its period ends: late charges of a
replica whose clock lags still land, and nothing outlives its use. The braces
are a Redis Cluster hash tag: one tenant's keys share a slot, so one script
reads or charges them all. Periods follow this host's UTC clock (NTP keeps
replicas within far less than a request of each other).

Round trips: tenants without a budget cost a dict lookup, never a call to
Redis. For a tenant with one, a charge is one script (INCRBY + EXPIREAT of
both keys) whose reply is the new totals; a check decides on the totals this
replica last saw, read again at most every `refresh_s` (1 s) in the background
while the request goes on (only the first request of a period in a replica
waits for the read; concurrent ones share it). So a replica learns of the
others' spend within `refresh_s`, of its own at once.

Redis unavailable (`SharedRedis` returns UNAVAILABLE): fail open, as rate
limits do. Each replica decides on the last totals it read plus what it has
charged since, so the fleet may overspend by what the other replicas charge
during the outage, never by more than `replicas x` the limit. Charges made while
Redis was known to be down (the call was skipped without touching the network)
are kept and added to Redis by the tenant's first charge once it is back; a
charge whose call failed midway may have landed and is not sent again (never
charged twice; at most the charges in flight when Redis failed are lost).
Logged once per outage and recovery; every fallback decision counts in
`gateway_budget_fallback_total{op}`. Without `redis`, budgets are per process.

Metrics: `gateway_budget_spent_ratio{tenant,period}` (spend / limit, as this
replica last saw it; set on each read and charge, and to 0 when a period ends
so an idle tenant's alert resolves), `gateway_budget_alert_threshold{tenant,
period,threshold}` (each `alert_at` share: the alert rules compare the ratio
with it, so thresholds live in the gateway config, not in the rules), and
`gateway_budget_exceeded_total{tenant,period}` (requests refused).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from gateway.config.schema import BudgetConfig, TenantConfig
from gateway.core.errors import RateLimited
from gateway.observe.metrics import REGISTRY
from gateway.redis_client import UNAVAILABLE, SharedRedis
from gateway.routing.budget_periods import DAY, MONTH, NANO, Periods, TenantBudget

log = logging.getLogger("gateway.routing.budget")

REFRESH_S = 1.0
GRACE_S = 86_400  # keys outlive their period by this much (a lagging clock's late charges)

# With several workers each one reads the same shared totals: the latest set is right.
SPENT_RATIO = Gauge(
    "gateway_budget_spent_ratio",
    "Share of a tenant's budget spent in the current period, as this replica last saw it",
    ["tenant", "period"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
ALERT_THRESHOLD = Gauge(
    "gateway_budget_alert_threshold",
    "The shares of a tenant's budget at which an alert fires (config alert_at)",
    ["tenant", "period", "threshold"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
EXCEEDED = Counter(
    "gateway_budget_exceeded_total",
    "Requests refused because the tenant's budget for the period was spent",
    ["tenant", "period"],
    registry=REGISTRY,
)
BUDGET_FALLBACK = Counter(
    "gateway_budget_fallback_total",
    "Budget checks and charges decided in this replica alone because Redis was unavailable",
    ["op"],
    registry=REGISTRY,
)

# Missing keys read as 0 (GET returns false).
_READ_LUA = """
return {redis.call('GET', KEYS[1]) or '0', redis.call('GET', KEYS[2]) or '0'}
"""

# KEYS: the keys to charge. ARGV: per key, nano-dollars then its EXPIREAT (s).
# Returns the new totals, in KEYS' order.
_CHARGE_LUA = """
local totals = {}
for i, key in ipairs(KEYS) do
  totals[i] = redis.call('INCRBY', key, ARGV[2 * i - 1])
  redis.call('EXPIREAT', key, ARGV[2 * i])
end
return totals
"""


class _Spend:
    """What a replica knows of one tenant's spend in the current periods."""

    __slots__ = (
        "day",
        "day_key",
        "day_shared",
        "month",
        "month_key",
        "month_shared",
        "read_at",
        "tenant",
    )

    def __init__(self, budget: TenantBudget, periods: Periods) -> None:
        self.tenant = budget.tenant
        self.day = periods.day
        self.month = periods.month
        self.day_key = f"{budget.key_base}day:{periods.day}"
        self.month_key = f"{budget.key_base}month:{periods.month}"
        # The highest totals Redis reported (totals only grow within a period,
        # so a reply overtaken by a newer one cannot lower them).
        self.day_shared = 0
        self.month_shared = 0
        self.read_at = -math.inf  # monotonic time of the last read attempt

    def roll(self, budget: TenantBudget, periods: Periods) -> None:
        if self.month != periods.month:
            self.month = periods.month
            self.month_key = f"{budget.key_base}month:{periods.month}"
            self.month_shared = 0
            self.read_at = -math.inf
        if self.day != periods.day:
            self.day = periods.day
            self.day_key = f"{budget.key_base}day:{periods.day}"
            self.day_shared = 0
            self.read_at = -math.inf


class Budgets:
    """Per-tenant spend budgets, shared by all replicas.

    One per process: a reload `configure`s it (new limits, the same knowledge
    of what was spent). Tenants without a budget are always admitted and never
    charged, without a call to Redis. A Redis failure never fails a request:
    see the module docstring for the fallback.
    """

    def __init__(
        self,
        budgets: Mapping[str, BudgetConfig],
        redis: SharedRedis | None = None,
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] | None = None,
        key_prefix: str = "gw:budget:",
    ) -> None:
        self.refresh_s = refresh_s
        self.key_prefix = key_prefix
        # Epoch seconds for the periods; staleness on the monotonic clock unless
        # a test injects one clock for both.
        self._clock = clock or time.time
        self._monotonic = clock or time.monotonic
        self._periods = Periods.at(self._clock())
        self._spend: dict[str, _Spend] = {}
        # Per tenant: charges Redis has not seen yet (key -> [n$, EXPIREAT]).
        self._owed: dict[str, dict[str, list[int]]] = {}
        self._reads: dict[str, asyncio.Future[_Spend]] = {}
        self._background: set[asyncio.Future[Any]] = set()
        self._in_fallback = False
        self._rollover: asyncio.TimerHandle | None = None
        self._thresholds: set[tuple[str, str, str]] = set()
        self._ratios: set[tuple[str, str]] = set()
        self._budgets: dict[str, TenantBudget] = {}
        self.redis: SharedRedis | None = None
        self.configure(budgets, redis)

    @classmethod
    def for_tenants(
        cls, tenants: Iterable[TenantConfig], redis: SharedRedis | None = None, **options: Any
    ) -> Budgets:
        """The budgets of the config's `tenants[].budget`."""
        return cls({t.name: t.budget for t in tenants if t.budget}, redis, **options)

    def configure(self, budgets: Mapping[str, BudgetConfig], redis: SharedRedis | None) -> None:
        """Enforce `budgets` through `redis` from now on (a reload); what is known of
        the spend is kept: it belongs to the periods, not to the limits."""
        built = {
            tenant: TenantBudget.build(tenant, config, self.key_prefix)
            for tenant, config in budgets.items()
        }
        self.redis = redis
        self._budgets = built  # one store: a request sees the old limits or the new
        thresholds = {
            (tenant, period, f"{share:g}"): share
            for tenant, budget in built.items()
            for period, _, _ in budget.limits()
            for share in budget.alert_at
        }
        for labels, share in thresholds.items():
            ALERT_THRESHOLD.labels(*labels).set(share)
        _remove(ALERT_THRESHOLD, self._thresholds - set(thresholds))
        self._thresholds = set(thresholds)
        configured = {(t, p) for t, b in built.items() for p, _, _ in b.limits()}
        _remove(SPENT_RATIO, self._ratios - configured)
        self._ratios &= configured
        # Copies: a reload runs this off the event loop, which may add a tenant meanwhile.
        for tenant, spend in list(self._spend.items()):
            budget = built.get(tenant)
            if budget is None:
                self._spend.pop(tenant, None)
                self._owed.pop(tenant, None)
            else:
                self._publish(budget, spend)

    def limits(self, tenant: str) -> TenantBudget | None:
        return self._budgets.get(tenant)

    # -- the request path -------------------------------------------------------------

    async def admit(self, tenant: str) -> None:
        """Return if `tenant` may spend now; raise RateLimited once its budget is spent."""
        budget = self._budgets.get(tenant)
        if budget is None:
            return
        now = self._clock()
        periods = self._periods_at(now)
        spend = self._spend.get(tenant)
        if spend is None or spend.day != periods.day or spend.month != periods.month:
            if self.redis is None:
                spend = self._rolled(budget, periods)
            else:  # nothing known of this period here: the one wait for Redis
                spend = await self._read(budget)
        elif self.redis is not None and self._monotonic() - spend.read_at >= self.refresh_s:
            spend.read_at = self._monotonic()  # one refresh at a time
            self._in_background(self._read(budget))
        self._judge(budget, spend, periods, now)

    async def charge(self, tenant: str, usd: float) -> None:
        """Add an answer's cost to the tenant's spend (never refuses: it was served)."""
        budget = self._budgets.get(tenant)
        if budget is None or not usd > 0.0:
            return
        amount = round(usd * NANO)
        now = self._clock()
        periods = self._periods_at(now)
        spend = self._rolled(budget, periods)
        charges = {
            spend.day_key: [amount, int(periods.day_end) + GRACE_S],
            spend.month_key: [amount, int(periods.month_end) + GRACE_S],
        }
        owed = self._owed.get(tenant)
        if owed:
            for key in [k for k, (_, expires) in owed.items() if expires <= now]:
                del owed[key]  # its period is over and its key gone: nothing to add to
        redis = self.redis
        if redis is None:  # per process by configuration: everything stays owed
            self._owe(tenant, charges)
            self._publish(budget, spend)
            return
        up = redis.available
        if up and owed:
            # Sent with this charge, and forgotten: were the call to fail midway
            # it may still have landed, and a charge is never sent twice.
            del self._owed[tenant]
            for key, (n, expires) in owed.items():
                if key in charges:
                    charges[key][0] += n
                else:
                    charges[key] = [n, expires]
        keys = list(charges)
        args = [value for key in keys for value in charges[key]]
        reply = await redis.eval_script(_CHARGE_LUA, keys, args)
        if reply is UNAVAILABLE:
            self._fell_back("charge")
            if not up:  # skipped without touching the network: owed until Redis is back
                self._owe(tenant, charges)
        else:
            self._shared_again()
            totals = dict(zip(keys, (int(total) for total in reply), strict=True))
            if spend.day_key in totals:  # else: the period rolled over meanwhile
                spend.day_shared = max(spend.day_shared, totals[spend.day_key])
            if spend.month_key in totals:
                spend.month_shared = max(spend.month_shared, totals[spend.month_key])
        self._publish(budget, spend)

    async def settle(self) -> None:
        """Wait for the reads started in the background (for tests)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def spent(self, tenant: str) -> dict[str, float]:
        """What this replica knows the tenant spent in the current periods ($)."""
        budget = self._budgets.get(tenant)
        if budget is None:
            return {}
        spend = self._rolled(budget, self._periods_at(self._clock()))
        day, month = self._totals(spend)
        return {DAY: day / NANO, MONTH: month / NANO}

    def roll_over(self) -> None:
        """Start the periods that began since the last call: their gauges drop to
        what is known of them (0 until something is charged). A timer calls it
        at each UTC midnight, so an idle tenant's ratio does not stay at
        yesterday's value."""
        self._rollover = None
        periods = self._periods_at(self._clock())
        for tenant, spend in list(self._spend.items()):
            budget = self._budgets.get(tenant)
            if budget is not None:
                spend.roll(budget, periods)
                self._publish(budget, spend)

    # -- internals ----------------------------------------------------------------------

    def _periods_at(self, now: float) -> Periods:
        periods = self._periods
        if not periods.start <= now < periods.day_end:
            periods = self._periods = Periods.at(now)
        return periods

    def _rolled(self, budget: TenantBudget, periods: Periods) -> _Spend:
        spend = self._spend.get(budget.tenant)
        if spend is None:
            spend = self._spend[budget.tenant] = _Spend(budget, periods)
        elif spend.day != periods.day or spend.month != periods.month:
            spend.roll(budget, periods)
        return spend

    def _totals(self, spend: _Spend) -> tuple[int, int]:
        """The day's and month's spend (n$): Redis's totals plus what it has not seen."""
        owed = self._owed.get(spend.tenant)
        if not owed:
            return spend.day_shared, spend.month_shared
        day = owed.get(spend.day_key)
        month = owed.get(spend.month_key)
        return (
            spend.day_shared + (day[0] if day else 0),
            spend.month_shared + (month[0] if month else 0),
        )

    async def _read(self, budget: TenantBudget) -> _Spend:
        """The tenant's totals from Redis; concurrent reads of a tenant share one call."""
        read = self._reads.get(budget.tenant)
        if read is None:
            read = asyncio.ensure_future(self._fetch(budget))
            self._reads[budget.tenant] = read
            tenant = budget.tenant

            def done(_: asyncio.Future[_Spend]) -> None:
                self._reads.pop(tenant, None)

            read.add_done_callback(done)
        return await asyncio.shield(read)

    async def _fetch(self, budget: TenantBudget) -> _Spend:
        # The periods of when it runs: a read queued before midnight must not
        # take the tenant back to yesterday.
        spend = self._rolled(budget, self._periods_at(self._clock()))
        spend.read_at = self._monotonic()
        if self.redis is None:
            return spend
        day_key, month_key = spend.day_key, spend.month_key
        reply = await self.redis.eval_script(_READ_LUA, [day_key, month_key], [])
        if reply is UNAVAILABLE:
            self._fell_back("check")
        else:
            self._shared_again()
            day, month = (int(total) for total in reply)
            if spend.day_key == day_key:  # the period may have rolled over meanwhile
                spend.day_shared = max(spend.day_shared, day)
            if spend.month_key == month_key:
                spend.month_shared = max(spend.month_shared, month)
        self._publish(budget, spend)
        return spend

    def _judge(self, budget: TenantBudget, spend: _Spend, periods: Periods, now: float) -> None:
        day, month = self._totals(spend)
        spent: list[tuple[str, float]] = []
        if budget.day_limit is not None and day >= budget.day_limit:
            spent.append((DAY, budget.usd_per_day or 0.0))
        if budget.month_limit is not None and month >= budget.month_limit:
            spent.append((MONTH, budget.usd_per_month or 0.0))
        if not spent:
            return
        # Both spent: the month's reset is the one that lets requests through.
        period, usd = max(spent, key=lambda item: periods.end(item[0]))
        EXCEEDED.labels(budget.tenant, period).inc()
        reset = periods.end(period)
        wait_s = max(reset - now, 1.0)
        reset_text = datetime.fromtimestamp(reset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise RateLimited(
            f"tenant '{budget.tenant}' has spent its budget of {_usd(usd)} per {period} "
            f"(UTC); it resets at {reset_text}, in {_duration(wait_s)}",
            retry_after_s=wait_s,
        )

    def _owe(self, tenant: str, charges: Mapping[str, list[int]]) -> None:
        owed = self._owed.setdefault(tenant, {})
        for key, (amount, expires) in charges.items():
            entry = owed.get(key)
            if entry is None:
                owed[key] = [amount, expires]
            else:
                entry[0] += amount

    def _publish(self, budget: TenantBudget, spend: _Spend) -> None:
        day, month = self._totals(spend)
        for period, limit, _ in budget.limits():
            SPENT_RATIO.labels(budget.tenant, period).set((day if period == DAY else month) / limit)
            self._ratios.add((budget.tenant, period))
        self._arm_rollover()

    def _arm_rollover(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # off the loop (a test's direct call): nothing to time
        timer = self._rollover
        if timer is not None and not timer.cancelled() and timer.when() > loop.time():
            return
        periods = Periods.at(self._clock())
        delay = max(periods.day_end - self._clock(), 0.0) + 0.001
        self._rollover = loop.call_later(delay, self.roll_over)

    def _in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _fell_back(self, op: str) -> None:
        BUDGET_FALLBACK.labels(op).inc()
        if self.redis is not None and self.redis.degraded and not self._in_fallback:
            self._in_fallback = True
            log.warning(
                "redis unavailable: tenant budgets are enforced by each replica from the "
                "last totals it saw plus its own spend until it answers again"
            )

    def _shared_again(self) -> None:
        if self._in_fallback:
            self._in_fallback = False
            log.info("tenant budgets are shared through redis again")


def _remove(gauge: Gauge, labelsets: Iterable[tuple[str, ...]]) -> None:
    for labels in labelsets:
        # NaN first: with several workers the value lives on in a shared file
        # after remove(), and a NaN compares false, so no alert fires on it.
        gauge.labels(*labels).set(math.nan)
        gauge.remove(*labels)


def _usd(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.6g}"


def _duration(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    days, minutes = divmod(minutes, 1440)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    parts.append(f"{minutes}m")
    return " ".join(parts)
