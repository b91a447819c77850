"""What a tenant's spend budget is (routing/budget.py enforces it): its limits
in nano-dollars per UTC day and month, and the periods a moment falls in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.config.schema import BudgetConfig

NANO = 1_000_000_000  # nano-dollars per dollar
DAY, MONTH = "day", "month"


@dataclass(frozen=True, slots=True)
class Periods:
    """The UTC day and month a moment falls in, and when they end (epoch s)."""

    day: str  # 2026-12-07
    month: str  # 2026-12
    start: float  # the day's
    day_end: float
    month_end: float

    @classmethod
    def at(cls, now: float) -> Periods:
        t = datetime.fromtimestamp(now, UTC)
        start = datetime(t.year, t.month, t.day, tzinfo=UTC)
        next_month = datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)
        return cls(
            f"{t:%Y-%m-%d}",
            f"{t:%Y-%m}",
            start.timestamp(),
            (start + timedelta(days=1)).timestamp(),
            next_month.timestamp(),
        )

    def end(self, period: str) -> float:
        return self.day_end if period == DAY else self.month_end


@dataclass(frozen=True)
class TenantBudget:
    """One tenant's limits in nano-dollars (None: no limit for that period)."""

    tenant: str
    usd_per_day: float | None
    usd_per_month: float | None
    day_limit: int | None
    month_limit: int | None
    alert_at: tuple[float, ...]
    key_base: str  # gw:budget:{tenant}:

    @classmethod
    def build(cls, tenant: str, config: BudgetConfig, key_prefix: str) -> TenantBudget:
        day, month = config.usd_per_day, config.usd_per_month
        return cls(
            tenant=tenant,
            usd_per_day=day,
            usd_per_month=month,
            day_limit=None if day is None else round(day * NANO),
            month_limit=None if month is None else round(month * NANO),
            alert_at=tuple(sorted(set(config.alert_at))),
            key_base=f"{key_prefix}{{{tenant}}}:",
        )

    def limits(self) -> list[tuple[str, int, float]]:
        """(period, limit n$, limit $) of each period with a limit."""
        found = []
        if self.day_limit is not None and self.usd_per_day is not None:
            found.append((DAY, self.day_limit, self.usd_per_day))
        if self.month_limit is not None and self.usd_per_month is not None:
            found.append((MONTH, self.month_limit, self.usd_per_month))
        return found
