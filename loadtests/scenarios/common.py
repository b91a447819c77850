"""What every scenario shares: where servers and generator run, how long each
level lasts, starting servers for the length of a variant, and measuring a
closed-loop level with the gateway's batch sizes alongside."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests import floor_app
from loadtests.loadgen import closed_loop, run
from loadtests.probes import BATCH_SIZE, HistogramTotals, scrape_histogram
from loadtests.workloads import HOST
from testkit.gateway_process import (
    GatewayProcess,
    free_port,
    start_gateway,
    start_server,
)

RequestsFor = Callable[[int], bytes | Sequence[bytes]]  # port -> pre-encoded request(s)


@dataclass(frozen=True)
class Settings:
    server_cpus: set[int] | None  # None: not pinned (a single core)
    client_cpus: set[int] | None
    pinning: str
    duration_s: float
    warmup_s: float
    workdir: Path  # gateway configs are written here
    # Observability of the gateways started: environment added to theirs (OTEL_*
    # for tracing) and whether they write audit records (a file in workdir).
    gateway_env: dict[str, str] = field(default_factory=dict)
    audit: bool = False


def cpu_split() -> tuple[set[int] | None, set[int] | None, str]:
    """Server on the first allowed core, generator on the rest: they never share one."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, f"not pinned: only {len(cpus)} core(s) available"
    server, client = {cpus[0]}, set(cpus[1:])
    return (
        server,
        client,
        (
            f"servers and the in-process limit pinned to core {cpus[0]}, "
            f"load generator to {sorted(client)}"
        ),
    )


@contextmanager
def running_gateway(
    config: dict[str, Any], settings: Settings, name: str
) -> Iterator[GatewayProcess]:
    if settings.audit:
        config = {
            **config,
            "audit": {"sink": "file", "path": str(settings.workdir / name / "audit.jsonl")},
        }
    gateway = start_gateway(
        config, settings.workdir / name, cpus=settings.server_cpus, env=settings.gateway_env
    )
    try:
        yield gateway
    finally:
        gateway.stop()


@contextmanager
def running_floor(settings: Settings) -> Iterator[GatewayProcess]:
    port = free_port()
    argv = [sys.executable, "-m", "loadtests.floor_app", "--host", HOST, "--port", str(port)]
    floor = start_server(
        "FastAPI floor", argv, port, floor_app.READY_LINE.encode(), cpus=settings.server_cpus
    )
    try:
        yield floor
    finally:
        floor.stop()


def print_level(label: str, row: dict[str, Any]) -> None:
    batch = row.get("mean_batch_size")
    print(
        f"  {label:<24} c={row['concurrency']:<3d} {row['throughput_rps']:>9.1f} req/s  "
        f"p50 {row['p50_ms']:8.3f} ms  p99 {row['p99_ms']:8.3f} ms"
        + (f"  batch {batch:5.2f}" if batch is not None else "")
        + f"  statuses {row['statuses']}"
        + (f"  errors {row['errors']}" if row["errors"] else ""),
        flush=True,
    )


def closed_levels(
    server: GatewayProcess,
    requests: bytes | Sequence[bytes],
    levels: Sequence[int],
    settings: Settings,
    label: str,
    backend: str | None = None,
) -> dict[str, Any]:
    """One closed-loop run per concurrency level against a running server.

    With `backend`, the gateway's batch-size histogram is scraped around each
    level (the warm-up included: it runs the same load) for the mean rows per
    execution.
    """
    rows = []
    first: HistogramTotals | None = None
    last: HistogramTotals | None = None
    for concurrency in levels:
        before = scrape_histogram(server.port, BATCH_SIZE, backend) if backend else None
        result = run(
            closed_loop(
                HOST, server.port, requests, concurrency, settings.duration_s, settings.warmup_s
            )
        )
        row = result.summary()
        if backend and before is not None:
            last = scrape_histogram(server.port, BATCH_SIZE, backend)
            first = first or before
            row["mean_batch_size"] = last.mean_since(before)
        rows.append(row)
        print_level(label, row)
    variant: dict[str, Any] = {"levels": rows}
    if first and last:
        variant["mean_batch_size"] = last.mean_since(first)
    return variant


def gateway_variant(
    config: dict[str, Any],
    backend: str,
    requests_for: RequestsFor,
    levels: Sequence[int],
    settings: Settings,
    label: str,
) -> dict[str, Any]:
    """Start a gateway with `config`, measure every level, stop it."""
    with running_gateway(config, settings, label) as gateway:
        variant = closed_levels(
            gateway, requests_for(gateway.port), levels, settings, label, backend
        )
    variant["config"] = config["backends"][backend]
    return variant


def level_at(variant: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    return next((r for r in variant.get("levels", []) if r["concurrency"] == concurrency), None)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)
