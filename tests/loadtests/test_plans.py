"""The load shapes' plans (loadtests/locust/plans.py): users and spawn rate over time."""

from __future__ import annotations

import argparse

import pytest

from loadtests.locust.plans import SoakPlan, SpikePlan, StepPlan, parse_duration


def test_step_adds_users_each_step_then_stops() -> None:
    plan = StepPlan(users=10, step_s=30, steps=3, spawn_rate=5)
    assert [plan.tick(t) for t in (0, 29.9, 30, 59.9, 60, 89.9)] == [
        (10, 5),
        (10, 5),
        (20, 5),
        (20, 5),
        (30, 5),
        (30, 5),
    ]
    assert plan.tick(90) is None


def test_spike_goes_from_base_to_peak_and_back_then_stops() -> None:
    plan = SpikePlan(base_users=2, peak_users=40, before_s=10, spike_s=5, after_s=20, spawn_rate=40)
    assert plan.tick(0) == (2, 40)
    assert plan.tick(9.99) == (2, 40)
    assert plan.tick(10) == (40, 40)
    assert plan.tick(14.99) == (40, 40)
    assert plan.tick(15) == (2, 40)
    assert plan.tick(34.99) == (2, 40)
    assert plan.tick(35) is None


def test_soak_ramps_over_its_ramp_time_and_holds() -> None:
    plan = SoakPlan(users=30, ramp_s=60, hold_s=3600)
    assert plan.tick(0) == (30, 0.5)
    assert plan.tick(3659) == (30, 0.5)
    assert plan.tick(3660) is None
    assert SoakPlan(users=8, ramp_s=0, hold_s=10).tick(0) == (8, 8.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1.5s", 1.5), (" 2H ", 7200)],
)
def test_durations_read_like_locusts_run_time(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5 minutes", "-3s", "1h30"])
def test_a_duration_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
