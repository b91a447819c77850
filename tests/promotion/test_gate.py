"""The gate's decisions as functions of their numbers: the offline
evaluation's threshold and the canary watch's verdicts, on a clock the test
moves by hand."""

from __future__ import annotations

import pytest

from gateway.config.schema import PromotionConfig, SloConfig
from gateway.promotion.gate import CanaryPolicy, CanaryWatch, Evaluation


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = CanaryPolicy(
    watch_s=60.0,
    max_watch_s=600.0,
    min_requests=10,
    max_burn_rate=14.4,
    max_disagreement=0.05,
    availability=0.99,
    latency_ms=50.0,
    latency_target=0.9,
)


def watch() -> tuple[CanaryWatch, Clock]:
    clock = Clock()
    return CanaryWatch(POLICY, clock), clock


def test_the_evaluation_refuses_a_drop_past_the_threshold() -> None:
    assert Evaluation("accuracy", 0.97, 0.96, max_drop=0.01, samples=360).passed
    assert Evaluation("accuracy", 0.97, 0.99, max_drop=0.0, samples=360).passed
    refused = Evaluation("accuracy", 0.972222, 0.841667, max_drop=0.01, samples=360)
    assert not refused.passed
    assert refused.numbers()["drop"] == pytest.approx(0.130555)
    assert not Evaluation("accuracy", 0.9, float("-inf"), max_drop=0.5, samples=1).passed


def test_no_verdict_before_min_requests_even_when_they_all_fail() -> None:
    canary, clock = watch()
    for _ in range(9):
        canary.record(0.001, failed=True)
    clock.now += 120
    assert canary.verdict() is None
    canary.record(0.001, failed=True)
    verdict = canary.verdict()
    assert verdict is not None and verdict.outcome == "rollback"
    assert "availability burn 100.00 > 14.4 (10 of 10 failed)" in verdict.reasons[0]


def test_a_good_canary_is_promoted_only_once_watch_s_has_passed() -> None:
    canary, clock = watch()
    for _ in range(50):
        canary.record(0.002, failed=False, rows_compared=4)
    assert canary.verdict() is None
    assert canary.next_deadline_s() == pytest.approx(60.0)
    clock.now += 59.9
    assert canary.verdict() is None
    clock.now += 0.1
    verdict = canary.verdict()
    assert verdict is not None and verdict.outcome == "promote" and not verdict.reasons


def test_latency_over_the_objective_burns_the_budget() -> None:
    canary, _ = watch()
    # 1 of 10 slow: exactly on budget for a 0.9 target (burn 1).
    for slow in [True] + [False] * 9:
        canary.record(0.080 if slow else 0.010, failed=False)
    assert canary.latency_burn() == pytest.approx(1.0)
    assert canary.verdict() is None
    canary, _ = watch()
    for _ in range(10):
        canary.record(0.080, failed=False)
    assert canary.latency_burn() == pytest.approx(10.0)
    assert canary.verdict() is None  # 10 is under 14.4
    canary = CanaryWatch(CanaryPolicy(**{**POLICY.__dict__, "max_burn_rate": 5.0}), Clock())
    for _ in range(10):
        canary.record(0.080, failed=False)
    verdict = canary.verdict()
    assert verdict is not None and verdict.outcome == "rollback"
    assert verdict.reasons == ("latency burn 10.00 > 5 (10 of 10 over 50 ms)",)


def test_disagreement_past_the_threshold_rolls_back_at_once() -> None:
    canary, _ = watch()
    for i in range(10):
        canary.record(0.001, failed=False, rows_compared=10, rows_disagreeing=1 if i < 5 else 0)
    assert canary.disagreement() == pytest.approx(0.05)
    assert canary.verdict() is None  # at the threshold: not past it
    canary.record(0.001, failed=False, rows_compared=10, rows_disagreeing=1)
    verdict = canary.verdict()
    assert verdict is not None and verdict.outcome == "rollback"
    assert verdict.reasons[0].startswith("disagreement 0.0545 > 0.05 (6 of 110 rows)")


def test_too_little_traffic_by_max_watch_s_is_inconclusive() -> None:
    canary, clock = watch()
    canary.record(0.001, failed=False)
    assert canary.next_deadline_s() == pytest.approx(600.0)
    clock.now += 599
    assert canary.verdict() is None
    clock.now += 1
    verdict = canary.verdict()
    assert verdict is not None and verdict.outcome == "rollback"
    assert verdict.reasons[0].startswith("inconclusive: 1 canary request(s) in 600 s")


def test_the_policy_takes_the_models_slo_or_availability_alone() -> None:
    promotion = PromotionConfig(watch_s=5, min_requests=3)
    with_slo = CanaryPolicy.of(promotion, SloConfig(latency_ms=20, availability=0.95))
    assert (with_slo.latency_ms, with_slo.availability, with_slo.watch_s) == (20, 0.95, 5)
    without = CanaryPolicy.of(promotion, None)
    assert without.latency_ms is None and without.availability == 0.999
    canary = CanaryWatch(without, Clock())
    for _ in range(3):
        canary.record(9.0, failed=False)  # no latency objective: never slow
    assert canary.slow == 0 and canary.latency_burn() == 0.0


def test_max_watch_s_must_leave_room_for_watch_s() -> None:
    with pytest.raises(ValueError, match="max_watch_s"):
        PromotionConfig(watch_s=10, max_watch_s=5)
