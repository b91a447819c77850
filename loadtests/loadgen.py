"""HTTP/1.1 load generators on raw asyncio streams: closed loop and open loop.

Closed loop: each of `concurrency` connections sends a pre-encoded request,
waits for the whole response and sends the next, so the offered load follows
the server's speed. Open loop: requests leave on a fixed schedule whatever the
server does, over a bounded pool of connections, so an overloaded server meets
the load real callers would send it.

Both keep the client's own cost per request at a few microseconds (no HTTP
library, no per-request objects beyond a list append), so they do not hide
the server's limit the way a general-purpose client would.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a load coroutine on uvloop when installed: its cheaper I/O path leaves
    more of the generator's core for sending and reading."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    if not latencies_s:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    lat = np.asarray(latencies_s) * 1000.0
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p90_ms": round(float(p90), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(lat.max()), 3),
    }


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0  # connection failures and malformed responses

    def summary(self) -> dict[str, Any]:
        ok = self.statuses.get(200, 0)
        return {
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "requests": len(self.latencies_s),
            "ok": ok,
            "throughput_rps": round(ok / self.duration_s, 1) if self.duration_s else 0.0,
            **percentiles_ms(self.latencies_s),
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


# -- closed loop ---------------------------------------------------------------


async def _connection(
    host: str,
    port: int,
    requests: Sequence[bytes],
    first: int,
    stop_at: float,
    record_from: float,
    result: LoadResult,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    clock = time.perf_counter
    count = len(requests)
    index = first
    try:
        while True:
            started = clock()
            if started >= stop_at:
                return
            writer.write(requests[index % count])
            index += 1
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


async def closed_loop(
    host: str,
    port: int,
    request: bytes | Sequence[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
) -> LoadResult:
    """Run `concurrency` closed loops for warmup + duration; record after the warm-up.

    `request` may be a list of pre-encoded requests: each connection cycles
    through it from its own starting point, so concurrent requests differ.
    """
    requests = [request] if isinstance(request, bytes) else list(request)
    start = time.perf_counter()
    record_from = start + warmup_s
    stop_at = record_from + duration_s
    result = LoadResult(concurrency=concurrency, duration_s=duration_s)
    await asyncio.gather(
        *(
            _connection(host, port, requests, i, stop_at, record_from, result)
            for i in range(concurrency)
        )
    )
    return result


# -- open loop -----------------------------------------------------------------


@dataclass
class OpenLoopResult:
    rate_rps: float
    duration_s: float
    connections: int
    scheduled: int = 0
    not_sent: int = 0  # due while every connection of the pool was busy: never sent
    unanswered: int = 0  # sent, still without an answer when the drain time ran out
    errors: int = 0  # connection failures and malformed responses
    # Per status: time from the write of the request to the end of its response.
    latencies_s: defaultdict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    # How late each sent request left against its schedule: the generator's own health.
    send_lag_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        answered = sum(len(v) for v in self.latencies_s.values())
        return {
            "offered_rps": round(self.rate_rps, 1),
            "duration_s": self.duration_s,
            "connections": self.connections,
            "scheduled": self.scheduled,
            "sent": self.scheduled - self.not_sent,
            "not_sent": self.not_sent,
            "answered": answered,
            "unanswered": self.unanswered,
            "errors": self.errors,
            "statuses": {
                str(status): {"count": len(lat), **percentiles_ms(lat)}
                for status, lat in sorted(self.latencies_s.items())
            },
            "send_lag": percentiles_ms(self.send_lag_s),
        }


class _Conn:
    __slots__ = ("reader", "sent_at", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.sent_at: float | None = None  # None: idle


class _Flight:
    """Requests sent and not yet answered; wakes the drain once it reaches zero."""

    __slots__ = ("count", "drained", "draining")

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self.drained = asyncio.Event()

    def landed(self) -> None:
        self.count -= 1
        if self.draining and self.count == 0:
            self.drained.set()


async def _answers(
    conn: _Conn, idle: list[_Conn], flight: _Flight, result: OpenLoopResult, host: str, port: int
) -> None:
    """Read one connection's responses for as long as the run lasts."""
    clock = time.perf_counter
    latencies = result.latencies_s
    while True:
        try:
            status = await _read_response(conn.reader)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            # The server closed the connection: its request (if any) is lost.
            if conn.sent_at is None:
                idle.remove(conn)  # rare: an idle connection closed under us
            else:
                result.errors += 1
                flight.landed()
            conn.writer.close()
            conn.reader, conn.writer = await asyncio.open_connection(host, port)
            conn.sent_at = None
            idle.append(conn)
            continue
        latencies[status].append(clock() - conn.sent_at)  # type: ignore[operator]
        conn.sent_at = None
        idle.append(conn)
        flight.landed()


async def _schedule(
    request: bytes,
    rate_rps: float,
    duration_s: float,
    idle: list[_Conn],
    flight: _Flight,
    result: OpenLoopResult,
) -> None:
    """Send request k at start + k / rate, whatever the answers do.

    The timer wakes about once a millisecond, so requests leave in small bursts
    of those due since the last wake-up; each keeps its lag against the schedule.
    """
    clock = time.perf_counter
    interval = 1.0 / rate_rps
    total = int(duration_s * rate_rps)
    lags = result.send_lag_s
    start = clock()
    k = 0
    while k < total:
        now = clock()
        due = min(total, int((now - start) * rate_rps) + 1)
        while k < due:
            if idle:
                conn = idle.pop()
                conn.sent_at = now
                conn.writer.write(request)
                flight.count += 1
                lags.append(now - (start + k * interval))
            else:
                result.not_sent += 1
            k += 1
        if k < total:
            await asyncio.sleep(start + k * interval - clock())
    result.scheduled = total


async def open_loop(
    host: str,
    port: int,
    request: bytes,
    rate_rps: float,
    duration_s: float,
    connections: int = 256,
    drain_s: float = 5.0,
) -> OpenLoopResult:
    """Offer `rate_rps` for `duration_s` over at most `connections` connections.

    A request that falls due while every connection is busy is counted as not
    sent (HTTP/1.1 allows one request in flight per connection). After the last
    send, answers are awaited for at most `drain_s`; the rest are unanswered.
    """
    result = OpenLoopResult(rate_rps=rate_rps, duration_s=duration_s, connections=connections)
    opened = await asyncio.gather(
        *(asyncio.open_connection(host, port) for _ in range(connections))
    )
    conns = [_Conn(reader, writer) for reader, writer in opened]
    idle = list(conns)
    flight = _Flight()
    readers = [asyncio.create_task(_answers(c, idle, flight, result, host, port)) for c in conns]
    try:
        await _schedule(request, rate_rps, duration_s, idle, flight, result)
        flight.draining = True
        if flight.count:
            try:
                await asyncio.wait_for(flight.drained.wait(), drain_s)
            except TimeoutError:
                pass
        result.unanswered = flight.count
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for conn in conns:
            conn.writer.close()
    return result
