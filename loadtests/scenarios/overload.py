"""Overload: a backend offered 3x its capacity open loop. Admitted requests
must stay fast, shed ones must be answered at once, and memory must stay flat.

The default overloads the compute-bound embedder (no batching, one execution
in flight, a queue one request deep): its capacity is the model's, so 3x of it
is both what a real overload looks like and what a one-core Python generator
can offer. `digits` overloads the tiny digits model with batching instead; its
capacity is the HTTP layer's (about 10k req/s on this VM), 3x of which no
generator on one core can send: the run then reports how much went unsent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadtests.loadgen import (
    OpenLoopResult,
    closed_loop,
    open_loop,
    percentiles_ms,
    run,
)
from loadtests.probes import (
    BATCH_SIZE,
    QUEUE_DURATION,
    HistogramTotals,
    rss_mib,
    scrape_histogram,
)
from loadtests.scenarios.common import Settings, print_level, ratio, running_gateway
from loadtests.workloads import (
    HOST,
    digits_config,
    digits_request,
    embedder_config,
    embedder_requests,
)


@dataclass(frozen=True)
class Workload:
    backend: str
    description: str
    config: Callable[[], dict[str, Any]]
    request: Callable[[int], bytes]
    # Closed-loop concurrencies tried for the capacity (the best rate of 200s wins):
    # enough to keep the backend busy, few enough not to be shed.
    capacity_levels: tuple[int, ...]


def _embedder_config() -> dict[str, Any]:
    config = embedder_config(batching=False, max_queue=EMBEDDER_QUEUE)
    config["backends"]["embedder-cpu"]["max_queue_wait_ms"] = EMBEDDER_QUEUE_WAIT_MS
    return config


# A queue bound by time as well as by count: with one ~6 ms execution at a time,
# admitting only what would start within 3 ms keeps an admitted request under
# about 1.5 executions, while the one waiting keeps the model busy.
EMBEDDER_QUEUE = 4
EMBEDDER_QUEUE_WAIT_MS = 3
DIGITS_QUEUE = 64
WORKLOADS = {
    "embedder": Workload(
        "embedder-cpu",
        f"embedder, no batching, max_concurrency 1, max_queue {EMBEDDER_QUEUE}, "
        f"max_queue_wait_ms {EMBEDDER_QUEUE_WAIT_MS}",
        _embedder_config,
        lambda port: embedder_requests(port)[0],
        (1, 2),
    ),
    "digits": Workload(
        "digits-cpu",
        f"digits, batching, max_queue {DIGITS_QUEUE}",
        lambda: digits_config(batching=True, max_queue=DIGITS_QUEUE),
        digits_request,
        (32,),
    ),
}
ADMITTED_P99_GOAL = 2.0  # x the unloaded p99
SHED_P99_GOAL_MS = 5.0
# RSS counts as flat when it never grows past the start by more than this.
RSS_FLAT_MIB = 10.0


async def _open_loop_with_rss(
    pid: int, port: int, request: bytes, rate: float, duration_s: float, connections: int
) -> tuple[OpenLoopResult, list[dict[str, float]]]:
    """The open loop, with the gateway's RSS sampled about once a second meanwhile."""
    load = asyncio.ensure_future(open_loop(HOST, port, request, rate, duration_s, connections))
    samples = []
    start = time.perf_counter()
    while not load.done():
        samples.append({"t_s": round(time.perf_counter() - start, 2), "rss_mib": rss_mib(pid)})
        await asyncio.wait({load}, timeout=1.0)  # wakes early when the load ends
    return load.result(), samples


