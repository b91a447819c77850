"""The in-process SLO tracker, driven by an injected clock."""

from __future__ import annotations

import pytest

from gateway.config.schema import ModelConfig
from gateway.observe import slo as slo_module
from gateway.observe.metrics import REGISTRY
from gateway.observe.slo import (
    BURN_WINDOWS,
    SHARED_DIR_ENV,
    SLO_FILE_PREFIX,
    SharedSloTracker,
    SloObjectives,
    SloTracker,
    availability_of,
    parse_window,
)

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def model(slo: dict | None = None) -> ModelConfig:
    doc: dict = {"kind": "chat", "route": {"backends": ["b"]}}
    if slo is not None:
        doc["slo"] = slo
    return ModelConfig.model_validate(doc)


def tracker(clock: Clock, **slo: object) -> SloTracker:
    config = {
        "latency_ms": 50,
        "latency_target": 0.99,
        "availability": 0.99,
        "window": "30d",
        **slo,
    }
    return SloTracker.from_config({"m": model(config), "plain": model()}, clock=clock)


def report(t: SloTracker, kind: str = "availability") -> dict:
    return t.snapshot()["models"]["m"]["objectives"][kind]


def record_many(t: SloTracker, n: int, good: bool | None = True, latency_s: float = 0.01) -> None:
    for _ in range(n):
        t.record("m", latency_s, good)


# -- windows ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30d", 30 * 86400),
        ("7d", 7 * 86400),
        ("1h", 3600),
        ("90m", 5400),
        ("1w", 7 * 86400),
        ("1h30m", 5400),
        ("120s", 120),
        ("28d", 28 * 86400),
    ],
)
def test_windows_parse(text: str, seconds: int) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "expected a duration"),
        ("30", "expected a duration"),
        ("d", "expected a duration"),
        ("30 days", "expected a duration"),
        ("1.5h", "expected a duration"),
        ("-1h", "expected a duration"),
        ("1y", "expected a duration"),
        ("0m", "whole number of minutes"),
        ("90s", "whole number of minutes"),
        ("400d", "366d maximum"),
    ],
)
def test_bad_windows_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(text)


def test_a_bad_window_in_the_config_names_the_model() -> None:
    with pytest.raises(ValueError, match=r"models\.m\.slo\.window: window '3 weeks'"):
        tracker(Clock(), window="3 weeks")


# -- counting ---------------------------------------------------------------------


def test_counts_ratio_and_budget_over_the_window() -> None:
    clock = Clock()
    t = tracker(clock)
    record_many(t, 990)
    record_many(t, 5, latency_s=0.2)  # successful but slow
    record_many(t, 5, good=False)  # failed: bad for availability only
    record_many(t, 7, good=None)  # the caller's fault: not counted at all

    availability = report(t)
    assert (availability["good"], availability["total"]) == (995, 1000)
    assert availability["ratio"] == pytest.approx(0.995)
    # budget = 1% of 1000 = 10 bad events; 5 spent
    assert availability["budget_remaining"] == pytest.approx(0.5)
    assert availability["target"] == 0.99

    latency = report(t, "latency")
    assert (latency["good"], latency["total"]) == (990, 995)
    assert latency["threshold_ms"] == 50.0
    assert latency["budget_remaining"] == pytest.approx(1 - 5 / (0.01 * 995))


def test_latency_on_the_objective_is_good() -> None:
    t = tracker(Clock())
    t.record("m", 0.05, True)
    t.record("m", 0.0500001, True)
    assert (report(t, "latency")["good"], report(t, "latency")["total"]) == (1, 2)


def test_no_events_report_a_full_budget_and_no_ratio() -> None:
    t = tracker(Clock())
    record_many(t, 3, good=None)
    availability = report(t)
    assert availability["total"] == 0 and availability["ratio"] is None
    assert availability["budget_remaining"] == 1.0
    assert set(availability["burn_rates"].values()) == {0.0}
    assert t.snapshot()["models"]["m"]["status"] == "ok"


def test_models_without_an_slo_are_not_tracked() -> None:
    t = tracker(Clock())
    t.record("plain", 5.0, False)
    t.record("unknown", 5.0, False)
    assert t.models == ["m"]
    assert list(t.snapshot()["models"]) == ["m"]


