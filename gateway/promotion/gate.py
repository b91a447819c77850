"""The promotion gate's decisions, as pure functions of their numbers: the
offline evaluation's (candidate against serving version on the golden set) and
the canary watch's (SLO burn and disagreement of the live canary).

No I/O and no event loop here: the clock is injected, so the verdict logic is
tested without waiting (tests/promotion/test_gate.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.config.schema import PromotionConfig, SloConfig

# Without a model `slo`, the canary is held to this availability (the schema's
# default objective) and to no latency objective.
DEFAULT_AVAILABILITY = 0.999
# Metrics are rounded in reports; a drop equal to the threshold passes.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Evaluation:
    """One metric on the golden set, for the serving version and the candidate."""

    metric: str
    serving: float
    candidate: float
    max_drop: float
    samples: int

    @property
    def drop(self) -> float:
        """How much worse the candidate is (negative: better)."""
        return self.serving - self.candidate

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop + _EPSILON

    def numbers(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "serving": round(self.serving, 6),
            "candidate": round(self.candidate, 6),
            "drop": round(self.drop, 6),
            "max_drop": self.max_drop,
            "samples": self.samples,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class CanaryPolicy:
    """What the canary is held to: the config's `promotion` thresholds and the
    model's SLO objectives."""

    watch_s: float
    max_watch_s: float
    min_requests: int
    max_burn_rate: float
    max_disagreement: float
    availability: float = DEFAULT_AVAILABILITY
    latency_ms: float | None = None
    latency_target: float = 0.99

    @classmethod
    def of(cls, promotion: PromotionConfig, slo: SloConfig | None) -> CanaryPolicy:
        return cls(
            watch_s=promotion.watch_s,
            max_watch_s=promotion.max_watch_s,
            min_requests=promotion.min_requests,
            max_burn_rate=promotion.max_burn_rate,
            max_disagreement=promotion.max_disagreement,
            availability=slo.availability if slo else DEFAULT_AVAILABILITY,
            latency_ms=slo.latency_ms if slo else None,
            latency_target=slo.latency_target if slo else 0.99,
        )


@dataclass(frozen=True)
class Verdict:
    outcome: Literal["promote", "rollback"]
    reasons: tuple[str, ...] = ()


class CanaryWatch:
    """The canary's answers so far and the verdict they give.

    One sample per answer of the candidate (or failure): its latency, whether
    it failed, and how many of its rows were compared with the serving
    version's answer and disagreed. No verdict before `min_requests` samples,
    so a decision never rests on a handful of requests; past them, a rollback
    comes as soon as a threshold is crossed, a promotion only once `watch_s`
    has passed too. Without enough samples by `max_watch_s` the canary is
    inconclusive and rolled back.
    """

    def __init__(self, policy: CanaryPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self.started = clock()
        self.requests = 0
        self.errors = 0
        self.slow = 0
        self.rows_compared = 0
        self.rows_disagreeing = 0

    def record(
        self, latency_s: float, failed: bool, rows_compared: int = 0, rows_disagreeing: int = 0
    ) -> None:
        self.requests += 1
        if failed:
            self.errors += 1
            return
        latency_ms = self.policy.latency_ms
        if latency_ms is not None and latency_s * 1000.0 > latency_ms:
            self.slow += 1
        self.rows_compared += rows_compared
        self.rows_disagreeing += rows_disagreeing

    def elapsed_s(self) -> float:
        return self._clock() - self.started

    def availability_burn(self) -> float:
        """observe/slo.py's burn rate: the bad share over the budget's share."""
        if not self.requests:
            return 0.0
        return (self.errors / self.requests) / (1.0 - self.policy.availability)

    def latency_burn(self) -> float:
        answered = self.requests - self.errors
        if self.policy.latency_ms is None or not answered:
            return 0.0
        return (self.slow / answered) / (1.0 - self.policy.latency_target)

    def disagreement(self) -> float:
        return self.rows_disagreeing / self.rows_compared if self.rows_compared else 0.0

    def numbers(self) -> dict[str, Any]:
        return {
            "elapsed_s": round(self.elapsed_s(), 3),
            "requests": self.requests,
            "errors": self.errors,
            "slow": self.slow,
            "latency_ms_objective": self.policy.latency_ms,
            "availability_burn": round(self.availability_burn(), 3),
            "latency_burn": round(self.latency_burn(), 3),
            "max_burn_rate": self.policy.max_burn_rate,
            "rows_compared": self.rows_compared,
            "rows_disagreeing": self.rows_disagreeing,
            "disagreement": round(self.disagreement(), 4),
            "max_disagreement": self.policy.max_disagreement,
            "min_requests": self.policy.min_requests,
            "watch_s": self.policy.watch_s,
        }

    def verdict(self) -> Verdict | None:
        """The decision the numbers give now, or None: keep watching."""
        policy = self.policy
        elapsed = self.elapsed_s()
        if self.requests < policy.min_requests:
            if elapsed >= policy.max_watch_s:
                return Verdict(
                    "rollback",
                    (
                        f"inconclusive: {self.requests} canary request(s) in "
                        f"{policy.max_watch_s:g} s, {policy.min_requests} needed",
                    ),
                )
            return None
        reasons = []
        if self.availability_burn() > policy.max_burn_rate:
            reasons.append(
                f"availability burn {self.availability_burn():.2f} > {policy.max_burn_rate:g} "
                f"({self.errors} of {self.requests} failed)"
            )
        if self.latency_burn() > policy.max_burn_rate:
            reasons.append(
                f"latency burn {self.latency_burn():.2f} > {policy.max_burn_rate:g} "
                f"({self.slow} of {self.requests - self.errors} over {policy.latency_ms:g} ms)"
            )
        if self.disagreement() > policy.max_disagreement:
            reasons.append(
                f"disagreement {self.disagreement():.4f} > {policy.max_disagreement:g} "
                f"({self.rows_disagreeing} of {self.rows_compared} rows)"
            )
        if reasons:
            return Verdict("rollback", tuple(reasons))
        if elapsed >= policy.watch_s:
            return Verdict("promote")
        return None

    def next_deadline_s(self) -> float:
        """Seconds until the clock alone could change the verdict."""
        elapsed = self.elapsed_s()
        limit = (
            self.policy.watch_s
            if self.requests >= self.policy.min_requests
            else self.policy.max_watch_s
        )
        return max(0.0, limit - elapsed)
