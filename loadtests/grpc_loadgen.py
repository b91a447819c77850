"""A gRPC closed-loop load generator: KServe v2 ModelInfer over grpc.aio.

The gRPC counterpart of `loadgen.closed_loop`, with results of the same shape
(throughput, p50/p90/p99, errors): `concurrency` loops each send a request,
wait for its answer and send the next. Requests are serialized once before any
timing and answers are not parsed (the call's status is all that is read), so
the generator pays gRPC's own cost per call and nothing more.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from loadtests.loadgen import percentiles_ms

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class GrpcLoadResult:
    concurrency: int
    duration_s: float
    channels: int
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # gRPC status names
    errors: int = 0  # calls that did not end with a status (the channel broke)

    def summary(self) -> dict[str, Any]:
        ok = self.statuses.get("OK", 0)
        return {
            "concurrency": self.concurrency,
            "channels": self.channels,
            "duration_s": round(self.duration_s, 3),
            "requests": len(self.latencies_s),
            "ok": ok,
            "throughput_rps": round(ok / self.duration_s, 1) if self.duration_s else 0.0,
            **percentiles_ms(self.latencies_s),
            "errors": self.errors,
            "statuses": dict(sorted(self.statuses.items())),
            "shed": self.statuses.get("UNAVAILABLE", 0),
        }


async def _loop(
    call: grpc.aio.UnaryUnaryMultiCallable,
    requests: Sequence[bytes],
    first: int,
    stop_at: float,
    record_from: float,
    timeout_s: float,
    result: GrpcLoadResult,
) -> None:
    clock = time.perf_counter
    count = len(requests)
    index = first
    latencies = result.latencies_s
    statuses = result.statuses
    while True:
        started = clock()
        if started >= stop_at:
            return
        try:
            await call(requests[index % count], timeout=timeout_s)
            status = "OK"
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        except Exception:  # noqa: BLE001 - a broken channel is counted, never fatal
            result.errors += 1
            continue
        index += 1
        if started >= record_from:
            latencies.append(clock() - started)
            statuses[status] += 1


async def closed_loop(
    target: str,
    request: bytes | Sequence[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    channels: int = 1,
    timeout_s: float = 10.0,
) -> GrpcLoadResult:
    """Run `concurrency` closed loops over `channels` connections (HTTP/2
    multiplexes the loops of one channel) for warmup + duration; record after
    the warm-up. `request` is one serialized ModelInferRequest or several."""
    requests = [request] if isinstance(request, bytes) else list(request)
    # A local subchannel pool each: channels to one target do not share a connection.
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    opened = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in opened))
        # No serializers: the bytes go out as they are and come back unparsed.
        calls = [channel.unary_unary(MODEL_INFER) for channel in opened]
        start = time.perf_counter()
        record_from = start + warmup_s
        stop_at = record_from + duration_s
        result = GrpcLoadResult(concurrency=concurrency, duration_s=duration_s, channels=channels)
        await asyncio.gather(
            *(
                _loop(calls[i % channels], requests, i, stop_at, record_from, timeout_s, result)
                for i in range(concurrency)
            )
        )
        return result
    finally:
        await asyncio.gather(*(channel.close() for channel in opened))
