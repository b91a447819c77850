"""`make bench`: the benchmark of issue 3, in one run.

    digits    the gateway's overhead on a tiny model: without and with batching,
              against the FastAPI floor (a trivial FastAPI app on the same core)
    overload  the embedder (no batching, a queue one request deep) offered 3x its
              capacity open loop: admitted latency, time to shed, errors, gateway
              RSS (--overload-model digits: digits with batching instead)
    vendor    chat completions against the fake vendor (zero latency), directly and
              through one gateway worker: throughput at c=64, added latency at c=1
    grpc      digits over gRPC (raw contents, load from h2load) and HTTP (binary)
              from one gateway process with batching, on both gRPC engines, and
              bare threaded / grpc.aio floors: gRPC / HTTP ratio
    observability  digits throughput bare (GATEWAY_METRICS=off), with metrics and
              audit records, and with tracing too: alternating rounds, medians;
              first, in-process, microseconds per span of our span recording and
              OTLP encoder against the OpenTelemetry SDK's tracer and encoder
    cache     a miss, an in-process hit and a Redis hit on digits
    embedder  all-MiniLM-L6-v2: the in-process limit (tokenize + run, no HTTP) at
              several batch sizes, against the gateway with and without batching

Servers (and the in-process limit) are pinned to the first allowed core, the
load generator to the others. Scenarios run in this order: digits, grpc,
observability, cache, overload, vendor, embedder; the embedder comes last because it may have to wait for its model files. Results go to
loadtests/results/bench-<time>.json with a latency/throughput plot beside it.

    python loadtests/bench.py [--scenarios digits,embedder,overload] [--duration 10]
                              [--warmup 2] [--concurrency 32]
                              [--tracing none|otlp|console] [--audit]

--tracing otlp exports every span (OTEL_TRACES_EXPORTER=otlp) to a stand-in
collector on loopback (loadtests/otlp_sink.py, on the generator's cores);
--audit writes an audit record per request to a file: the cost of observability.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import otlp_sink, report
from loadtests.scenarios.cache import run_cache
from loadtests.scenarios.common import Settings, cpu_split
from loadtests.scenarios.digits import run_digits
from loadtests.scenarios.embedder import run_embedder
from loadtests.scenarios.grpc import run_grpc
from loadtests.scenarios.observability import run_observability
from loadtests.scenarios.overload import run_overload
from loadtests.scenarios.triton import run_triton
from loadtests.scenarios.vendor import run_vendor
from testkit.gateway_process import ROOT, free_port, start_server

RESULTS = ROOT / "loadtests" / "results"
ORDER = ("digits", "grpc", "observability", "cache", "overload", "vendor", "embedder", "triton")


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios", default=",".join(ORDER), help="comma-separated subset of: %(default)s"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="measured seconds per level (default %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="unrecorded seconds before each level (default %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=int_list,
        default=[32],
        help="digits: closed-loop concurrency levels, e.g. 1,8,32,64 (default 32)",
    )
    parser.add_argument(
        "--grpc-channels",
        type=int,
        default=1,
        help="grpc: channels (HTTP/2 connections) the closed loops share (default %(default)s)",
    )
    parser.add_argument(
        "--observability-rounds",
        type=int,
        default=5,
        help="observability: alternating rounds per variant (default %(default)s)",
    )
    parser.add_argument(
        "--observability-duration",
        type=float,
        default=5.0,
        help="observability: measured seconds per round (default %(default)s)",
    )
    parser.add_argument(
        "--span-cost-runs",
        type=int,
        default=7,
        help="observability: timed runs of the in-process span cost (default %(default)s)",
    )
    parser.add_argument(
        "--span-cost-requests",
        type=int,
        default=2000,
        help="observability: requests (5 spans each) per span-cost run (default %(default)s)",
    )
    parser.add_argument(
        "--vendor-concurrency",
        type=int_list,
        default=[1, 64],
        help="vendor passthrough: levels; added latency is read at the lowest, "
        "throughput at the highest (default 1,64)",
    )
    parser.add_argument("--embedder-concurrency", type=int_list, default=[1, 8, 32, 64])
    parser.add_argument(
        "--batch-sizes",
        type=int_list,
        default=[1, 8, 16, 32, 64],
        help="embedder: in-process batch sizes",
    )
    parser.add_argument(
        "--embedder-wait",
        type=float,
        default=2400.0,
        help="seconds to wait for the embedder's model files (default 40 min)",
    )
    parser.add_argument(
        "--overload-factor",
        type=float,
        default=3.0,
        help="open-loop rate as a multiple of the measured capacity",
    )
    parser.add_argument("--overload-duration", type=float, default=20.0)
    parser.add_argument(
        "--overload-model",
        choices=("embedder", "digits"),
        default="embedder",
        help="overload the compute-bound embedder (default) or the HTTP-bound digits model",
    )
    parser.add_argument(
        "--connections", type=int, default=256, help="overload: the open loop's connection pool"
    )
    parser.add_argument(
        "--tracing",
        choices=("none", "otlp", "console"),
        default="none",
        help="tracing in the gateways under test (default %(default)s)",
    )
    parser.add_argument(
        "--audit", action="store_true", help="gateways write an audit record per request to a file"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    chosen = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    unknown = chosen - set(ORDER)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(ORDER)}")
    args.scenarios = [s for s in ORDER if s in chosen]
    return args


def scenario_runners(args: argparse.Namespace, settings: Settings) -> dict[str, Callable[[], dict]]:
    return {
        "digits": lambda: run_digits(settings, args.concurrency),
        "grpc": lambda: run_grpc(settings, args.concurrency, args.grpc_channels),
        "observability": lambda: run_observability(
            settings,
            args.observability_rounds,
            args.observability_duration,
            args.span_cost_runs,
            args.span_cost_requests,
        ),
        "overload": lambda: run_overload(
            settings,
            args.overload_factor,
            args.overload_duration,
            args.connections,
            args.overload_model,
        ),
        "vendor": lambda: run_vendor(settings, args.vendor_concurrency),
        "triton": lambda: run_triton(settings, args.concurrency),
        "cache": lambda: run_cache(settings),
        "embedder": lambda: run_embedder(
            settings, args.embedder_concurrency, args.batch_sizes, args.embedder_wait
        ),
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server_cpus, client_cpus, pinning = cpu_split()
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # the generator runs in this process
    print(f"# {pinning}", flush=True)
    env, sink = observability_env(args, client_cpus)
    settings = Settings(
        server_cpus,
        client_cpus,
        pinning,
        args.duration,
        args.warmup,
        workdir,
        gateway_env=env,
        audit=args.audit,
    )
    report_: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "pinning": {
            "server_cpus": sorted(server_cpus or []),
            "client_cpus": sorted(client_cpus or []),
            "description": pinning,
        },
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "observability": {"tracing": args.tracing, "audit": args.audit},
        "scenarios": {},
    }
    runners = scenario_runners(args, settings)
    for name in args.scenarios:
        started = time.monotonic()
        try:
            result = runners[name]()
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the others' results
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        report_["scenarios"][name] = result
    if sink is not None:
        report_["observability"]["otlp_sink"] = _sink_stats(sink.port)
        sink.stop()
    return report_


def observability_env(
    args: argparse.Namespace, client_cpus: set[int] | None
) -> tuple[dict[str, str], Any]:
    """The gateways' OTEL_* environment, and the stand-in collector it exports to."""
    if args.tracing == "none":
        return {}, None
    if args.tracing == "console":
        return {"OTEL_TRACES_EXPORTER": "console"}, None
    port = free_port()
    sink = start_server(
        "otlp sink",
        [sys.executable, "-m", "loadtests.otlp_sink", "--port", str(port)],
        port,
        otlp_sink.READY_LINE.encode(),
        cpus=client_cpus,
    )
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}/v1/traces",
    }, sink


def _sink_stats(port: int) -> dict[str, Any]:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
            return json.loads(response.read())
    except OSError as exc:
        return {"error": str(exc)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        result = run(args, Path(tmp))
    result["elapsed_s"] = round(time.monotonic() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    png = stem.with_suffix(".png")
    pins = result["pinning"]
    title = (
        f"inference gateway bench, {result['started']}: servers on cores {pins['server_cpus']}, "
        f"load generator on {pins['client_cpus']}; p50 solid, p99 dashed"
    )
    if report.plot(result["scenarios"], png, title):
        result["plot"] = png.name
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=2))
    print()
    print(report.summary(result["scenarios"]))
    print()
    print(f"# {result['pinning']['description']}; total {result['elapsed_s']:.0f} s")
    for path in (json_path, png if "plot" in result else None):
        if path is not None:
            print(f"# results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    failed = [n for n, r in result["scenarios"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
