"""The SLO verdict (loadtests/locust/verdict.py) on plain data: percentiles as
locust computes them, objectives from a real /slo snapshot, and what breaches."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.observe.slo import SloObjectives, SloTracker
from loadtests.locust.entries import model_of
from loadtests.locust.verdict import (
    EntryStats,
    ModelObjectives,
    Thresholds,
    breached,
    failures_allowed,
    judge,
    objectives_from_slo,
    percentile,
    render,
    summary,
)
from testkit.gateway_process import ROOT
from tests.loadtests.locust_runs import locust_env

# 1000 requests: 500 at 1 ms, 400 at 2 ms, 90 at 10 ms, 9 at 40 ms, 1 at 300 ms.
HISTOGRAM = {1: 500, 2: 400, 10: 90, 40: 9, 300: 1}


def entry(name: str, failures: int = 0, histogram: dict[int, int] | None = None) -> EntryStats:
    times = HISTOGRAM if histogram is None else histogram
    return EntryStats(name, model_of(name), sum(times.values()), failures, times)


def test_percentiles_are_locusts() -> None:
    fractions = [0.5, 0.9, 0.99, 0.999, 1.0]
    histograms = [HISTOGRAM, {7: 3}, {0: 10, 5: 1}]
    # Locust's own function, in a process of its own: importing locust here would
    # monkey-patch this one with gevent.
    code = (
        "import json, sys\n"
        "from locust.stats import calculate_response_time_percentile as p\n"
        "hs = [{int(k): v for k, v in h.items()} for h in json.loads(sys.argv[1])]\n"
        f"print(json.dumps([[p(h, sum(h.values()), f) for f in {fractions}] for h in hs]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(histograms)],
        capture_output=True,
        check=True,
        cwd=ROOT,
        env=locust_env(),
    )
    expected = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert [[percentile(h, f) for f in fractions] for h in histograms] == expected
    assert expected[0] == [2, 10, 40, 300, 300]


def test_objectives_come_from_the_gateways_slo_snapshot() -> None:
    tracker = SloTracker(
        {
            "digits": SloObjectives(
                latency_s=0.05,
                latency_target=0.99,
                availability=0.999,
                window="30d",
                window_s=30 * 86400,
            )
        }
    )
    snapshot = json.loads(json.dumps(tracker.snapshot()))  # as GET /slo sends it
    assert objectives_from_slo(snapshot) == {
        "digits": ModelObjectives(availability=0.999, latency_target=0.99, latency_ms=50.0)
    }
    assert objectives_from_slo({"models": {}}) == {}


def test_command_line_thresholds_apply_to_every_request_entry() -> None:
    rows = judge(
        [entry("v2-json digits"), entry("chat chat"), entry("ttft chat")],
        Thresholds.from_options(p50_ms=2, p99_ms=30),
    )
    assert [row.entry for row in rows] == ["chat chat", "ttft chat", "v2-json digits"]
    assert rows[1].checks == ()  # a part of a request: it has thresholds of its own
    for row in (rows[0], rows[2]):
        assert (row.p50_ms, row.p99_ms) == (2, 40)
        assert [c.label for c in row.checks] == ["p50<=2ms", "p99<=30ms"]
        assert [c.ok for c in row.checks] == [True, False]
        assert row.verdict == "BREACH: p99 40ms > 30ms"
    assert breached(rows)
    assert not breached(judge([entry("v2-json digits")], Thresholds.from_options(p99_ms=40)))


def test_a_model_entry_meets_its_gateway_slo_at_the_slos_own_percentile() -> None:
    gateway = {"digits": ModelObjectives(availability=0.999, latency_target=0.999, latency_ms=50)}
    (row,) = judge([entry("grpc digits")], Thresholds(), gateway)
    assert [c.label for c in row.checks] == ["p99.9<=50ms(slo)", "fail<=0.1%(slo)"]
    assert row.verdict == "BREACH: p99.9 300ms > 50ms(slo)"
    loose = {"digits": ModelObjectives(latency_target=0.99, latency_ms=50)}
    assert judge([entry("grpc digits")], Thresholds(), loose)[0].ok


def test_availability_allows_exactly_its_share_of_failures() -> None:
    gateway = {"embeddings": ModelObjectives(availability=0.999)}
    (within,) = judge([entry("embeddings embeddings", failures=1)], Thresholds(), gateway)
    assert within.ok and within.checks[0].label == "fail<=0.1%(slo)"
    (beyond,) = judge([entry("embeddings embeddings", failures=2)], Thresholds(), gateway)
    assert beyond.verdict == "BREACH: fail 0.2% > 0.1%(slo)"
    # The stricter of the command line's and the gateway's ratio decides.
    strict = Thresholds.from_options(max_failure_ratio=0.0)
    assert not judge([entry("embeddings embeddings", failures=1)], strict, gateway)[0].ok


def test_ttft_and_gaps_take_only_the_command_lines_objectives() -> None:
    gateway = {"chat": ModelObjectives(availability=0.999, latency_target=0.99, latency_ms=1)}
    thresholds = Thresholds.from_options(
        p99_ms=1000, max_failure_ratio=0.0, ttft_p99_ms=500, inter_chunk_p50_ms=1
    )
    rows = {
        row.entry: row
        for row in judge(
            [entry("chat-stream chat"), entry("ttft chat"), entry("inter-chunk chat")],
            thresholds,
            gateway,
        )
    }
    assert [c.label for c in rows["ttft chat"].checks] == ["p99<=500ms"]
    assert rows["ttft chat"].ok
    assert rows["inter-chunk chat"].verdict == "BREACH: p50 2ms > 1ms"
    assert [c.label for c in rows["chat-stream chat"].checks] == [
        "p99<=1000ms",
        "fail<=0%",
        "p99<=1ms(slo)",
        "fail<=0.1%(slo)",
    ]


def test_an_entry_of_a_model_without_slo_has_no_objective() -> None:
    (row,) = judge([entry("embeddings embeddings", failures=3)], Thresholds(), {})
    assert row.checks == () and row.ok and row.verdict == "no objective"
    assert summary([row]) == (
        "ok: 0 of 1 entries held to an objective met it; "
        "3 requests failed in entries with no objective"
    )
    assert not failures_allowed([row])


def test_failures_within_an_agreed_ratio_are_allowed() -> None:
    rows = judge(
        [entry("v2-json digits", failures=5), entry("grpc digits")],
        Thresholds.from_options(max_failure_ratio=0.01),
    )
    assert not breached(rows) and failures_allowed(rows)


def test_the_table_names_each_entry_its_numbers_and_verdict() -> None:
    rows = judge(
        [entry("v2-json digits", failures=10), entry("embeddings embeddings", histogram={3: 4})],
        Thresholds.from_options(p99_ms=30),
    )
    lines = render(rows).splitlines()
    assert lines[0].split() == [
        "entry",
        "requests",
        "failures",
        "p50",
        "p99",
        "objective",
        "verdict",
    ]
    assert lines[1].split() == [
        "embeddings", "embeddings", "4", "0", "(0%)", "3ms", "3ms", "p99<=30ms", "ok"
    ]  # fmt: skip
    assert lines[2].split()[:7] == ["v2-json", "digits", "1000", "10", "(1%)", "2ms", "40ms"]
    assert lines[2].endswith("BREACH: p99 40ms > 30ms")
    assert summary(rows) == "BREACH: v2-json digits"
    assert summary([]) == "BREACH: no requests were recorded"


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("v2-json digits", "digits"),
        ("chat-stream chat", "chat"),
        ("ttft chat", None),
        ("inter-chunk chat", None),
        ("Aggregated", None),
    ],
)
def test_the_model_behind_an_entry(name: str, model: str | None) -> None:
    assert model_of(name) == model
