"""What metrics, audit records and tracing cost: digits throughput of one
gateway worker (v2 HTTP binary, one sample per request, c=32), with and without
batching, in three variants:

    bare              GATEWAY_METRICS=off, no audit, tracing off: the baseline
    metrics+audit     metrics on, an audit record per request to a file
    +tracing          the same with every request traced, exported over OTLP to
                      a stand-in collector (loadtests/otlp_sink.py)

Rounds alternate the variants (bare, metrics+audit, +tracing, bare, ...) so
that the machine's drift hits each alike. Each round gives a ratio against
that round's bare run (seconds apart, so a slow spell of the machine cancels
out); the median of those ratios is the result, and the ratio of the medians
is reported beside it. Goals (issue 8): metrics+audit >= 0.90 x bare,
+tracing >= 0.75 x bare.

First, in-process and pinned to the server's core, what a traced request's
spans cost per span: the gateway's recording and OTLP encoder against the
OpenTelemetry SDK's tracer and OTLP encoder (span_cost.py).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from loadtests import otlp_sink
from loadtests.loadgen import closed_loop, run
from loadtests.scenarios.common import Settings, print_level, ratio
from loadtests.workloads import HOST, digits_config, digits_request
from testkit.gateway_process import ROOT, free_port, start_gateway, start_server

BARE = "bare"
AUDIT = "metrics+audit"
TRACING = "+tracing"
VARIANTS = (BARE, AUDIT, TRACING)
GOALS = {AUDIT: 0.90, TRACING: 0.75}
CONCURRENCY = 32
BACKEND = "digits-cpu"


def run_observability(
    settings: Settings,
    rounds: int = 5,
    duration_s: float = 5.0,
    span_cost_runs: int = 7,
    span_cost_requests: int = 2000,
) -> dict[str, Any]:
    span_cost = _span_cost(settings, span_cost_runs, span_cost_requests)
    print(
        f"observability: digits c={CONCURRENCY}, {rounds} alternating rounds of "
        f"{duration_s:g} s per variant",
        flush=True,
    )
    sink_port = free_port()
    sink = start_server(
        "otlp sink",
        [sys.executable, "-m", "loadtests.otlp_sink", "--port", str(sink_port)],
        sink_port,
        otlp_sink.READY_LINE.encode(),
        cpus=settings.client_cpus,
    )
    environments = {
        BARE: {"GATEWAY_METRICS": "off", "OTEL_TRACES_EXPORTER": "none"},
        AUDIT: {"OTEL_TRACES_EXPORTER": "none"},
        TRACING: {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink_port}/v1/traces",
        },
    }
    modes: dict[str, Any] = {}
    try:
        for batching in (False, True):
            mode = "batching" if batching else "no batching"
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
            for round_ in range(rounds):
                for variant in VARIANTS:
                    config = digits_config(batching=batching)
                    if variant != BARE:
                        workdir = settings.workdir / f"observability-{round_}"
                        config["audit"] = {"sink": "file", "path": str(workdir / "audit.jsonl")}
                    row = _measure(
                        config, environments[variant], settings, duration_s, f"{mode}/{variant}"
                    )
                    runs[variant].append(row)
            modes[mode] = _compare(runs)
    finally:
        sink.stop()
    return {
        "description": "digits v2 HTTP binary, c=32, one gateway worker pinned to one core; "
        "bare = GATEWAY_METRICS=off, no audit, no tracing; metrics+audit = "
        "metrics on and an audit record per request to a file; +tracing = "
        "also every request traced and exported over OTLP/HTTP to a "
        f"stand-in collector; medians of {rounds} alternating rounds",
        "modes": modes,
        "span_cost": span_cost,
    }


def _span_cost(settings: Settings, runs: int, requests: int) -> dict[str, Any]:
    """Microseconds per span, ours and the SDK's (span_cost.py), in a subprocess
    pinned to the server's core; its failure is reported, the rest goes on."""
    print(
        f"observability: span cost in-process, ours vs the OpenTelemetry SDK, median of "
        f"{runs} runs of {requests} requests",
        flush=True,
    )
    argv = [sys.executable, "-m", "loadtests.scenarios.span_cost"]
    argv += ["--runs", str(runs), "--requests", str(requests)]
    if settings.server_cpus:
        argv += ["--cpus", ",".join(map(str, sorted(settings.server_cpus)))]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        print(f"  span cost failed:\n{done.stderr[-2000:]}", flush=True)
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"  ours {result['ours_us_per_span']} us/span, OpenTelemetry SDK "
        f"{result['sdk_us_per_span']} us/span ({result['sdk_over_ours']}x)",
        flush=True,
    )
    return result


def _measure(
    config: dict[str, Any], env: dict[str, str], settings: Settings, duration_s: float, label: str
) -> dict[str, Any]:
    name = label.replace(" ", "-").replace("/", "-").replace("+", "")
    gateway = start_gateway(
        config,
        settings.workdir / name,
        cpus=settings.server_cpus,
        env={**settings.gateway_env, **env},
    )
    try:
        result = run(
            closed_loop(
                HOST,
                gateway.port,
                digits_request(gateway.port),
                CONCURRENCY,
                duration_s,
                min(settings.warmup_s, 2.0),
            )
        )
    finally:
        gateway.stop()
    row = result.summary()
    print_level(label, row)
    return row


def _compare(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    medians = {v: _median(rows) for v, rows in runs.items()}
    bare = medians[BARE]["throughput_rps"]
    ratios = {}
    for variant, goal in GOALS.items():
        per_round = [
            ratio(row["throughput_rps"], base["throughput_rps"])
            for row, base in zip(runs[variant], runs[BARE])
        ]
        value = (
            round(statistics.median(r for r in per_round if r is not None), 3)
            if any(r is not None for r in per_round)
            else None
        )
        ratios[variant] = {
            "throughput_vs_bare": value,
            "per_round": per_round,
            "of_medians": ratio(medians[variant]["throughput_rps"], bare),
            "goal": goal,
            "met": None if value is None else value >= goal,
        }
    return {
        "medians": medians,
        "ratios": ratios,
        "rounds": {v: [r["throughput_rps"] for r in rows] for v, rows in runs.items()},
    }


def _median(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        key: round(statistics.median(r[key] for r in rows), 3)
        for key in ("throughput_rps", "p50_ms", "p99_ms")
    }