def test_events_leave_the_window() -> None:
    clock = Clock()
    t = tracker(clock, window="90m")
    record_many(t, 10, good=False)
    clock.advance(89 * MINUTE)
    record_many(t, 10)
    assert report(t)["total"] == 20
    clock.advance(MINUTE)  # the first minute is now 90 minutes old
    assert (report(t)["good"], report(t)["total"]) == (10, 10)


def test_a_long_window_is_summed_by_the_hour() -> None:
    clock = Clock(now=100 * DAY)  # on an hour boundary
    t = tracker(clock, window="30d")
    record_many(t, 4, good=False)
    clock.advance(10 * DAY)  # beyond the minute ring's 3 days
    record_many(t, 6)
    assert (report(t)["good"], report(t)["total"]) == (6, 10)
    clock.advance(20 * DAY - HOUR)
    assert report(t)["total"] == 10
    clock.advance(HOUR)
    assert (report(t)["good"], report(t)["total"]) == (6, 6)


def test_burn_rate_of_each_window() -> None:
    clock = Clock()
    t = tracker(clock, availability=0.99)
    # One bad event at each age, 100 good ones now: each window sees a different mix.
    ages_min = [2, 20, 50, 100, 300, 1000, 4000]
    for age in sorted(ages_min, reverse=True):
        clock.now = 10_000_000.0 - age * MINUTE
        record_many(t, 1, good=False)
    clock.now = 10_000_000.0
    record_many(t, 100)
    burns = report(t)["burn_rates"]
    assert list(burns) == [label for label, _ in BURN_WINDOWS]
    for i, (label, seconds) in enumerate(BURN_WINDOWS):
        bad = sum(1 for age in ages_min if age < seconds / MINUTE)
        assert bad == i + 1
        assert burns[label] == pytest.approx(bad / (100 + bad) / 0.01), label


# -- status -----------------------------------------------------------------------


def test_a_burst_of_failures_breaches_then_recovers_once_the_windows_pass() -> None:
    clock = Clock()
    t = tracker(clock, availability=0.99, window="30d")
    record_many(t, 10_000)  # a healthy history, older than 1d: budget 100 bad events
    clock.advance(2 * DAY)
    assert t.snapshot()["models"]["m"]["status"] == "ok"

    record_many(t, 20)
    record_many(t, 20, good=False)  # 50% errors now: a 50x burn in 5m and 1h
    snap = t.snapshot()["models"]["m"]
    assert snap["status"] == "breach"
    assert snap["objectives"]["availability"]["status"] == "breach"
    assert snap["objectives"]["latency"]["status"] == "ok"
    assert snap["objectives"]["availability"]["burn_rates"]["5m"] == pytest.approx(50.0)
    assert snap["objectives"]["availability"]["budget_remaining"] == pytest.approx(0.8, abs=1e-3)

    clock.advance(5 * MINUTE)  # the 5m window is clean again: the fast pair stops
    snap = t.snapshot()["models"]["m"]
    burns = snap["objectives"]["availability"]["burn_rates"]
    assert burns["5m"] == 0 and burns["1h"] >= 14.4
    assert snap["status"] == "warning"  # 30m & 6h still burn >= 6

    clock.advance(6 * HOUR)  # every short window has passed (3d still remembers)
    snap = t.snapshot()["models"]["m"]
    assert snap["objectives"]["availability"]["burn_rates"]["3d"] > 0
    assert snap["status"] == "ok"


def test_the_slow_pairs_warn() -> None:
    clock = Clock()
    t = tracker(clock, availability=0.99)
    record_many(t, 60_000)  # a healthy history, older than 3d: the budget is not spent
    clock.advance(10 * DAY)
    # Then 4% errors for a day: 4x burn in 2h and 1d (>= 3), under 6 in 30m/6h.
    for _ in range(24 * 6):
        record_many(t, 96)
        record_many(t, 4, good=False)
        clock.advance(10 * MINUTE)
    clock.advance(-10 * MINUTE)
    snap = t.snapshot()["models"]["m"]["objectives"]["availability"]
    assert snap["burn_rates"]["2h"] == pytest.approx(4.0)
    assert snap["burn_rates"]["1d"] == pytest.approx(4.0)
    assert 0 < snap["budget_remaining"] < 1
    assert snap["status"] == "warning"


