"""gRPC vs HTTP: KServe v2 infer of one digits sample per request, both answered
by the same gateway process (one worker pinned to one core, dynamic batching on).

    http-binary   v2 HTTP with the binary tensor extension (loadgen.closed_loop)
    grpc-raw      ModelInfer with raw_input_contents, pre-serialized, from a
                  grpc.aio closed loop (grpc_loadgen.closed_loop)
    grpc-floor    a bare grpc.aio server answering ModelInfer with a fixed reply
                  on the same core (grpc_floor.py): what Python gRPC costs alone

The goal is gRPC throughput >= HTTP's; the floor tells how much of a shortfall
is the gRPC runtime itself rather than the gateway.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from loadtests import grpc_floor, grpc_loadgen
from loadtests.gateway_process import GatewayProcess, free_port, start_gateway, start_server
from loadtests.loadgen import run
from loadtests.probes import BATCH_SIZE, scrape_histogram
from loadtests.scenarios.common import Settings, closed_levels, level_at, print_level, ratio
from loadtests.workloads import HOST, digits_config, digits_request

HTTP = "http-binary"
GRPC = "grpc-raw"
FLOOR = "grpc-floor"
BACKEND = "digits-cpu"
GOAL = 1.0  # gRPC / HTTP throughput


def digits_grpc_request() -> bytes:
    """The same sample as `digits_request`, as a serialized ModelInferRequest."""
    import numpy as np
    from sklearn.datasets import load_digits  # bundled with scikit-learn: nothing downloaded

    from gateway.api.proto import grpc_predict_v2_pb2 as pb

    pixels = load_digits().data[:1].astype(np.float32)
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    request.outputs.add(name="probabilities")
    request.raw_input_contents.append(pixels.tobytes())
    return request.SerializeToString()


def grpc_levels(target: str, request: bytes, levels: Sequence[int], settings: Settings,
                label: str, channels: int, metrics_port: int | None = None) -> dict[str, Any]:
    """`closed_levels` for gRPC: one closed-loop run per level, with the gateway's
    mean batch size when `metrics_port` (its HTTP port) is given."""
    rows = []
    for concurrency in levels:
        before = scrape_histogram(metrics_port, BATCH_SIZE, BACKEND) if metrics_port else None
        result = run(grpc_loadgen.closed_loop(target, request, concurrency, settings.duration_s,
                                              settings.warmup_s, channels=channels))
        row = result.summary()
        if metrics_port and before is not None:
            row["mean_batch_size"] = scrape_histogram(metrics_port, BATCH_SIZE,
                                                      BACKEND).mean_since(before)
        rows.append(row)
        print_level(label, row)
    return {"levels": rows}


def run_grpc(settings: Settings, levels: Sequence[int], channels: int = 1) -> dict[str, Any]:
    print(f"grpc: v2 infer of 1 digits sample per request over HTTP and gRPC ({channels} "
          "channel(s)), one gateway worker with batching", flush=True)
    config = digits_config(batching=True)
    grpc_port = free_port()
    gateway = start_gateway(config, settings.workdir / "grpc", "--grpc-port", str(grpc_port),
                            cpus=settings.server_cpus, env=settings.gateway_env)
    try:
        variants = {
            HTTP: closed_levels(gateway, digits_request(gateway.port), levels, settings, HTTP,
                                BACKEND),
            GRPC: grpc_levels(f"{HOST}:{grpc_port}", digits_grpc_request(), levels, settings,
                              GRPC, channels, gateway.port),
        }
    finally:
        gateway.stop()
    floor = _start_floor(settings)
    try:
        variants[FLOOR] = grpc_levels(f"{HOST}:{floor.port}", digits_grpc_request(), levels,
                                      settings, FLOOR, channels)
    finally:
        floor.stop()
    return {
        "description": "v2 infer of 1 digits sample per request, HTTP binary vs gRPC raw "
                       "contents, the same gateway process (one worker pinned to one core, "
                       "batching on); gRPC floor = a bare grpc.aio ModelInfer with a fixed "
                       f"reply on the same core; gRPC over {channels} channel(s)",
        "config": config["backends"][BACKEND],
        "variants": variants,
        "ratios": [ratios(variants, c) for c in levels],
    }


def _start_floor(settings: Settings) -> GatewayProcess:
    port = free_port()
    argv = [sys.executable, "-m", "loadtests.grpc_floor", "--host", HOST, "--port", str(port)]
    return start_server("gRPC floor", argv, port, grpc_floor.READY_LINE.encode(),
                        cpus=settings.server_cpus)


def ratios(variants: dict[str, Any], concurrency: int) -> dict[str, Any]:
    http = level_at(variants[HTTP], concurrency) or {}
    grpc = level_at(variants[GRPC], concurrency) or {}
    floor = level_at(variants[FLOOR], concurrency) or {}
    throughput = ratio(grpc.get("throughput_rps"), http.get("throughput_rps"))
    return {
        "concurrency": concurrency,
        "grpc_over_http": {"throughput": throughput,
                           "p50": ratio(grpc.get("p50_ms"), http.get("p50_ms")),
                           "p99": ratio(grpc.get("p99_ms"), http.get("p99_ms"))},
        "grpc_over_floor": {"throughput": ratio(grpc.get("throughput_rps"),
                                                floor.get("throughput_rps"))},
        "floor_over_http": {"throughput": ratio(floor.get("throughput_rps"),
                                                http.get("throughput_rps"))},
        "goal": f"grpc/http throughput >= {GOAL}",
        "met": None if throughput is None else throughput >= GOAL,
    }
