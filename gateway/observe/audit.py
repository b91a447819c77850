"""Audit records: one JSON line per answered request (config `audit:`).

A record says who asked what and how it was answered: time of arrival, request
id, trace id, tenant, model and signature version, protocol, the backend that
answered (and the model version it reported or was configured with), cache
result, attempts and the fallbacks taken (backend and reason), status code,
latency, gateway overhead and cost. It never holds a secret (no API key, no
header) and never request content, unless the model opts in with
`audit_payload: true`: then the request body's size and, for chat, the messages.

Records are appended to an in-memory buffer on the request path (a tuple; the
JSON lines are built a batch at a time); a single writer thread is handed the
buffer every `flush_interval_ms`, or as soon as it holds half of
`max_unwritten_records`, so no request waits on a disk. Sinks: stdout, or a
file rotated at `max_bytes` keeping `backups` old files (`{pid}` in the path
gives each worker process a file of its own). With
`payload_retention_days`, whole files expire (observe/audit_sinks.py): a
housekeeping thread has the writer rotate and sweep them every hour, even
when no request comes.

What a crash loses (docs/operations.md#logs-and-audit): a process killed
outright (SIGKILL, the OOM killer) loses the records not yet written, at most
`max_unwritten_records` (half buffered, half being written) while the sink
keeps up; a machine that goes down also loses what the file sink wrote but had
not yet synced, at most `fsync_interval_ms` of it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson

from gateway.observe import tracing
from gateway.observe.audit_sinks import AuditSink, RotatingFileSink, StdoutSink

if TYPE_CHECKING:
    from gateway.core.types import RequestContext

log = logging.getLogger("gateway.observe.audit")

_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]  # a time's fraction, formatted once


class AuditLog:
    """Builds the records and buffers them for the sink's writer thread.

    Shared by the runtimes of successive config reloads while `audit:` does not
    change: `retain()` for each, `aclose()` from each; the last one closes it.
    """

    def __init__(
        self,
        sink: AuditSink,
        flush_interval_s: float = 0.2,
        max_unwritten_records: int = 256,
        fsync_interval_s: float = 1.0,
    ) -> None:
        self.sink = sink
        self.flush_interval_s = flush_interval_s
        # Handed over in halves: one half may be buffered while the other is written.
        self._batch_rows = max(1, max_unwritten_records // 2)
        self.fsync_interval_s = fsync_interval_s
        self._sync_timer: asyncio.TimerHandle | None = None
        # A bytearray, not a list of the lines: orjson's output kept alive in a
        # list makes its next dumps ten times slower (allocator), copied it is not.
        self._pending = bytearray()
        self._rows: list[tuple[Any, ...]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        self._writing: Future[None] | None = None
        self._users = 1
        # Per vendor backend: the model it is configured to run (app.py fills it).
        self.backend_models: dict[str, str] = {}
        self._closed = False
        self._second = -1
        self._second_text = ""
        self._stop_maintaining = threading.Event()
        interval = getattr(sink, "maintain_interval_s", None)
        if interval:
            threading.Thread(
                target=self._maintain_every,
                args=(interval,),
                name="audit-retention",
                daemon=True,
            ).start()

    def retain(self) -> AuditLog:
        self._users += 1
        return self

    # -- the request path ----------------------------------------------------------

    def record(
        self, ctx: RequestContext, code: int, total_s: float, version: str | None, payload: bool
    ) -> None:
        """Buffer the record of one answered request (`total_s`: its latency)."""
        rows = self._rows
        rows.append(
            (
                time.time() - total_s,
                ctx.request_id,
                tracing.trace_id_of(ctx),
                ctx.tenant,
                ctx.model,
                version,
                ctx.protocol,
                ctx.backend,
                ctx.backend_model,
                ctx.cache,
                ctx.attempts,
                ctx.failures,
                ctx.policy_notes,
                code,
                total_s,
                ctx.backend_wait_s,
                ctx.cost_usd,
                (ctx.request_bytes, ctx.audit_messages) if payload else None,
            )
        )
        if self._closed:  # answered after shutdown began: write it in place
            self._render()
            self._write(self._take())
        elif len(rows) >= self._batch_rows:
            self._hand_over()
        elif self._timer is None:
            self._schedule()

    # -- configuration changes ------------------------------------------------------

    def admin(
        self,
        action: str,
        caller: dict[str, Any],
        status: int,
        config_before: str,
        config_after: str,
        target: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record an admin action or a reload (`type: admin`), and hand it to the
        writer at once: configuration changes are rare and each one matters."""
        record: dict[str, Any] = {
            "time": self._time_text(time.time()),
            "type": "admin",
            "action": action,
            "caller": caller,
            "target": target,
            "status": status,
            "config_before": config_before,
            "config_after": config_after,
        }
        if error is not None:
            record["error"] = error
        self._pending += orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        if self._closed:
            self._write(self._take())
        else:
            self._hand_over()

    def promotion(self, decision: dict[str, Any]) -> None:
        """Record one decision of the promotion gate (`type: promotion`: its step,
        outcome and numbers; gateway/promotion/), handed to the writer at once
        like an admin record."""
        record = {"time": self._time_text(time.time()), "type": "promotion", **decision}
        self._pending += orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        if self._closed:
            self._write(self._take())
        else:
            self._hand_over()

    def _render(self) -> None:
        """Turn the buffered rows into JSON lines, in one pass (warm caches: about
        a third of the cost of building each line as its request ends)."""
        rows, self._rows = self._rows, []
        dumps = orjson.dumps
        newline = orjson.OPT_APPEND_NEWLINE
        backend_models = self.backend_models
        time_text = self._time_text
        pending = self._pending
        for (
            arrived,
            request_id,
            trace_id,
            tenant,
            model,
            version,
            protocol,
            backend,
            backend_model,
            cache,
            attempts,
            failures,
            policy_notes,
            code,
            total_s,
            wait_s,
            cost,
            payload,
        ) in rows:
            own = total_s - wait_s
            record: dict[str, Any] = {
                "time": time_text(arrived),
                "request_id": request_id,
                "trace_id": trace_id,
                "tenant": tenant,
                "model": model,
                "version": version,
                "protocol": protocol,
                "backend": backend,
                "backend_model": backend_model or backend_models.get(backend),
                "cache": cache,
                "attempts": attempts,
                "fallbacks": [
                    {"backend": name, "reason": getattr(error, "reason", "error")}
                    for name, error in failures
                ]
                if failures
                else [],
                "policies": [{"policy": name, "action": action} for name, action in policy_notes]
                if policy_notes
                else [],
                "status": code,
                # Microseconds as milliseconds: round(x, 3) costs three times as much.
                "latency_ms": int(total_s * 1e6 + 0.5) / 1000.0,
                "overhead_ms": int(own * 1e6 + 0.5) / 1000.0 if own > 0.0 else 0.0,
                "cost_usd": cost,
            }
            if payload is not None:
                record["request_bytes"] = payload[0]
                if payload[1] is not None:
                    record["messages"] = payload[1]
            pending += dumps(record, option=newline)

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop: write now
            self.flush()
            return
        self._timer = loop.call_later(self.flush_interval_s, self._hand_over)

    def _time_text(self, epoch: float) -> str:
        second = int(epoch)
        if second != self._second:  # formatted once per second, not per record
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._second_text + _MILLIS[int((epoch - second) * 1000)]

    # -- the writer ----------------------------------------------------------------

    def _take(self) -> bytearray:
        lines, self._pending = self._pending, bytearray()
        return lines

    def _hand_over(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._rows:
            self._render()
        lines = self._take()
        if lines:
            self._writing = self._writer.submit(self._write, lines)
            if self._sync_timer is None and self.fsync_interval_s > 0:
                # Written lines are synced within the interval even if no more come.
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    return
                self._sync_timer = loop.call_later(self.fsync_interval_s, self._sync_soon)

    def _sync_soon(self) -> None:
        self._sync_timer = None
        if not self._closed:
            self._writing = self._writer.submit(self._sync)

    def _sync(self) -> None:
        try:
            self.sink.sync()
        except OSError:
            log.exception("audit: the sink could not be synced to disk")

    def _write(self, lines: bytes | bytearray) -> None:
        try:
            self.sink.write(lines)
        except Exception:  # a full disk must not fail requests; say so, once per batch
            log.exception("audit: %d record(s) could not be written", lines.count(b"\n"))

    def _maintain_every(self, interval_s: float) -> None:
        # The sink is the writer thread's: maintenance is queued to it, not run here.
        while not self._stop_maintaining.wait(interval_s):
            try:
                self._writer.submit(self._maintain)
            except RuntimeError:  # shut down
                return

    def _maintain(self) -> None:
        try:
            self.sink.maintain()
        except OSError:
            log.exception("audit: expired files could not be rotated or deleted")

    def maintain(self) -> None:
        """Rotate by age and delete expired files now, and wait until done."""
        self._writer.submit(self._maintain).result()

    def flush(self) -> None:
        """Write everything buffered, and wait until it is written."""
        self._hand_over()
        if self._writing is not None:
            self._writing.result()

    async def aclose(self) -> None:
        """Flush and, when no runtime uses it any more, close the sink."""
        self._users -= 1
        if self._users > 0:
            return
        self._hand_over()
        if self._writing is not None:
            await asyncio.wrap_future(self._writing)
        self._closed = True
        self._stop_maintaining.set()
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None
        self._writer.shutdown(wait=True)
        self.sink.close()


def audit_log(
    sink: str,
    path: str | None = None,
    max_bytes: int = 0,
    backups: int = 0,
    flush_interval_s: float = 0.2,
    *,
    max_unwritten_records: int = 256,
    fsync_interval_s: float = 1.0,
    payload_retention_s: float | None = None,
) -> AuditLog | None:
    """The AuditLog a config's `audit:` section asks for (None for `sink: none`)."""
    if sink == "none":
        return None
    if sink == "stdout":
        return AuditLog(StdoutSink(), flush_interval_s, max_unwritten_records, fsync_interval_s)
    if sink == "file":
        assert path is not None
        return AuditLog(
            RotatingFileSink(
                path, max_bytes, backups, fsync_interval_s, retention_s=payload_retention_s
            ),
            flush_interval_s,
            max_unwritten_records,
            fsync_interval_s,
        )
    raise ValueError(f"audit sink: expected none, stdout or file, got {sink!r}")