def test_an_exhausted_budget_is_a_breach_even_without_a_burst() -> None:
    clock = Clock()
    t = tracker(clock, availability=0.99, window="1d")
    record_many(t, 98)
    record_many(t, 2, good=False)  # 2% of errors against a 1% budget
    clock.advance(23 * HOUR)  # the burst is old: only the budget tells
    availability = report(t)
    assert availability["budget_remaining"] == 0.0
    assert availability["status"] == "breach"


def test_a_threshold_reached_exactly_counts() -> None:
    # 1 - 0.999 is not exactly 0.001 in floating point; 14.4x must still reach 14.4.
    clock = Clock()
    t = tracker(clock, availability=0.999)
    record_many(t, 9856)
    record_many(t, 144, good=False)  # 1.44% errors = 14.4x
    availability = report(t)
    assert availability["burn_rates"]["5m"] == 14.4
    assert availability["status"] == "breach"


def test_latency_breach_is_reported_on_its_own() -> None:
    clock = Clock()
    t = tracker(clock, latency_target=0.99)
    record_many(t, 50)
    record_many(t, 50, latency_s=1.0)
    snap = t.snapshot()["models"]["m"]
    assert snap["objectives"]["latency"]["status"] == "breach"
    assert snap["objectives"]["availability"]["status"] == "ok"
    assert snap["status"] == "breach"


# -- memory and cost --------------------------------------------------------------


def test_memory_is_fixed_when_built() -> None:
    clock = Clock()
    t = tracker(clock, window="30d")
    series = t._series["m"]
    sizes = (series.fine.nbytes, series.coarse.nbytes)
    assert sizes == (3 * 24 * 60 * 4 * 8, 30 * 24 * 4 * 8)  # ~135 KiB + ~22 KiB
    for _ in range(3000):
        t.record("m", 0.01, True)
        clock.advance(7.3)
    clock.advance(365 * DAY)
    t.record("m", 0.01, False)
    t.snapshot()
    assert (series.fine.nbytes, series.coarse.nbytes) == sizes
    assert t._series["m"] is series
    assert report(t)["total"] == 1


def test_short_windows_need_no_hourly_ring() -> None:
    t = tracker(Clock(), window="1d")
    assert t._series["m"].coarse is None


def test_a_clock_that_steps_back_does_not_lose_counts() -> None:
    clock = Clock()
    t = tracker(clock)
    record_many(t, 3)
    clock.advance(-5 * MINUTE)
    record_many(t, 2)
    assert report(t)["total"] == 5


# -- reload -----------------------------------------------------------------------


def test_a_reload_keeps_the_counts_of_unchanged_objectives() -> None:
    clock = Clock()
    slo = {"latency_ms": 50}
    old = SloTracker.from_config({"a": model(slo), "b": model(slo)}, clock=clock)
    for name in ("a", "b"):
        old.record(name, 0.01, True)
    new = SloTracker.from_config(
        {"a": model(slo), "b": model({"latency_ms": 80})}, clock=clock, previous=old
    )
    models = new.snapshot()["models"]
    assert models["a"]["objectives"]["availability"]["total"] == 1
    assert models["b"]["objectives"]["availability"]["total"] == 0


# -- Prometheus -------------------------------------------------------------------


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_export_sets_the_gauges_and_drops_models_gone() -> None:
    clock = Clock()
    t = SloTracker.from_config(
        {
            "exp-a": model({"latency_ms": 50, "availability": 0.99}),
            "exp-b": model({"latency_ms": 50}),
        },
        clock=clock,
    )
    for _ in range(96):
        t.record("exp-a", 0.01, True)
    for _ in range(4):
        t.record("exp-a", 0.01, False)
    t.export()
    assert gauge("gateway_slo_error_budget_remaining", model="exp-a", slo="availability") == 0.0
    assert gauge("gateway_slo_error_budget_remaining", model="exp-a", slo="latency") == 1.0
    assert gauge(
        "gateway_slo_burn_rate", model="exp-a", slo="availability", window="5m"
    ) == pytest.approx(4.0)
    assert gauge("gateway_slo_burn_rate", model="exp-a", slo="latency", window="3d") == 0.0
    assert gauge("gateway_slo_objective", model="exp-a", slo="availability") == 0.99
    for label, _ in BURN_WINDOWS:
        assert gauge("gateway_slo_burn_rate", model="exp-b", slo="latency", window=label) == 0.0

    reloaded = SloTracker.from_config(
        {"exp-a": model({"latency_ms": 50, "availability": 0.99})}, clock=clock, previous=t
    )
    reloaded.export()
    assert gauge("gateway_slo_burn_rate", model="exp-b", slo="latency", window="5m") is None
    assert gauge("gateway_slo_objective", model="exp-b", slo="availability") is None
    assert gauge(
        "gateway_slo_burn_rate", model="exp-a", slo="availability", window="5m"
    ) == pytest.approx(4.0)


