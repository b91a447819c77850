"""gRPC vs HTTP: KServe v2 infer of one digits sample per request, answered by
the gateway (one worker pinned to one core, dynamic batching on).

    http-binary         v2 HTTP with the binary tensor extension (loadgen.closed_loop)
    grpc-raw            ModelInfer with raw_input_contents, the default engine
                        (gRPC's threaded server handing calls to the event loop)
    grpc-raw-aio        the same on the grpc.aio engine
    grpc-floor          a bare threaded gRPC server answering ModelInfer with a
                        fixed reply on the same core (grpc_floor.py)
    grpc-floor-aio      the same on grpc.aio

gRPC load comes from h2load (C) when it is installed, else from a grpc.aio
client, which saturates its own core near the rates measured here (the
result says which). The goal is gRPC throughput >= HTTP's; the floors tell how
much of a shortfall is the Python gRPC runtime itself rather than the gateway.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from loadtests import grpc_floor, grpc_loadgen, h2load_grpc
from loadtests.loadgen import run
from loadtests.probes import BATCH_SIZE, counter_total, scrape_histogram
from loadtests.scenarios.common import Settings, closed_levels, level_at, print_level, ratio
from loadtests.workloads import HOST, digits_config, digits_request
from testkit.gateway_process import GatewayProcess, free_port, start_gateway, start_server

HTTP = "http-binary"
GRPC = "grpc-raw"
GRPC_AIO = "grpc-raw-aio"
FLOOR = "grpc-floor"
FLOOR_AIO = "grpc-floor-aio"
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


def grpc_levels(
    target: str,
    request: bytes,
    levels: Sequence[int],
    settings: Settings,
    label: str,
    channels: int,
    metrics_port: int | None = None,
) -> dict[str, Any]:
    """`closed_levels` for gRPC: one closed-loop run per level, with the gateway's
    mean batch size when `metrics_port` (its HTTP port) is given."""
    rows = []
    for concurrency in levels:
        before = scrape_histogram(metrics_port, BATCH_SIZE, BACKEND) if metrics_port else None
        grpc_ok = grpc_answers(metrics_port) if metrics_port else None
        if h2load_grpc.available():
            row = h2load_grpc.closed_loop(
                target,
                request,
                concurrency,
                settings.duration_s,
                settings.warmup_s,
                connections=channels,
            )
        else:
            row = run(
                grpc_loadgen.closed_loop(
                    target,
                    request,
                    concurrency,
                    settings.duration_s,
                    settings.warmup_s,
                    channels=channels,
                )
            ).summary()
            row["load_generator"] = "grpc.aio client (install nghttp2-client for h2load)"
        if metrics_port and grpc_ok is not None:
            # h2load sees HTTP statuses only: the gateway counts gRPC outcomes.
            row["gateway_grpc_ok"] = grpc_answers(metrics_port) - grpc_ok
        if metrics_port and before is not None:
            row["mean_batch_size"] = scrape_histogram(metrics_port, BATCH_SIZE, BACKEND).mean_since(
                before
            )
        rows.append(row)
        print_level(label, row)
    return {"levels": rows}


def grpc_answers(port: int) -> float:
    """gRPC calls the gateway answered OK so far (its request counter)."""
    return counter_total(port, "gateway_requests", code="200", protocol="v2_grpc")


def run_grpc(settings: Settings, levels: Sequence[int], channels: int = 1) -> dict[str, Any]:
    generator = "h2load" if h2load_grpc.available() else "a grpc.aio client"
    print(
        f"grpc: v2 infer of 1 digits sample per request over HTTP and gRPC ({channels} "
        f"connection(s), load from {generator}), one gateway worker with batching",
        flush=True,
    )
    request = digits_grpc_request()
    variants: dict[str, Any] = {}
    for engine, label in (("threads", GRPC), ("aio", GRPC_AIO)):
        config = digits_config(batching=True)
        config["server"] = {"grpc": {"engine": engine}}
        grpc_port = free_port()
        gateway = start_gateway(
            config,
            settings.workdir / f"grpc-{engine}",
            "--grpc-port",
            str(grpc_port),
            cpus=settings.server_cpus,
            env=settings.gateway_env,
        )
        try:
            if engine == "threads":  # HTTP does not depend on the gRPC engine: measured once
                variants[HTTP] = closed_levels(
                    gateway, digits_request(gateway.port), levels, settings, HTTP, BACKEND
                )
            variants[label] = grpc_levels(
                f"{HOST}:{grpc_port}", request, levels, settings, label, channels, gateway.port
            )
        finally:
            gateway.stop()
    for engine, label in (("threads", FLOOR), ("aio", FLOOR_AIO)):
        floor = _start_floor(settings, engine)
        try:
            variants[label] = grpc_levels(
                f"{HOST}:{floor.port}", request, levels, settings, label, channels
            )
        finally:
            floor.stop()
    return {
        "description": "v2 infer of 1 digits sample per request, HTTP binary vs gRPC raw "
        "contents (one gateway worker pinned to one core, batching on), on the "
        "threaded engine (default) and grpc.aio; floors = bare Python gRPC "
        "servers answering ModelInfer with a fixed reply on the same core; "
        f"gRPC over {channels} connection(s), load from {generator}",
        "config": config["backends"][BACKEND],
        "variants": variants,
        "ratios": [ratios(variants, c) for c in levels],
    }


def _start_floor(settings: Settings, engine: str) -> GatewayProcess:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "loadtests.grpc_floor",
        "--host",
        HOST,
        "--port",
        str(port),
        "--engine",
        engine,
    ]
    return start_server(
        f"gRPC floor ({engine})",
        argv,
        port,
        grpc_floor.READY_LINE.encode(),
        cpus=settings.server_cpus,
    )


def ratios(variants: dict[str, Any], concurrency: int) -> dict[str, Any]:
    at = {name: level_at(variant, concurrency) or {} for name, variant in variants.items()}
    rps = {name: row.get("throughput_rps") for name, row in at.items()}
    http, grpc = at[HTTP], at[GRPC]
    throughput = ratio(rps[GRPC], rps[HTTP])
    return {
        "concurrency": concurrency,
        "grpc_over_http": {
            "throughput": throughput,
            "p50": ratio(grpc.get("p50_ms"), http.get("p50_ms")),
            "p99": ratio(grpc.get("p99_ms"), http.get("p99_ms")),
        },
        "grpc_aio_over_http": {"throughput": ratio(rps[GRPC_AIO], rps[HTTP])},
        "grpc_over_floor": {"throughput": ratio(rps[GRPC], rps[FLOOR])},
        "floor_over_http": {"throughput": ratio(rps[FLOOR], rps[HTTP])},
        "floor_aio_over_http": {"throughput": ratio(rps[FLOOR_AIO], rps[HTTP])},
        "goal": f"grpc/http throughput >= {GOAL}",
        "met": None if throughput is None else throughput >= GOAL,
    }
