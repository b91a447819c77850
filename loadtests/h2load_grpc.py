"""Unary gRPC load from h2load (nghttp2's C load generator), closed loop.

Why not a Python client: a grpc.aio client on one core tops out near the rate
it is meant to measure (~4,000 calls/s here), so it would hide the server's
limit. h2load sends the same pre-framed gRPC message (a 5-byte length prefix
and the serialized request) on `connections` HTTP/2 connections with
`concurrency` streams in flight in all, and logs each call's latency.

h2load reads HTTP statuses only: a gRPC error also arrives with HTTP 200 and
its status in the trailers. Callers that need gRPC statuses count them on
the server (the gateway's `gateway_requests_total{protocol="v2_grpc"}`).

Debian/Ubuntu: `apt-get install nghttp2-client`.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from loadtests.loadgen import percentiles_ms

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def available() -> bool:
    return shutil.which("h2load") is not None


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC message on the wire."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def closed_loop(
    target: str,
    message: bytes,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    connections: int = 1,
    path: str = MODEL_INFER,
) -> dict[str, Any]:
    """`concurrency` calls in flight over `connections` connections for
    warmup + duration; the summary covers the measured part only, in the
    shape of `grpc_loadgen.GrpcLoadResult.summary()`."""
    if concurrency % connections:
        raise ValueError(
            f"concurrency {concurrency} is not a multiple of {connections} connections"
        )
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body = Path(tmp) / "request.bin"
        body.write_bytes(grpc_frame(message))
        log = Path(tmp) / "calls.tsv"
        argv = [
            "h2load",
            "--duration",
            f"{duration_s:g}",
            "--warm-up-time",
            f"{warmup_s:g}",
            "--clients",
            str(connections),
            "--max-concurrent-streams",
            str(concurrency // connections),
            "--data",
            str(body),
            "--header",
            "content-type: application/grpc",
            "--header",
            "te: trailers",
            "--log-file",
            str(log),
            f"http://{target}{path}",
        ]
        finished = subprocess.run(
            argv, capture_output=True, text=True, timeout=warmup_s + duration_s + 60
        )
        if finished.returncode != 0:
            raise RuntimeError(f"h2load failed ({finished.returncode}): {finished.stderr[-2000:]}")
        latencies, statuses = _read_log(log)
    ok = statuses.get("200", 0)
    return {
        "concurrency": concurrency,
        "channels": connections,
        "duration_s": round(duration_s, 3),
        "requests": len(latencies),
        "ok": ok,
        "throughput_rps": round(ok / duration_s, 1) if duration_s else 0.0,
        **percentiles_ms(latencies),
        "errors": sum(v for k, v in statuses.items() if k != "200"),
        "statuses": {f"http {k}": v for k, v in sorted(statuses.items())},
        "shed": 0,
        "load_generator": "h2load",
    }


def _read_log(path: Path) -> tuple[list[float], dict[str, int]]:
    """Latencies (s) and HTTP statuses of the measured calls: h2load logs only
    the calls of the main duration, not the warm-up's."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        status = fields[1]
        statuses[status] = statuses.get(status, 0) + 1
        latencies.append(int(fields[2]) / 1e6)
    return latencies, statuses