@pytest.mark.parametrize(
    "code, counts",
    [
        (200, True),
        (201, True),
        (304, True),
        (400, None),
        (401, None),
        (403, None),
        (404, None),
        (413, None),
        (429, None),
        (500, False),
        (502, False),
        (503, False),
        (504, False),
    ],
)
def test_availability_of_status_codes(code: int, counts: bool | None) -> None:
    assert availability_of(code) is counts


def test_the_module_speaks_of_the_thresholds_it_uses() -> None:
    doc = slo_module.__doc__ or ""
    for short, long, threshold, level in slo_module.ALERT_PAIRS:
        assert f"{short} & {long}" in doc and f"{threshold:g}" in doc and level in doc


# -- several workers: one view ----------------------------------------------------


def worker(clock: Clock, directory, pid: int, **slo: object) -> SloTracker:
    config = {
        "latency_ms": 50,
        "latency_target": 0.99,
        "availability": 0.99,
        "window": "30d",
        **slo,
    }
    objectives = {"m": SloObjectives.from_config(model(config).slo)}
    return SharedSloTracker(objectives, clock, str(directory), process=pid)


def test_workers_sharing_a_directory_report_the_same_sums(tmp_path) -> None:
    clock = Clock()
    a, b = worker(clock, tmp_path, 1), worker(clock, tmp_path, 2)
    record_many(a, 30)
    record_many(b, 70)
    record_many(b, 5, good=False)
    record_many(a, 2, latency_s=1.0)  # good, but slow
    for t in (a, b):
        availability = report(t)
        assert (availability["good"], availability["total"]) == (102, 107)
        latency = report(t, "latency")
        assert (latency["good"], latency["total"]) == (100, 102)
    assert a.snapshot() == b.snapshot()


def test_a_worker_idle_for_hours_does_not_count_old_slots_twice(tmp_path) -> None:
    clock = Clock(now=100 * DAY)
    a, b = worker(clock, tmp_path, 1), worker(clock, tmp_path, 2)
    record_many(a, 10, good=False)
    clock.advance(2 * HOUR)  # `a` records nothing more: its ring stays at the old minute
    record_many(b, 10)
    availability = report(b)
    assert (availability["good"], availability["total"]) == (10, 20)  # in the 30d window
    assert availability["burn_rates"]["1h"] == 0.0  # a's failures are 2 h old
    assert availability["burn_rates"]["6h"] > 0.0
    clock.advance(4 * DAY)  # a full lap of the minute ring: a's slots are stale
    record_many(b, 1)
    assert report(b)["burn_rates"]["3d"] == 0.0
    assert report(b)["total"] == 21


def test_an_exited_workers_counts_stay_and_other_objectives_are_apart(tmp_path) -> None:
    clock = Clock()
    a = worker(clock, tmp_path, 1)
    record_many(a, 4)
    del a  # its file stays, as a dead worker's counters do for /metrics
    b = worker(clock, tmp_path, 2)
    record_many(b, 1)
    assert report(b)["total"] == 5
    other = worker(clock, tmp_path, 3, availability=0.9)  # another config: counted apart
    record_many(other, 1)
    assert report(other)["total"] == 1 and report(b)["total"] == 5


def test_from_config_shares_through_the_multiprocess_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(SHARED_DIR_ENV, str(tmp_path))
    t = tracker(Clock())
    assert isinstance(t, SharedSloTracker)
    record_many(t, 3)
    assert report(t)["total"] == 3
    assert len(list(tmp_path.glob(f"{SLO_FILE_PREFIX}*.ring"))) == 1
    monkeypatch.delenv(SHARED_DIR_ENV)
    assert type(tracker(Clock())) is SloTracker
