"""The SLO verdict of a load test: locust's numbers per entry against objectives.

Pure: it receives each entry's counts and response-time histogram as plain
data (locust's `StatsEntry.response_times`: rounded milliseconds -> count) and
the objectives, and returns rows to print and whether any objective breached.
Percentiles are computed as locust computes them, so the table agrees with
locust's own report and CSV.

Objectives come from two places:

* the command line (`Thresholds`): p50 and p99 in milliseconds and a failure
  ratio for the entries of requests; p50 and p99 of their own for the time to
  first token and the inter-chunk gaps, which are parts of a request;
* the gateway's `GET /slo` (`objectives_from_slo`): for an entry of model M,
  M's latency objective (target 0.99 and threshold_ms 50: the p99 must be at
  most 50 ms) and availability objective (target 0.999: at most 0.1% failures).

Two approximations, both on the strict side: locust counts every failure
(a 4xx too) where the gateway's availability counts 5xx only, and locust's
percentiles include failed requests where the gateway's latency objective
counts successes only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loadtests.locust.entries import INTER_CHUNK, NOT_PER_MODEL, TTFT, split_entry

GATEWAY = "slo"  # how the table marks an objective read from the gateway


@dataclass(frozen=True)
class EntryStats:
    """One locust statistics entry, as plain data."""

    name: str
    model: str | None  # whose gateway SLO applies; None for TTFT and inter-chunk gaps
    requests: int
    failures: int
    response_times: Mapping[int, int]  # rounded ms -> count, failures included


@dataclass(frozen=True)
class Limits:
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_failure_ratio: float | None = None


@dataclass(frozen=True)
class Thresholds:
    """The command line's objectives: the `requests` entries', and those of the
    entries that are not requests (TTFT, inter-chunk gaps) `by_kind`."""

    requests: Limits = Limits()
    by_kind: Mapping[str, Limits] = field(default_factory=dict)

    @classmethod
    def from_options(
        cls,
        p50_ms: float | None = None,
        p99_ms: float | None = None,
        max_failure_ratio: float | None = None,
        ttft_p50_ms: float | None = None,
        ttft_p99_ms: float | None = None,
        inter_chunk_p50_ms: float | None = None,
        inter_chunk_p99_ms: float | None = None,
    ) -> Thresholds:
        by_kind = {
            TTFT: Limits(p50_ms=ttft_p50_ms, p99_ms=ttft_p99_ms),
            INTER_CHUNK: Limits(p50_ms=inter_chunk_p50_ms, p99_ms=inter_chunk_p99_ms),
        }
        return cls(Limits(p50_ms, p99_ms, max_failure_ratio), by_kind)

    def of(self, kind: str) -> Limits:
        """The limits for entries of `kind`."""
        if kind in NOT_PER_MODEL:
            return self.by_kind.get(kind, Limits())
        return self.requests


@dataclass(frozen=True)
class ModelObjectives:
    """One model's objectives as the gateway declares them."""

    availability: float | None = None  # target share of successes, e.g. 0.999
    latency_target: float | None = None  # e.g. 0.99: that share within latency_ms
    latency_ms: float | None = None


@dataclass(frozen=True)
class Check:
    label: str  # e.g. "p99<=50ms" or "fail<=0.1%(slo)"
    measured: str
    limit: str
    ok: bool
    of_failures: bool = False  # a failure-ratio objective (else a latency one)


@dataclass(frozen=True)
class Row:
    entry: str
    requests: int
    failures: int
    p50_ms: int
    p99_ms: int
    checks: tuple[Check, ...]

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def verdict(self) -> str:
        broken = [f"{c.measured} > {c.limit}" for c in self.checks if not c.ok]
        if broken:
            return "BREACH: " + ", ".join(broken)
        return "ok" if self.checks else "no objective"


def percentile(response_times: Mapping[int, int], fraction: float) -> int:
    """The response time that `fraction` of the requests finished within, as
    locust's calculate_response_time_percentile computes it from its histogram."""
    total = sum(response_times.values())
    within = int(total * fraction)
    processed = 0
    for response_time in sorted(response_times, reverse=True):
        processed += response_times[response_time]
        if total - processed <= within:
            return response_time
    return 0


def objectives_from_slo(snapshot: Mapping[str, Any]) -> dict[str, ModelObjectives]:
    """Per model, the objectives of a `GET /slo` answer (gateway/observe/slo.py)."""
    found = {}
    for name, model in (snapshot.get("models") or {}).items():
        objectives = model.get("objectives") or {}
        availability = objectives.get("availability") or {}
        latency = objectives.get("latency") or {}
        found[name] = ModelObjectives(
            availability=availability.get("target"),
            latency_target=latency.get("target"),
            latency_ms=latency.get("threshold_ms"),
        )
    return found


