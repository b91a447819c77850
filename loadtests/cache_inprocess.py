"""The gateway's own cost of a cache hit against a miss, without sockets.

Builds the gateway's ASGI app from a config in this process and calls it
directly with a v2 binary digits request, as uvicorn would: miss (inputs never
seen before), hit (the same inputs). Prints one JSON line: microseconds per
request for each. Run pinned to the server's core by the cache scenario.

    python -m loadtests.cache_inprocess --config gateway.yaml [--requests 20000] [--cpus 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.app import build_runtime, create_app
from gateway.config.loader import load_config


def _request(pixels: np.ndarray) -> tuple[dict[str, Any], bytes]:
    raw = pixels.astype(np.float32).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "FP32",
                    "shape": [1, 64],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = head + raw
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v2/models/digits/infer",
        "headers": [
            (b"content-length", str(len(body)).encode()),
            (b"inference-header-content-length", str(len(head)).encode()),
        ],
    }
    return scope, body


async def _per_request_us(app: Any, requests: list[tuple[dict[str, Any], bytes]]) -> float:
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.perf_counter()
    for scope, body in requests:
        delivered = False

        async def receive(body: bytes = body) -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect: the caller stays
            return {"type": "http.disconnect"}

        await app(scope, receive, send)
    took = time.perf_counter() - started
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected statuses {sorted(set(statuses))}")
    return took / len(requests) * 1e6


async def measure(config: Path, count: int) -> dict[str, float]:
    app = create_app(build_runtime(load_config(config)))
    rng = np.random.default_rng(11)
    distinct = [_request(rng.random((1, 64), dtype=np.float32) * 16) for _ in range(count)]
    same = [_request(np.full((1, 64), 3.0, np.float32))] * count
    await _per_request_us(app, distinct[:200])  # warm-up (sessions, code paths)
    await _per_request_us(app, same[:200])
    return {
        "miss_us": round(await _per_request_us(app, distinct[200:]), 2),
        "hit_us": round(await _per_request_us(app, same), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--cpus", default=None, help="pin to these cores, e.g. 0")
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    print(json.dumps(asyncio.run(measure(args.config, args.requests))))


if __name__ == "__main__":
    main()
