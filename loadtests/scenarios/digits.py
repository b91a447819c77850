"""Digits: the gateway's own overhead on a tiny, overhead-bound model.

v2 binary infer of one sample per request, one gateway worker on one core,
with and without dynamic batching, against the FastAPI floor (the cheapest
FastAPI service answering the same path) measured in the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loadtests.scenarios.common import (
    Settings,
    closed_levels,
    gateway_variant,
    level_at,
    ratio,
    running_floor,
)
from loadtests.workloads import digits_config, digits_request

GATEWAY = "gateway"
BATCHING = "gateway-batching"
FLOOR = "fastapi-floor"


def run_digits(settings: Settings, levels: Sequence[int]) -> dict[str, Any]:
    print("digits: v2 binary infer, 1 sample per request, 1 gateway worker", flush=True)
    variants = {
        GATEWAY: gateway_variant(
            digits_config(batching=False), "digits-cpu", digits_request, levels, settings, GATEWAY
        ),
        BATCHING: gateway_variant(
            digits_config(batching=True), "digits-cpu", digits_request, levels, settings, BATCHING
        ),
    }
    with running_floor(settings) as floor:
        variants[FLOOR] = closed_levels(floor, digits_request(floor.port), levels, settings, FLOOR)
    return {
        "description": "v2 HTTP binary infer of 1 digits sample per request; one gateway worker "
        "pinned to one core; FastAPI floor = one trivial POST route on uvicorn "
        "(uvloop + httptools, access log off) on the same core",
        "variants": variants,
        "vs_floor": [floor_ratios(variants, c) for c in levels],
    }


def floor_ratios(variants: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """Gateway / floor, per gateway variant, at one concurrency level."""
    floor = level_at(variants[FLOOR], concurrency) or {}
    row: dict[str, Any] = {"concurrency": concurrency}
    for name in (GATEWAY, BATCHING):
        level = level_at(variants[name], concurrency) or {}
        row[name] = {
            "throughput": ratio(level.get("throughput_rps"), floor.get("throughput_rps")),
            "p50": ratio(level.get("p50_ms"), floor.get("p50_ms")),
            "p99": ratio(level.get("p99_ms"), floor.get("p99_ms")),
        }
    return row