def run_overload(
    settings: Settings, factor: float, duration_s: float, connections: int, model: str = "embedder"
) -> dict[str, Any]:
    workload = WORKLOADS[model]
    print(f"overload: {workload.description}, open loop at {factor:g}x capacity", flush=True)
    config = workload.config()
    with running_gateway(config, settings, "overload") as gateway:
        request = workload.request(gateway.port)
        capacity = max(
            (
                _closed(gateway.port, request, c, settings, "capacity")
                for c in workload.capacity_levels
            ),
            key=lambda r: r["throughput_rps"],
        )
        unloaded = _closed(gateway.port, request, 1, settings, "unloaded")
        rate = factor * capacity["throughput_rps"]
        print(
            f"  open loop: {rate:.0f} req/s for {duration_s:g} s over {connections} connections",
            flush=True,
        )
        rss_before = rss_mib(gateway.pid)
        before = _histograms(gateway.port, workload.backend)
        result, rss_during = run(
            _open_loop_with_rss(gateway.pid, gateway.port, request, rate, duration_s, connections)
        )
        rss_after = rss_mib(gateway.pid)
        after = _histograms(gateway.port, workload.backend)
    load = result.summary()
    load["mean_batch_size"] = after[BATCH_SIZE].mean_since(before[BATCH_SIZE])
    # The admitted requests' wait in the backend queue, as the gateway saw it: the
    # rest of their latency was spent before admission (sockets, HTTP, decoding).
    load["mean_queue_wait_ms"] = after[QUEUE_DURATION].mean_since(before[QUEUE_DURATION], 1000.0)
    rss = {"before_mib": rss_before, "during_mib": rss_during, "after_mib": rss_after}
    verdict = judge(load, unloaded, rss)
    print(
        f"  open loop done: {load['sent']} sent, {load['not_sent']} not sent, "
        f"statuses { {s: v['count'] for s, v in load['statuses'].items()} }",
        flush=True,
    )
    return {
        "model": model,
        "description": f"{workload.description}: capacity = closed loop "
        f"c={capacity['concurrency']}, unloaded = closed loop c=1, then open "
        f"loop at {factor:g}x capacity",
        "config": config["backends"][workload.backend],
        "capacity": capacity,
        "unloaded": unloaded,
        "open_loop": load,
        "rss": rss,
        "verdict": verdict,
    }


def _histograms(port: int, backend: str) -> dict[str, HistogramTotals]:
    return {
        metric: scrape_histogram(port, metric, backend) for metric in (BATCH_SIZE, QUEUE_DURATION)
    }


def _closed(
    port: int, request: bytes, concurrency: int, settings: Settings, label: str
) -> dict[str, Any]:
    result = run(
        closed_loop(HOST, port, request, concurrency, settings.duration_s, settings.warmup_s)
    )
    row = result.summary()
    print_level(label, row)
    return row


def judge(load: dict[str, Any], unloaded: dict[str, Any], rss: dict[str, Any]) -> dict[str, Any]:
    """The figures the goals are about, each with its goal and whether it was met."""
    statuses = load["statuses"]
    admitted = statuses.get("200", {"count": 0, **percentiles_ms([])})
    shed = statuses.get("503", {"count": 0, **percentiles_ms([])})
    other = sum(v["count"] for s, v in statuses.items() if s not in ("200", "503", "504"))
    admitted_x = ratio(admitted["p99_ms"], unloaded["p99_ms"])
    peak = max([rss["before_mib"], rss["after_mib"]] + [s["rss_mib"] for s in rss["during_mib"]])
    growth = round(peak - rss["before_mib"], 1)
    return {
        "admitted": {
            "count": admitted["count"],
            "p50_ms": admitted["p50_ms"],
            "p99_ms": admitted["p99_ms"],
            "unloaded_p99_ms": unloaded["p99_ms"],
            "p99_vs_unloaded": admitted_x,
            "goal": f"<= {ADMITTED_P99_GOAL:g}x",
            "met": admitted_x is not None and admitted_x <= ADMITTED_P99_GOAL,
        },
        "shed": {
            "count": shed["count"],
            "p50_ms": shed["p50_ms"],
            "p99_ms": shed["p99_ms"],
            "goal": f"p99 < {SHED_P99_GOAL_MS:g} ms",
            # None: nothing was shed, so there is no time-to-shed to judge.
            "met": shed["p99_ms"] < SHED_P99_GOAL_MS if shed["count"] else None,
        },
        "deadline_504": statuses.get("504", {"count": 0})["count"],
        "other_statuses": other,
        "errors": load["errors"],
        "unanswered": load["unanswered"],
        "not_sent": load["not_sent"],
        "rss": {
            "before_mib": rss["before_mib"],
            "peak_mib": peak,
            "after_mib": rss["after_mib"],
            "growth_mib": growth,
            "goal": f"flat (peak - before <= {RSS_FLAT_MIB:g} MiB)",
            "met": growth <= RSS_FLAT_MIB,
        },
    }