def _quantile_label(fraction: float) -> str:
    return "p" + f"{fraction * 100:.4f}".rstrip("0").rstrip(".")


def _ms(value: float) -> str:
    return f"{value:g}ms"


def _ratio(value: float) -> str:
    return f"{value * 100:.4g}%"


def _latency_check(stats: EntryStats, fraction: float, limit_ms: float, source: str = "") -> Check:
    label = _quantile_label(fraction)
    measured = percentile(stats.response_times, fraction)
    mark = f"({source})" if source else ""
    return Check(
        f"{label}<={_ms(limit_ms)}{mark}",
        f"{label} {_ms(measured)}",
        _ms(limit_ms) + mark,
        measured <= limit_ms,
    )


def _failure_check(stats: EntryStats, allowed: float, source: str = "") -> Check:
    ratio = stats.failures / stats.requests if stats.requests else 0.0
    mark = f"({source})" if source else ""
    # Rounded so that a target of 0.999 allows exactly 1 failure in 1000 despite 1 - 0.999.
    return Check(
        f"fail<={_ratio(allowed)}{mark}",
        f"fail {_ratio(ratio)}",
        _ratio(allowed) + mark,
        round(ratio, 12) <= round(allowed, 12),
        of_failures=True,
    )


def _limit_checks(stats: EntryStats, limits: Limits) -> list[Check]:
    checks = []
    if limits.p50_ms is not None:
        checks.append(_latency_check(stats, 0.50, limits.p50_ms))
    if limits.p99_ms is not None:
        checks.append(_latency_check(stats, 0.99, limits.p99_ms))
    if limits.max_failure_ratio is not None:
        checks.append(_failure_check(stats, limits.max_failure_ratio))
    return checks


def _gateway_checks(stats: EntryStats, objectives: ModelObjectives) -> list[Check]:
    checks = []
    if objectives.latency_target is not None and objectives.latency_ms is not None:
        checks.append(
            _latency_check(stats, objectives.latency_target, objectives.latency_ms, GATEWAY)
        )
    if objectives.availability is not None:
        checks.append(_failure_check(stats, 1.0 - objectives.availability, GATEWAY))
    return checks


def judge(
    entries: Iterable[EntryStats],
    thresholds: Thresholds,
    gateway: Mapping[str, ModelObjectives] | None = None,
) -> list[Row]:
    """A row per entry (by name), with every objective that applies to it checked."""
    rows = []
    for stats in sorted(entries, key=lambda e: e.name):
        kind, _ = split_entry(stats.name)
        checks = _limit_checks(stats, thresholds.of(kind))
        if gateway and stats.model is not None and stats.model in gateway:
            checks += _gateway_checks(stats, gateway[stats.model])
        rows.append(
            Row(
                entry=stats.name,
                requests=stats.requests,
                failures=stats.failures,
                p50_ms=percentile(stats.response_times, 0.50),
                p99_ms=percentile(stats.response_times, 0.99),
                checks=tuple(checks),
            )
        )
    return rows


def breached(rows: Iterable[Row]) -> bool:
    return not all(row.ok for row in rows)


def failures_allowed(rows: Iterable[Row]) -> bool:
    """Whether every entry that had failures was held to a failure objective (and,
    for a verdict without breaches, met it): then the failures are within what
    was agreed, and a run that met every objective may exit 0 despite them."""
    return all(any(check.of_failures for check in row.checks) for row in rows if row.failures)


def summary(rows: list[Row]) -> str:
    """One line: the outcome and what it rests on."""
    if not rows:
        return "BREACH: no requests were recorded"
    broken = [row.entry for row in rows if not row.ok]
    if broken:
        return "BREACH: " + ", ".join(broken)
    unjudged = [row for row in rows if not row.checks]
    line = f"ok: {len(rows) - len(unjudged)} of {len(rows)} entries held to an objective met it"
    failed = sum(row.failures for row in unjudged)
    if failed:
        line += f"; {failed} requests failed in entries with no objective"
    return line


HEADER = ("entry", "requests", "failures", "p50", "p99", "objective", "verdict")


def render(rows: Iterable[Row]) -> str:
    """The verdict as a plain-text table."""
    lines = [HEADER]
    for row in rows:
        lines.append(
            (
                row.entry,
                str(row.requests),
                f"{row.failures} ({_ratio(row.failure_ratio)})",
                _ms(row.p50_ms),
                _ms(row.p99_ms),
                " ".join(check.label for check in row.checks) or "-",
                row.verdict,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER) - 1)]
    numeric = {1, 2, 3, 4}
    out = []
    for line in lines:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths))
        ]
        out.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(out)
