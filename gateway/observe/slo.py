"""Service level objectives, tracked in process (docs/operations.md#slos).

Each model with an `slo` config has two objectives over its `window` (e.g. 30d):

* **availability** — the share of counted requests that did not fail. The caller
  says what counts: `good_availability=None` for requests the gateway is not to
  blame for (invalid input, unknown model, auth, the tenant's own rate limit),
  `False` for a shed, rejected, timed-out or 5xx request, `True` otherwise.
* **latency** — the share of *successful* requests answered within
  `latency_ms` (failures are the availability objective's business).

For each objective the tracker reports good/total events over the window, the
ratio, the error budget remaining (`1 - bad / ((1 - target) * total)`, clipped at
0) and burn rates — `(bad / total over a window) / (1 - target)`, i.e. how many
times faster than "exactly on budget" the budget is being spent — over the
windows of the Google SRE workbook's multi-window, multi-burn-rate alerts
(chapter 5, "Alerting on SLOs"; for a 30-day window):

=========  ============  ==========  =======================================
pair       burn rate >=  budget use  status
=========  ============  ==========  =======================================
5m & 1h    14.4          2% in 1h    ``breach`` (the workbook's fast page)
30m & 6h   6             5% in 6h    ``warning`` (the workbook pages on it too)
2h & 1d    3             10% in 1d   ``warning``
6h & 3d    1             10% in 3d   ``warning``
=========  ============  ==========  =======================================

A pair fires only when both its windows burn that fast: the long window shows
the spend is significant, the short one that it is still going on (so the status
recovers within minutes of the fix). An exhausted budget is a ``breach`` too.
The alert rules in config/prometheus/alerts.yaml use the same pairs.

Cost: `record()` is O(1) — a clock read, a dict lookup and integer additions,
under an uncontended lock. Counts go into 1-minute buckets in a fixed ring
covering 3 days (the longest burn window), plus 1-hour buckets covering the
SLO window when it is longer than 3 days; memory is fixed when the tracker is
built (~140 KiB a model, +23 KiB for a 30d window) and never grows with traffic.
Sums are taken when read (`snapshot()`, `export()`: tens of microseconds a
model, cheap enough for every scrape). A window of k minutes is the current
minute and the k-1 before it; windows longer than 3 days are summed by the hour.

With `gateway serve --workers N` (PROMETHEUS_MULTIPROC_DIR set, as for
/metrics) the workers' counts are one view: each worker keeps its rings in a
file of its own in that directory (`slo-<objectives>-<pid>.ring`, mapped into
memory; `record()` adds to them directly, still O(1)), and a read sums the
rings of every worker, the ones that have exited included, as /metrics sums
their counters; so /slo and the gauges are the same whichever worker answers.
The minute index is CLOCK_MONOTONIC's, which all processes of a machine share.
A ring read while its worker moves on to a new minute is read again. Without
the directory (one process), nothing changes: plain in-memory rings. Replicas
each report their own view (the Prometheus rules aggregate them).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import Gauge

from gateway.observe.metrics import REGISTRY
from gateway.observe.slo_rings import (
    AV_BAD,
    AV_GOOD,
    BURN_WINDOWS,
    HOUR_S,
    LAT_BAD,
    LAT_GOOD,
    MAX_WINDOW_S,
    MINUTE_S,
    SHARED_DIR_ENV,
    SLO_FILE_PREFIX,
    Series,
    SharedSeries,
    columns,
    window_sums,
)

if TYPE_CHECKING:  # config is imported for its types only: observe imports no layer
    from gateway.config.schema import ModelConfig, SloConfig

__all__ = [
    "ALERT_PAIRS",
    "BURN_RATE",
    "BURN_WINDOWS",
    "ERROR_BUDGET_REMAINING",
    "OBJECTIVE",
    "SHARED_DIR_ENV",
    "SLO_FILE_PREFIX",
    "SLO_KINDS",
    "SharedSloTracker",
    "SloObjectives",
    "SloTracker",
    "availability_of",
    "parse_window",
]

# (short window, long window, burn-rate threshold, status when both reach it).
ALERT_PAIRS: tuple[tuple[str, str, float, str], ...] = (
    ("5m", "1h", 14.4, "breach"),
    ("30m", "6h", 6.0, "warning"),
    ("2h", "1d", 3.0, "warning"),
    ("6h", "3d", 1.0, "warning"),
)
SLO_KINDS = ("availability", "latency")
_STATUS_RANK = {"ok": 0, "warning": 1, "breach": 2}

# With several workers every worker computes the same values (from all the rings):
# the latest one set, by the worker answering the scrape, is reported, without a pid.
ERROR_BUDGET_REMAINING = Gauge(
    "gateway_slo_error_budget_remaining",
    "Share of the SLO window's error budget not yet spent (1: untouched, 0: exhausted)",
    ["model", "slo"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
BURN_RATE = Gauge(
    "gateway_slo_burn_rate",
    "Error budget burn rate over a window: (bad/total in the window) / (1 - target)",
    ["model", "slo", "window"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
OBJECTIVE = Gauge(
    "gateway_slo_objective",
    "The SLO target ratio (e.g. 0.999), from the config",
    ["model", "slo"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)

_UNITS = {"w": 7 * 24 * HOUR_S, "d": 24 * HOUR_S, "h": HOUR_S, "m": MINUTE_S, "s": 1}
_WINDOW_RE = re.compile(r"(?:\d+[wdhms])+")
_PART_RE = re.compile(r"(\d+)([wdhms])")


def parse_window(text: str) -> int:
    """Seconds in a duration like "30d", "7d", "1h", "90m" or "1h30m" (units w d h m s).

    Raises ValueError unless it is a whole number of minutes, from 1m to 366d.
    """
    if not isinstance(text, str) or not _WINDOW_RE.fullmatch(text.strip()):
        raise ValueError(
            f"window {text!r}: expected a duration like '30d', '7d', '1h' or '90m' "
            "(units w, d, h, m, s)"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART_RE.findall(text))
    if seconds <= 0 or seconds % MINUTE_S:
        raise ValueError(f"window {text!r}: expected a whole number of minutes (at least 1m)")
    if seconds > MAX_WINDOW_S:
        raise ValueError(f"window {text!r}: longer than the 366d maximum")
    return seconds


def availability_of(code: int) -> bool | None:
    """How an answer with HTTP status `code` counts for availability: 5xx (including
    sheds, open circuits, deadlines and failed chains) is bad, other 4xx are the
    caller's doing and do not count, the rest is good."""
    if code >= 500:
        return False
    if code >= 400:
        return None
    return True


