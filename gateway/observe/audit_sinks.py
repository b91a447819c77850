"""Where audit records go (observe/audit.py writes whole lines to one of
these from its writer thread): standard output, or a file rotated by size
and synced to disk on an interval."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol


class AuditSink(Protocol):
    def write(self, lines: bytes | bytearray) -> None: ...  # whole lines

    def sync(self) -> None: ...  # what was written survives a machine crash

    def close(self) -> None: ...


class StdoutSink:
    """Lines to the process's standard output (for a log collector to pick up)."""

    def write(self, lines: bytes | bytearray) -> None:
        out = sys.stdout.buffer
        out.write(lines)
        out.flush()

    def sync(self) -> None:
        pass  # whoever reads the stream keeps it

    def close(self) -> None:
        pass


class RotatingFileSink:
    """Lines appended to `path`; past `max_bytes` (0: never) the file becomes
    `path.1` (`path.1` becomes `path.2`... up to `backups`) and a new one starts."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int,
        backups: int,
        fsync_interval_s: float = 1.0,
    ) -> None:
        self.path = Path(str(path).replace("{pid}", str(os.getpid())))
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync_interval_s = fsync_interval_s
        self._file: Any = None
        self._size = 0
        self._unsynced = False
        self._synced_at = time.monotonic()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Opened on first write (`gateway check` makes no file), closed by close().
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = self._file.tell()

    def write(self, lines: bytes | bytearray) -> None:
        """Append whole lines (one write while no rotation falls among them)."""
        if self._file is None:
            self._open()
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
        if time.monotonic() - self._synced_at >= self.fsync_interval_s:
            self.sync()

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
