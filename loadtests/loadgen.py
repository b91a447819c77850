"""A closed-loop HTTP/1.1 load generator on raw asyncio streams.

Each of `concurrency` connections sends one pre-encoded request, waits for the
whole response, and sends the next: offered load follows the server's speed,
and the client's own cost per request stays a few microseconds, so it does not
hide the server's limit the way a general-purpose client library would.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0  # connection failures and malformed responses

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        ok = self.statuses.get(200, 0)
        lat = np.array(self.latencies_s) * 1000.0 if self.latencies_s else np.zeros(1)
        return {
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "requests": len(self.latencies_s),
            "ok": ok,
            "throughput_rps": round(ok / self.duration_s, 1) if self.duration_s else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p90_ms": round(float(np.percentile(lat, 90)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "shed": self.statuses.get(503, 0),
        }


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


async def _connection(host: str, port: int, request: bytes, stop_at: float, record_from: float,
                      result: LoadResult) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    clock = time.perf_counter
    try:
        while True:
            started = clock()
            if started >= stop_at:
                return
            writer.write(request)
            try:
                status = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            if started >= record_from:
                result.latencies_s.append(clock() - started)
                result.statuses[status] += 1
    finally:
        writer.close()


async def closed_loop(host: str, port: int, request: bytes, concurrency: int,
                      duration_s: float, warmup_s: float) -> LoadResult:
    """Run `concurrency` closed loops for warmup + duration; record after the warm-up."""
    start = time.perf_counter()
    record_from = start + warmup_s
    stop_at = record_from + duration_s
    result = LoadResult(concurrency=concurrency, duration_s=duration_s)
    await asyncio.gather(*(
        _connection(host, port, request, stop_at, record_from, result) for _ in range(concurrency)
    ))
    return result
