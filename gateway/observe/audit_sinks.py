"""Where audit records go (observe/audit.py writes whole lines to one of
these from its writer thread): standard output, or a file rotated by size
(and by age, with a retention) and synced to disk on an interval.

Retention (`audit.payload_retention_days`): whole files expire, records with
payloads and without alike (one file, one order of events; no second file
to keep in step). The live file is rotated once its oldest record is
`rotate_after_s` old (a day, or the retention if shorter), and a rotated file
is deleted once its newest record (its mtime: rotation renames, it does not
rewrite) is older than the retention. So a record is deleted between the
retention and the retention plus a day (plus the hourly sweep) after it was
written. `maintain()`, which the audit log's writer runs every hour, rotates
and sweeps even when no record comes. The sweep also takes the expired files
of processes that are gone when the path has `{pid}` (workers restarted with
new pids would otherwise leave theirs forever).
"""

from __future__ import annotations

import calendar
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

DAY_S = 86_400.0
_FIRST_TIME = re.compile(rb'^\{"time":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)')


class AuditSink(Protocol):
    def write(self, lines: bytes | bytearray) -> None: ...  # whole lines

    def sync(self) -> None: ...  # what was written survives a machine crash

    def maintain(self) -> None: ...  # rotation by age and retention, even without writes

    def close(self) -> None: ...


class StdoutSink:
    """Lines to the process's standard output (for a log collector to pick up)."""

    def write(self, lines: bytes | bytearray) -> None:
        out = sys.stdout.buffer
        out.write(lines)
        out.flush()

    def sync(self) -> None:
        pass  # whoever reads the stream keeps it

    def maintain(self) -> None:
        pass  # so does its retention

    def close(self) -> None:
        pass


class RotatingFileSink:
    """Lines appended to `path`; past `max_bytes` (0: never) the file becomes
    `path.1` (`path.1` becomes `path.2`... up to `backups`) and a new one starts.

    With `retention_s`, also past `rotate_after_s` of age, and rotated files
    whose newest record is older than the retention are deleted (module
    docstring). `clock`: epoch seconds, injectable for tests."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int,
        backups: int,
        fsync_interval_s: float = 1.0,
        *,
        retention_s: float | None = None,
        rotate_after_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.template = str(path)
        self.path = Path(self.template.replace("{pid}", str(os.getpid())))
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync_interval_s = fsync_interval_s
        self.retention_s = retention_s
        if rotate_after_s is None and retention_s is not None:
            rotate_after_s = min(DAY_S, retention_s)
        self.rotate_after_s = rotate_after_s
        self._clock = clock
        self._file: Any = None
        self._size = 0
        self._unsynced = False
        self._synced_at = time.monotonic()
        self._started_at: float | None = None  # the live file's oldest record (None: empty)
        self._swept_at = -math.inf

    @property
    def maintain_interval_s(self) -> float | None:
        """How often `maintain()` must run for the retention to hold (None: never)."""
        if self.rotate_after_s is None:
            return None
        return max(1.0, min(3600.0, self.rotate_after_s / 4))

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Opened on first write (`gateway check` makes no file), closed by close().
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = self._file.tell()
        self._started_at = None
        if self._size and self.rotate_after_s is not None:
            # A file a previous run left: its age is its first record's.
            self._started_at = _first_record_time(self.path)

    def write(self, lines: bytes | bytearray) -> None:
        """Append whole lines (one write while no rotation falls among them)."""
        if self._file is None:
            self._open()
        now = self._clock() if self.rotate_after_s is not None else 0.0
        if self._due(now):
            self._rotate()
        limit = self.max_bytes
        while limit and self._size + len(lines) > limit:
            # The lines that still fit (at least one: a file holds at least a line).
            cut = lines.rfind(b"\n", 0, max(0, limit - self._size)) + 1
            if cut == 0 and self._size:
                self._rotate()
                continue
            cut = cut or lines.find(b"\n") + 1 or len(lines)
            self._file.write(lines[:cut])
            self._size += cut
            lines = lines[cut:]
            if not lines:
                break
            self._rotate()
        if lines:
            self._file.write(lines)
            self._size += len(lines)
        self._file.flush()
        self._unsynced = True
        if self._started_at is None and self._size:
            self._started_at = now
        if time.monotonic() - self._synced_at >= self.fsync_interval_s:
            self.sync()
        if self.retention_s is not None and now - self._swept_at >= (
            self.maintain_interval_s or 0.0
        ):
            self._sweep(now)

    def maintain(self) -> None:
        """Rotate the live file if it is due by age, and delete expired files."""
        if self.rotate_after_s is None:
            return
        now = self._clock()
        if self._file is None and self.path.exists():
            self._open()  # a previous run's file, maybe due
        if self._due(now):
            self._rotate()
        self._sweep(now)

    def _due(self, now: float) -> bool:
        return (
            self.rotate_after_s is not None
            and self._started_at is not None
            and self._size > 0
            and now - self._started_at >= self.rotate_after_s
        )

    def _sweep(self, now: float) -> None:
        """Delete the rotated files (and the files of processes that are gone,
        with `{pid}`) whose newest record is older than the retention."""
        self._swept_at = now
        if self.retention_s is None:
            return
        cutoff = now - self.retention_s
        directory = self.path.parent
        own = re.compile(re.escape(self.path.name) + r"\.\d+")
        others = None
        name = Path(self.template).name
        if "{pid}" in name and "{pid}" not in str(Path(self.template).parent):
            before, _, after = name.partition("{pid}")
            others = re.compile(re.escape(before) + r"(\d+)" + re.escape(after) + r"(?:\.\d+)?")
        try:
            entries = list(directory.iterdir())
        except FileNotFoundError:
            return
        for entry in entries:
            if own.fullmatch(entry.name):
                expired = True
            elif others is not None and (match := others.fullmatch(entry.name)):
                pid = int(match.group(1))
                expired = pid != os.getpid() and not _alive(pid)
            else:
                continue
            try:
                if expired and entry.stat().st_mtime < cutoff:
                    entry.unlink()
            except FileNotFoundError:
                pass  # another process's sweep took it first

    def sync(self) -> None:
        if self._file is not None and self._unsynced:
            os.fsync(self._file.fileno())
            self._unsynced = False
            self._synced_at = time.monotonic()

    def _rotate(self) -> None:
        self.sync()
        self._file.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None


def _first_record_time(path: Path) -> float:
    """When a file's first record was written (every record starts with its
    "time"); 0.0 when it cannot tell, which makes the file due at once."""
    try:
        with open(path, "rb") as file:
            head = file.read(64)
    except OSError:
        return 0.0
    match = _FIRST_TIME.match(head)
    if match is None:
        return 0.0
    return float(calendar.timegm(time.strptime(match.group(1).decode(), "%Y-%m-%dT%H:%M:%S")))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True
