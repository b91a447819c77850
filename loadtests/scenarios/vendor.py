"""Vendor passthrough: what the gateway costs in front of a managed API.

The fake vendor (zero added latency) answers non-streaming chat completions;
the same request is sent to it directly and through one gateway worker on one
core, in the same run. Throughput is compared at concurrency 64 (the gateway's
ceiling); the added latency at concurrency 1, where neither side queues (at
64, closed-loop latency is just 64 / throughput, so it would restate the
throughput gap rather than measure what a request pays).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from loadtests.scenarios.common import (
    Settings,
    closed_levels,
    level_at,
    ratio,
    running_gateway,
)
from loadtests.workloads import HOST, http_request
from testkit.fake_vendor import start_fake_vendor
from testkit.gateway_process import GatewayProcess

KEY_ENV = "BENCH_FAKE_VENDOR_KEY"
VENDOR_KEY = "fake-key"
THROUGHPUT_GOAL_RPS = 2000.0
ADDED_P50_GOAL_MS = 1.0
ADDED_P99_GOAL_MS = 3.0
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Summarise the plot of Hamlet in one sentence."},
]


def chat_request(port: int, model: str) -> bytes:
    body = json.dumps({"model": model, "messages": MESSAGES, "max_tokens": 64}).encode()
    return http_request(
        HOST,
        port,
        "/v1/chat/completions",
        body,
        {"Content-Type": "application/json", "Authorization": f"Bearer {VENDOR_KEY}"},
    )


def gateway_config(vendor: GatewayProcess) -> dict[str, Any]:
    return {
        "backends": {
            "vendor": {
                "type": "openai",
                "base_url": f"http://{vendor.url}/v1",
                "api_key_env": KEY_ENV,
                "model": "gpt-fake",
                "max_concurrency": 256,
                "max_queue": 1024,
                "timeout_ms": 10000,
                "cost": {"usd_per_1k_input_tokens": 0.00015, "usd_per_1k_output_tokens": 0.0006},
            }
        },
        "models": {"chat": {"kind": "chat", "route": {"backends": ["vendor"]}}},
    }


def run_vendor(settings: Settings, levels: Sequence[int]) -> dict[str, Any]:
    print(
        "vendor: non-streaming chat completions, fake vendor with zero latency, "
        "direct vs through 1 gateway worker",
        flush=True,
    )
    os.environ[KEY_ENV] = VENDOR_KEY  # inherited by the gateway process, never written anywhere
    # The vendor shares the generator's cores: the gateway keeps its core to itself.
    vendor = start_fake_vendor(cpus=settings.client_cpus)
    try:
        variants = {
            "direct": closed_levels(
                vendor, chat_request(vendor.port, "gpt-fake"), levels, settings, "direct"
            )
        }
        with running_gateway(gateway_config(vendor), settings, "vendor") as gateway:
            variants["gateway"] = closed_levels(
                gateway, chat_request(gateway.port, "chat"), levels, settings, "gateway"
            )
    finally:
        vendor.stop()
    return {
        "description": "POST /v1/chat/completions (2 messages, 8 completion tokens), fake "
        "vendor on the generator's cores, gateway pinned to its own core",
        "variants": variants,
        "verdict": judge(variants, levels),
    }


def judge(variants: dict[str, Any], levels: Sequence[int]) -> dict[str, Any]:
    top, low = max(levels), min(levels)
    through = level_at(variants["gateway"], top) or {}
    direct_top = level_at(variants["direct"], top) or {}
    g_low = level_at(variants["gateway"], low) or {}
    d_low = level_at(variants["direct"], low) or {}
    added_p50 = _minus(g_low.get("p50_ms"), d_low.get("p50_ms"))
    added_p99 = _minus(g_low.get("p99_ms"), d_low.get("p99_ms"))
    rps = through.get("throughput_rps")
    return {
        "throughput": {
            "concurrency": top,
            "gateway_rps": rps,
            "direct_rps": direct_top.get("throughput_rps"),
            "ratio": ratio(rps, direct_top.get("throughput_rps")),
            "goal": f">= {THROUGHPUT_GOAL_RPS:g} req/s",
            "met": rps is not None and rps >= THROUGHPUT_GOAL_RPS,
        },
        "added_latency": {
            "concurrency": low,
            "p50_ms": added_p50,
            "p99_ms": added_p99,
            "goal": f"p50 <= {ADDED_P50_GOAL_MS:g} ms, p99 <= {ADDED_P99_GOAL_MS:g} ms",
            "met": added_p50 is not None
            and added_p99 is not None
            and added_p50 <= ADDED_P50_GOAL_MS
            and added_p99 <= ADDED_P99_GOAL_MS,
        },
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)
