"""Embedder: does the gateway's batching deliver what batching can deliver?

(a) the limit: tokenization + session.run in-process on the server's core, at
several batch sizes (the best is the limit; best / batch 1 is the in-process
batching gain); (b) the gateway with batching and (c) without, closed loop at
several concurrencies, one sentence per request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.scenarios.common import Settings, gateway_variant, level_at, ratio
from loadtests.workloads import (
    EMBEDDER_MODEL,
    EMBEDDER_TOKENIZER,
    embedder_config,
    embedder_requests,
)
from testkit.gateway_process import ROOT

BATCHING = "gateway-batching"
NO_BATCHING = "gateway"
POLL_S = 20.0  # how often to look for the model files while they are being exported
GOAL = 0.8


def wait_for_files(paths: Sequence[Path], wait_s: float) -> bool:
    """True once every path exists; polls because another process writes them."""
    deadline = time.monotonic() + wait_s
    while True:
        missing = [p for p in paths if not p.is_file()]
        if not missing:
            return True
        if time.monotonic() >= deadline:
            return False
        print(
            f"  waiting for {', '.join(str(p.relative_to(ROOT)) for p in missing)} "
            f"(polling every {POLL_S:.0f} s)",
            flush=True,
        )
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def measure_limit(settings: Settings, batch_sizes: Sequence[int]) -> dict[str, Any]:
    """Run loadtests.embedder_limit in a subprocess pinned to the server's core."""
    argv = [
        sys.executable,
        "-m",
        "loadtests.embedder_limit",
        "--batch-sizes",
        ",".join(map(str, batch_sizes)),
        "--duration",
        str(settings.duration_s),
        "--warmup",
        str(settings.warmup_s),
    ]
    if settings.server_cpus:
        argv += ["--cpus", ",".join(map(str, sorted(settings.server_cpus)))]
    budget = len(batch_sizes) * (settings.duration_s + settings.warmup_s) * 3 + 120
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=budget, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"embedder_limit failed (exit {done.returncode}):\n{done.stderr}")
    rows = json.loads(done.stdout.strip().splitlines()[-1])["batch_sizes"]
    for row in rows:
        print(
            f"  {'in-process':<24} b={row['batch_size']:<3d} {row['sentences_per_s']:>9.1f} "
            f"sentences/s  {row['ms_per_batch']:8.3f} ms per batch",
            flush=True,
        )
    best = max(rows, key=lambda r: r["sentences_per_s"])
    single = next((r for r in rows if r["batch_size"] == 1), None)
    return {
        "batch_sizes": rows,
        "limit_sentences_per_s": best["sentences_per_s"],
        "best_batch_size": best["batch_size"],
        "gain": ratio(best["sentences_per_s"], single["sentences_per_s"] if single else None),
    }


def run_embedder(
    settings: Settings, levels: Sequence[int], batch_sizes: Sequence[int], wait_s: float
) -> dict[str, Any]:
    print(
        "embedder: all-MiniLM-L6-v2, 1 sentence per request (BYTES), tokenized in the gateway",
        flush=True,
    )
    if not wait_for_files([EMBEDDER_MODEL, EMBEDDER_TOKENIZER], wait_s):
        print(f"  skipped: the model files did not appear within {wait_s:.0f} s", flush=True)
        return {"skipped": f"{EMBEDDER_MODEL} / {EMBEDDER_TOKENIZER} missing after {wait_s:.0f} s"}
    limit = measure_limit(settings, batch_sizes)
    variants = {
        BATCHING: gateway_variant(
            embedder_config(batching=True),
            "embedder-cpu",
            embedder_requests,
            levels,
            settings,
            BATCHING,
        ),
        NO_BATCHING: gateway_variant(
            embedder_config(batching=False),
            "embedder-cpu",
            embedder_requests,
            levels,
            settings,
            NO_BATCHING,
        ),
    }
    return {
        "description": "all-MiniLM-L6-v2 (models/embedder/1), one sentence per v2 binary "
        "request cycling through 32 sentences; in-process limit = tokenization + "
        "session.run on the server's core, intra_op_num_threads=1",
        "limit": limit,
        "variants": variants,
        "ratios": batching_ratios(limit, variants, max(levels)),
    }


def batching_ratios(
    limit: dict[str, Any], variants: dict[str, Any], concurrency: int
) -> dict[str, Any]:
    """b/a, b/c and (b/c) / in-process gain at one concurrency, with the goals."""
    batched = (level_at(variants[BATCHING], concurrency) or {}).get("throughput_rps")
    single = (level_at(variants[NO_BATCHING], concurrency) or {}).get("throughput_rps")
    b_over_a = ratio(batched, limit["limit_sentences_per_s"])
    b_over_c = ratio(batched, single)
    gain_ratio = ratio(b_over_c, limit["gain"])
    return {
        "concurrency": concurrency,
        "b_over_a": b_over_a,
        "b_over_c": b_over_c,
        "in_process_gain": limit["gain"],
        "gain_ratio": gain_ratio,
        "goals": {
            "b_over_a": {"goal": f">= {GOAL}", "met": b_over_a is not None and b_over_a >= GOAL},
            "gain_ratio": {
                "goal": f">= {GOAL}",
                "met": gain_ratio is not None and gain_ratio >= GOAL,
            },
        },
    }
