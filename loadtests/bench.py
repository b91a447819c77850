"""`make bench`: closed-loop load against a real gateway process, results as JSON.

Scenario `digits-binary`: KServe v2 binary tensor infer of one digits sample
per request, one gateway worker. The server is pinned to core 0 and the load
generator to the remaining cores when the machine has at least two.

    python loadtests/bench.py [--concurrency 1,8,32,64] [--duration 10] [--warmup 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.gateway_process import ROOT, start_gateway  # noqa: E402
from loadtests.loadgen import closed_loop, http_request  # noqa: E402

RESULTS = ROOT / "loadtests" / "results"
DIGITS = ROOT / "models" / "digits" / "1" / "model.onnx"


def digits_gateway_config(batching: bool = False) -> dict:
    backend = {"type": "onnx", "path": str(DIGITS), "providers": ["cpu"],
               "max_concurrency": 1, "intra_op_threads": 1, "timeout_ms": 10000,
               "max_queue": 1024}
    if batching:
        backend["batching"] = {"max_batch_size": 64, "max_queue_delay_us": 500}
    return {
        "backends": {"digits-cpu": backend},
        "models": {
            "digits": {
                "signature": {
                    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
                    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
                },
                "route": {"backends": ["digits-cpu"]},
            }
        },
    }


def digits_binary_request(port: int) -> bytes:
    from sklearn.datasets import load_digits

    pixels = load_digits().data[:1].astype(np.float32)
    raw = pixels.tobytes()
    header = json.dumps({
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }).encode()
    return http_request("127.0.0.1", port, "/v2/models/digits/infer", header + raw,
                        {"Inference-Header-Content-Length": str(len(header))})


def cpu_split() -> tuple[set[int] | None, set[int] | None, str]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, f"not pinned: only {len(cpus)} core(s) available"
    server, client = {cpus[0]}, set(cpus[1:])
    return server, client, f"server pinned to core {cpus[0]}, load generator to {sorted(client)}"


def run(args: argparse.Namespace) -> dict:
    server_cpus, client_cpus, pinning = cpu_split()
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    print(f"# {pinning}", flush=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    report: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "pinning": pinning, "duration_s": args.duration, "warmup_s": args.warmup,
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        gateway = start_gateway(digits_gateway_config(args.batching), Path(tmp), cpus=server_cpus)
        try:
            request = digits_binary_request(gateway.port)
            rows = []
            for concurrency in levels:
                result = asyncio.run(closed_loop("127.0.0.1", gateway.port, request, concurrency,
                                                 args.duration, args.warmup))
                row = result.summary()
                rows.append(row)
                print(f"digits-binary  c={concurrency:<3d} {row['throughput_rps']:>9.1f} req/s  "
                      f"p50 {row['p50_ms']:7.3f} ms  p99 {row['p99_ms']:7.3f} ms  "
                      f"errors {row['errors']}  statuses {row['statuses']}", flush=True)
            report["scenarios"]["digits-binary"] = {
                "description": "v2 HTTP binary infer, 1 digits sample per request, 1 worker",
                "levels": rows,
            }
        finally:
            gateway.stop()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--batching", action="store_true")
    args = parser.parse_args()
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"# results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
