"""Cache: what a hit costs against a miss, per tier.

Digits, one gateway worker, closed loop at concurrency 1 (latency, not
throughput, is the question). Three variants on gateways with `cache: {ttl_s}`:

* miss        every request has inputs never seen before (pre-encoded, distinct)
* local hit   the same request over and over: answered from the in-process tier
* redis hit   the same request, with the in-process tier sized to hold nothing
              (`cache.max_bytes: 0`), so every request is answered from Redis

The cost of a request is read three ways: the gateway's own time in-process
(loadtests/cache_inprocess.py calls the ASGI app directly, pinned to the
server's core: no sockets, no HTTP parsing; the goal is judged on this), the
gateway's mean time per request over HTTP (`gateway_request_duration_seconds`
sum / count: includes uvicorn writing the response, the same for hit and
miss), and the client's p50 end to end.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from loadtests.loadgen import closed_loop, run
from loadtests.probes import scrape_histogram
from loadtests.scenarios.common import Settings, print_level, ratio, running_gateway
from loadtests.workloads import DIGITS_PATH, HOST, binary_infer, digits_config

LOCAL_HIT_GOAL = 0.2  # a local hit costs at most 20% of a miss
REDIS_ADDED_P50_GOAL_MS = 1.0
DISTINCT = 40_000  # more distinct requests than a miss run can send


def _requests(port: int, count: int, seed: int = 7) -> list[bytes]:
    pixels = np.random.default_rng(seed).random((count, 64), dtype=np.float32) * 16
    tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 64]}
    return [
        binary_infer(port, DIGITS_PATH, tensor, row.tobytes(), "probabilities") for row in pixels
    ]


def _server_mean_ms(port: int) -> tuple[float, float]:
    """(sum, count) of gateway_request_duration_seconds for digits."""
    totals = scrape_histogram(port, "gateway_request_duration_seconds", model="digits")
    return totals.total, totals.count


def _in_process(config: dict[str, Any], settings: Settings, label: str) -> dict[str, float]:
    """Microseconds per request, hit and miss, calling the ASGI app in a subprocess."""
    import subprocess
    import sys

    import yaml

    from testkit.gateway_process import ROOT

    path = settings.workdir / f"{label}-inprocess.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "loadtests.cache_inprocess", "--config", str(path)]
    if settings.server_cpus:
        argv += ["--cpus", ",".join(map(str, sorted(settings.server_cpus)))]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cache_inprocess failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"  in-process {label:<13} miss {result['miss_us']} us, hit {result['hit_us']} us "
        "per request",
        flush=True,
    )
    return result


def _variant(
    config: dict[str, Any], settings: Settings, label: str, requests_for: Any
) -> dict[str, Any]:
    with running_gateway(config, settings, label) as gateway:
        requests = requests_for(gateway.port)
        if len(requests) == 1:  # a hit variant: fill the cache first
            run(closed_loop(HOST, gateway.port, requests, 1, 0.2, 0.0))
        before = _server_mean_ms(gateway.port)
        result = run(closed_loop(HOST, gateway.port, requests, 1, settings.duration_s, 0.0))
        after = _server_mean_ms(gateway.port)
    row = result.summary()
    count = after[1] - before[1]
    row["server_mean_ms"] = round((after[0] - before[0]) / count * 1000, 4) if count else None
    print_level(label, row)
    print(
        f"  {label:<24} gateway's own mean time per request {row['server_mean_ms']} ms", flush=True
    )
    return row


def run_cache(settings: Settings) -> dict[str, Any]:
    print("cache: digits, closed loop c=1, miss vs in-process hit vs Redis hit", flush=True)
    config = digits_config(batching=False)
    config["models"]["digits"]["cache"] = {"ttl_s": 3600}
    variants = {
        "miss": _variant(config, settings, "miss", lambda port: _requests(port, DISTINCT)),
        "local-hit": _variant(config, settings, "local-hit", lambda port: _requests(port, 1)),
    }
    in_process = {"local": _in_process(config, settings, "local")}
    redis = _start_redis()
    if redis is None:
        print("  redis hit: skipped (no redis-server binary)", flush=True)
    else:
        try:
            # Replicas sign what they keep in Redis with a shared secret.
            os.environ.setdefault("GATEWAY_BENCH_CACHE_SIGNING_KEY", "bench-signing-key")
            redis_config = {
                **config,
                "redis": {"url": redis.url},
                "cache": {"max_bytes": 0, "signing_key_env": "GATEWAY_BENCH_CACHE_SIGNING_KEY"},
            }
            variants["redis-hit"] = _variant(
                redis_config, settings, "redis-hit", lambda port: _requests(port, 1)
            )
            in_process["redis"] = _in_process(redis_config, settings, "redis")
        finally:
            redis.close()
    return {
        "description": __doc__.split("\n\n")[1].replace("\n", " "),
        "variants": {name: {"levels": [row]} for name, row in variants.items()},
        "in_process": in_process,
        "verdict": judge(variants, in_process),
    }


def _start_redis() -> Any:
    try:
        from tests.redis_server import launch, redis_server_binary
    except ImportError:  # an installed gateway without the test suite
        return None
    binary = redis_server_binary()
    return launch(binary) if binary else None


def judge(variants: dict[str, Any], in_process: dict[str, Any]) -> dict[str, Any]:
    miss, local = variants["miss"], variants["local-hit"]
    hit_share = ratio(in_process["local"]["hit_us"], in_process["local"]["miss_us"])
    verdict: dict[str, Any] = {
        "local_hit_vs_miss": {
            "in_process_us": [in_process["local"]["hit_us"], in_process["local"]["miss_us"]],
            "server_mean_ms": [local["server_mean_ms"], miss["server_mean_ms"]],
            "client_p50_ms": [local["p50_ms"], miss["p50_ms"]],
            "ratio": hit_share,
            "http_server_ratio": ratio(local["server_mean_ms"], miss["server_mean_ms"]),
            "client_p50_ratio": ratio(local["p50_ms"], miss["p50_ms"]),
            "goal": f"<= {LOCAL_HIT_GOAL:g} (gateway's own time, in-process)",
            "met": hit_share is not None and hit_share <= LOCAL_HIT_GOAL,
        },
    }
    redis = variants.get("redis-hit")
    if redis is not None:
        added = round(redis["p50_ms"] - local["p50_ms"], 3)
        verdict["redis_hit_added"] = {
            "client_p50_ms": added,
            "server_mean_ms": round(redis["server_mean_ms"] - local["server_mean_ms"], 4),
            "goal": f"< {REDIS_ADDED_P50_GOAL_MS:g} ms at p50",
            "met": added < REDIS_ADDED_P50_GOAL_MS,
        }
    return verdict
