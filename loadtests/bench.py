"""`make bench`: the benchmark of issue 3, in one run.

    digits    the gateway's overhead on a tiny model: without and with batching,
              against the FastAPI floor (a trivial FastAPI app on the same core)
    overload  the embedder (no batching, a queue one request deep) offered 3x its
              capacity open loop: admitted latency, time to shed, errors, gateway
              RSS (--overload-model digits: digits with batching instead)
    vendor    chat completions against the fake vendor (zero latency), directly and
              through one gateway worker: throughput at c=64, added latency at c=1
    embedder  all-MiniLM-L6-v2: the in-process limit (tokenize + run, no HTTP) at
              several batch sizes, against the gateway with and without batching

Servers (and the in-process limit) are pinned to the first allowed core, the
load generator to the others. Scenarios run in the order above: the embedder
comes last because it may have to wait for its model files. Results go to
loadtests/results/bench-<time>.json with a latency/throughput plot beside it.

    python loadtests/bench.py [--scenarios digits,embedder,overload] [--duration 10]
                              [--warmup 2] [--concurrency 32]
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

from loadtests import report  # noqa: E402
from loadtests.gateway_process import ROOT  # noqa: E402
from loadtests.scenarios.common import Settings, cpu_split  # noqa: E402
from loadtests.scenarios.digits import run_digits  # noqa: E402
from loadtests.scenarios.embedder import run_embedder  # noqa: E402
from loadtests.scenarios.overload import run_overload  # noqa: E402
from loadtests.scenarios.vendor import run_vendor  # noqa: E402

RESULTS = ROOT / "loadtests" / "results"
ORDER = ("digits", "overload", "vendor", "embedder")


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(ORDER),
                        help="comma-separated subset of: %(default)s")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="measured seconds per level (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="unrecorded seconds before each level (default %(default)s)")
    parser.add_argument("--concurrency", type=int_list, default=[32],
                        help="digits: closed-loop concurrency levels, e.g. 1,8,32,64 (default 32)")
    parser.add_argument("--vendor-concurrency", type=int_list, default=[1, 64],
                        help="vendor passthrough: levels; added latency is read at the lowest, "
                             "throughput at the highest (default 1,64)")
    parser.add_argument("--embedder-concurrency", type=int_list, default=[1, 8, 32, 64])
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 8, 16, 32, 64],
                        help="embedder: in-process batch sizes")
    parser.add_argument("--embedder-wait", type=float, default=2400.0,
                        help="seconds to wait for the embedder's model files (default 40 min)")
    parser.add_argument("--overload-factor", type=float, default=3.0,
                        help="open-loop rate as a multiple of the measured capacity")
    parser.add_argument("--overload-duration", type=float, default=20.0)
    parser.add_argument("--overload-model", choices=("embedder", "digits"), default="embedder",
                        help="overload the compute-bound embedder (default) or the "
                             "HTTP-bound digits model")
    parser.add_argument("--connections", type=int, default=256,
                        help="overload: the open loop's connection pool")
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
        "overload": lambda: run_overload(settings, args.overload_factor, args.overload_duration,
                                         args.connections, args.overload_model),
        "vendor": lambda: run_vendor(settings, args.vendor_concurrency),
        "embedder": lambda: run_embedder(settings, args.embedder_concurrency, args.batch_sizes,
                                         args.embedder_wait),
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server_cpus, client_cpus, pinning = cpu_split()
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # the generator runs in this process
    print(f"# {pinning}", flush=True)
    settings = Settings(server_cpus, client_cpus, pinning, args.duration, args.warmup, workdir)
    report_: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "pinning": {"server_cpus": sorted(server_cpus or []),
                    "client_cpus": sorted(client_cpus or []), "description": pinning},
        "duration_s": args.duration, "warmup_s": args.warmup,
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
    return report_


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
    title = (f"inference gateway bench, {result['started']}: servers on cores {pins['server_cpus']}, "
             f"load generator on {pins['client_cpus']}; p50 solid, p99 dashed")
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
