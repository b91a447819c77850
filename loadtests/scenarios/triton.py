"""Triton: what the gateway adds in front of a remote Triton server.

The same v2 binary request (one digits sample) sent straight to Triton's HTTP
endpoint, then to a gateway whose `type: triton` backend calls that Triton over
gRPC. Triton (testkit/triton_server.py: PyTriton, digits on ONNX Runtime behind
its dynamic batcher) runs for both variants on the servers' core; the gateway
shares that core with it, so the comparison charges the gateway's whole CPU
cost, not only its latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loadtests.scenarios.common import Settings, closed_levels, gateway_variant, level_at, ratio
from loadtests.workloads import digits_request
from testkit.triton_process import start_triton

DIRECT = "triton-direct"
GATEWAY = "gateway-triton"
# The gateway also batches (`batching`): one Triton call carries the rows of
# every request that arrived meanwhile, instead of one call per request.
BATCHING = "gateway-triton-batching"
BACKEND = "digits-triton"


def gateway_config(grpc_url: str, batching: bool) -> dict[str, Any]:
    backend: dict[str, Any] = {
        "type": "triton",
        "url": grpc_url,
        "model": "digits",
        "max_concurrency": 64,
        "max_queue": 1024,
        "timeout_ms": 10000,
    }
    if batching:
        # Few calls in flight: requests that arrive meanwhile wait in the gateway's
        # queue and leave together, in one call, as soon as one returns.
        backend["max_concurrency"] = 2
        backend["batching"] = {"max_batch_size": 64, "max_queue_delay_us": 0}
    return {
        "backends": {BACKEND: backend},
        "models": {
            "digits": {
                "signature": {
                    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
                    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
                },
                "route": {"backends": [BACKEND]},
            }
        },
    }


def run_triton(settings: Settings, levels: Sequence[int]) -> dict[str, Any]:
    print("triton: v2 binary infer of 1 digits sample, direct vs through the gateway", flush=True)
    triton = start_triton(cpus=settings.server_cpus)
    try:
        variants = {
            DIRECT: closed_levels(
                triton.server, digits_request(triton.http_port), levels, settings, DIRECT
            ),
            GATEWAY: gateway_variant(
                gateway_config(triton.grpc_url, batching=False),
                BACKEND,
                digits_request,
                levels,
                settings,
                GATEWAY,
            ),
            BATCHING: gateway_variant(
                gateway_config(triton.grpc_url, batching=True),
                BACKEND,
                digits_request,
                levels,
                settings,
                BATCHING,
            ),
        }
    finally:
        triton.stop()
    return {
        "description": "v2 HTTP binary infer of 1 digits sample per request, to Triton "
        "(PyTriton, dynamic batching, ONNX Runtime in its Python backend) directly and "
        "through the gateway (type: triton over gRPC); Triton and the gateway share the "
        "servers' core",
        "variants": variants,
        "vs_direct": [
            added_cost(variants, name, c) for name in (GATEWAY, BATCHING) for c in levels
        ],
    }


def added_cost(variants: dict[str, Any], name: str, concurrency: int) -> dict[str, Any]:
    direct = level_at(variants[DIRECT], concurrency) or {}
    via = level_at(variants[name], concurrency) or {}
    added = {
        key: round(via[key] - direct[key], 3)
        for key in ("p50_ms", "p99_ms")
        if key in via and key in direct
    }
    return {
        "variant": name,
        "concurrency": concurrency,
        "throughput_ratio": ratio(via.get("throughput_rps"), direct.get("throughput_rps")),
        "added_p50_ms": added.get("p50_ms"),
        "added_p99_ms": added.get("p99_ms"),
    }