@dataclass(frozen=True)
class SloObjectives:
    """One model's objectives, parsed from its `slo` config."""

    latency_s: float
    latency_target: float
    availability: float
    window: str
    window_s: int

    @classmethod
    def from_config(cls, slo: SloConfig) -> SloObjectives:
        return cls(
            latency_s=slo.latency_ms / 1000.0,
            latency_target=slo.latency_target,
            availability=slo.availability,
            window=slo.window,
            window_s=parse_window(slo.window),
        )


def _burn(bad: int, total: int, target: float) -> float:
    if total <= 0:
        return 0.0
    # Rounded so that exactly-on-threshold rates compare as equal despite 1 - 0.999.
    return round((bad / total) / (1.0 - target), 9)


def _budget_remaining(bad: int, total: int, target: float) -> float:
    if total <= 0 or bad <= 0:
        return 1.0
    return max(0.0, round(1.0 - bad / ((1.0 - target) * total), 9))


def _status(burn_rates: Mapping[str, float], budget_remaining: float) -> str:
    status = "breach" if budget_remaining <= 0.0 else "ok"
    for short, long, threshold, level in ALERT_PAIRS:
        firing = burn_rates[short] >= threshold and burn_rates[long] >= threshold
        if firing and _STATUS_RANK[level] > _STATUS_RANK[status]:
            status = level
    return status


class SloTracker:
    """Counts each request against its model's SLOs and reports them.

    `record()` is safe to call from any thread and costs O(1); models without an
    `slo` config are ignored at the cost of one dict lookup. `clock` returns
    seconds (monotonic is enough: only differences matter) and is injectable
    for tests.
    """

    def __init__(
        self, objectives: Mapping[str, SloObjectives], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        minute = int(clock() // MINUTE_S)
        self._series: dict[str, Series] = {
            name: Series(obj, minute) for name, obj in objectives.items()
        }
        self._exported: set[str] = set()

    @classmethod
    def from_config(
        cls,
        models: Mapping[str, ModelConfig],
        clock: Callable[[], float] = time.monotonic,
        previous: SloTracker | None = None,
    ) -> SloTracker:
        """A tracker for the models that declare an `slo`. With `previous` (a config
        reload), models whose objectives did not change keep their counts.

        Raises ValueError naming the model if a window cannot be parsed.
        """
        objectives: dict[str, SloObjectives] = {}
        for name, model in models.items():
            if model.slo is None:
                continue
            try:
                objectives[name] = SloObjectives.from_config(model.slo)
            except ValueError as exc:
                raise ValueError(f"models.{name}.slo.window: {exc}") from None
        directory = os.environ.get(SHARED_DIR_ENV)
        tracker = (
            SharedSloTracker(objectives, clock, directory) if directory else cls(objectives, clock)
        )
        if previous is not None:
            # Requests still in flight on the old runtime record into the same
            # series: share its lock too.
            tracker._lock = previous._lock
            with previous._lock:
                for name, series in previous._series.items():
                    if name in tracker._series and series.objectives == objectives[name]:
                        tracker._series[name] = series
                tracker._exported = previous._exported
        return tracker

    @property
    def models(self) -> list[str]:
        return list(self._series)

    def record(self, model: str, latency_s: float, good_availability: bool | None) -> None:
        """Count one answered request of `model` that took `latency_s` seconds.

        `good_availability`: True for a success, False for a failure the gateway
        owns (shed, rejected, timeout, 5xx), None for one that does not count
        (invalid input...). Latency counts for successes only.
        """
        series = self._series.get(model)
        if series is None or good_availability is None:
            return
        minute = int(self._clock() // MINUTE_S)
        with self._lock:
            if minute != series.minute:
                series.advance(minute)
            if good_availability:
                series.av_good += 1
                if latency_s <= series.objectives.latency_s:
                    series.lat_good += 1
                else:
                    series.lat_bad += 1
            else:
                series.av_bad += 1

    def _window_counts(
        self, series: Series, minute: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        series.advance(minute)
        return series.sums()

    def _counts(self) -> dict[str, tuple[SloObjectives, np.ndarray, dict[str, np.ndarray]]]:
        """Per model: objectives, window counts and burn-window counts, as of now."""
        minute = int(self._clock() // MINUTE_S)
        out = {}
        with self._lock:
            for name, series in self._series.items():
                window, burns = self._window_counts(series, minute)
                out[name] = (series.objectives, window, burns)
        return out

    def snapshot(self) -> dict[str, Any]:
        """The SLO status of every tracked model, for `GET /slo` (JSON-ready)::

            {"models": {"digits": {"window": "30d", "window_s": 2592000, "status": "ok",
              "objectives": {
                "availability": {"target": 0.999, "good": 99990, "total": 100000,
                                 "ratio": 0.9999, "budget_remaining": 0.9,
                                 "burn_rates": {"5m": 0.0, "30m": 0.0, ..., "3d": 0.1},
                                 "status": "ok"},
                "latency": {"target": 0.99, "threshold_ms": 50.0, ...same keys...}}}}}

        `ratio` is null while there are no events; a model's status is the worse
        of its objectives'.
        """
        models: dict[str, Any] = {}
        for name, (obj, window, burns) in self._counts().items():
            objectives = {}
            for kind in SLO_KINDS:
                objectives[kind] = _objective_report(kind, obj, window, burns)
            models[name] = {
                "window": obj.window,
                "window_s": obj.window_s,
                "status": max(
                    (o["status"] for o in objectives.values()), key=_STATUS_RANK.__getitem__
                ),
                "objectives": objectives,
            }
        return {"models": models}

    def export(self) -> None:
        """Set the `gateway_slo_*` gauges from the current counts (call before each
        /metrics scrape). Label sets of models no longer tracked are removed."""
        exported: set[str] = set()
        for name, (obj, window, burns) in self._counts().items():
            exported.add(name)
            for kind in SLO_KINDS:
                target = obj.availability if kind == "availability" else obj.latency_target
                good_col, bad_col = columns(kind)
                _set(OBJECTIVE, target, name, kind)
                _set(
                    ERROR_BUDGET_REMAINING,
                    _budget_remaining(
                        int(window[bad_col]), int(window[good_col] + window[bad_col]), target
                    ),
                    name,
                    kind,
                )
                for label, counts in burns.items():
                    _set(
                        BURN_RATE,
                        _burn(
                            int(counts[bad_col]), int(counts[good_col] + counts[bad_col]), target
                        ),
                        name,
                        kind,
                        label,
                    )
        for gone in self._exported - exported:
            for kind in SLO_KINDS:
                for gauge in (OBJECTIVE, ERROR_BUDGET_REMAINING):
                    _remove(gauge, gone, kind)
                for label, _ in BURN_WINDOWS:
                    _remove(BURN_RATE, gone, kind, label)
        self._exported = exported


class SharedSloTracker(SloTracker):
    """The tracker of one of several workers: counts into this worker's ring files
    in `directory`, reports the sum of every worker's (see the module docstring)."""

    def __init__(
        self,
        objectives: Mapping[str, SloObjectives],
        clock: Callable[[], float] = time.monotonic,
        directory: str = "",
        process: int | None = None,  # tests play several workers in one process
    ) -> None:
        super().__init__(objectives, clock)
        minute = int(clock() // MINUTE_S)
        pid = os.getpid() if process is None else process
        self._series = {
            name: SharedSeries(obj, minute, directory, name, pid)
            for name, obj in objectives.items()
        }

    def record(self, model: str, latency_s: float, good_availability: bool | None) -> None:
        series = self._series.get(model)
        if series is None or good_availability is None:
            return
        minute = int(self._clock() // MINUTE_S)
        with self._lock:
            if minute != series.minute:
                series.advance(minute)
            if good_availability:
                series.count(AV_GOOD)
                series.count(LAT_GOOD if latency_s <= series.objectives.latency_s else LAT_BAD)
            else:
                series.count(AV_BAD)

    def _window_counts(
        self, series: Series, minute: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not isinstance(series, SharedSeries):  # not reached: every series here is shared
            return super()._window_counts(series, minute)
        series.advance(minute)
        now, fine, coarse = series.combined(minute)
        return window_sums(fine, coarse, now, series.objectives.window_s)


def _objective_report(
    kind: str, obj: SloObjectives, window: np.ndarray, burns: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    good_col, bad_col = columns(kind)
    target = obj.availability if kind == "availability" else obj.latency_target
    good, bad = int(window[good_col]), int(window[bad_col])
    total = good + bad
    burn_rates = {
        label: _burn(int(c[bad_col]), int(c[good_col] + c[bad_col]), target)
        for label, c in burns.items()
    }
    remaining = _budget_remaining(bad, total, target)
    report: dict[str, Any] = {"target": target}
    if kind == "latency":
        report["threshold_ms"] = obj.latency_s * 1000.0
    report.update(
        good=good,
        total=total,
        ratio=good / total if total else None,
        budget_remaining=remaining,
        burn_rates=burn_rates,
        status=_status(burn_rates, remaining),
    )
    return report


# Gauge children by (gauge, labels): .labels() costs a lock and a hash per call.
_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def _set(gauge: Gauge, value: float, *labels: str) -> None:
    key = (id(gauge), labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = gauge.labels(*labels)
    child.set(value)


def _remove(gauge: Gauge, *labels: str) -> None:
    _children.pop((id(gauge), labels), None)
    try:
        gauge.remove(*labels)
    except KeyError:
        pass
