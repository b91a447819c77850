"""How SLO events are counted (observe/slo.py reports them): per model, four
columns (availability good and bad, latency good and bad) in a ring of 1-minute
buckets covering the longest burn window, plus a ring of 1-hour buckets when
the SLO window is longer; in process memory, or, with several workers, in a
memory-mapped file per worker that every worker sums when it reads. The layout
and its costs are in observe/slo.py's docstring.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gateway.observe.slo import SloObjectives

MINUTE_S = 60
HOUR_S = 3600

# Burn-rate windows (label value, seconds), shortest first.
BURN_WINDOWS: tuple[tuple[str, int], ...] = (
    ("5m", 5 * 60),
    ("30m", 30 * 60),
    ("1h", HOUR_S),
    ("2h", 2 * HOUR_S),
    ("6h", 6 * HOUR_S),
    ("1d", 24 * HOUR_S),
    ("3d", 72 * HOUR_S),
)

# Minute buckets cover the longest burn window; 1-hour buckets cover longer SLO windows.
_FINE_BUCKETS = BURN_WINDOWS[-1][1] // MINUTE_S
# Longer than anyone's SLO window; a typo like "3000d" must not allocate a ring for it.
MAX_WINDOW_S = 366 * 24 * HOUR_S

# Burn windows are nested: the ring is summed in segments 0-5m, 5m-30m, ... then added up.
_SEGMENT_STARTS = [0] + [seconds // MINUTE_S for _, seconds in BURN_WINDOWS[:-1]]

# Ring columns: good and bad events of each objective.
AV_GOOD, AV_BAD, LAT_GOOD, LAT_BAD = range(4)

# Several workers: the directory their rings are shared through (metrics.py's too),
# and the names of the ring files in it (gateway/server.py clears them at start).
SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
SLO_FILE_PREFIX = "slo-"
# A ring file: a header of int64 cells, then the minute ring, then the hourly one.
_MAGIC = 0x534C4F52494E4731  # "SLORING1"
_HEADER_CELLS = 8
_MAGIC_CELL, _FINE_CELL, _COARSE_CELL, _MINUTE_CELL = range(4)


class Series:
    """One model's counts: pending counts of the current minute as plain ints (cheap
    to bump), flushed into numpy rings when the minute changes or on a read."""

    __slots__ = (
        "av_bad",
        "av_good",
        "coarse",
        "fine",
        "lat_bad",
        "lat_good",
        "minute",
        "objectives",
    )

    def __init__(self, objectives: SloObjectives, minute: int) -> None:
        self.objectives = objectives
        self.minute = minute
        self.av_good = self.av_bad = self.lat_good = self.lat_bad = 0
        self.fine = np.zeros((_FINE_BUCKETS, 4), dtype=np.int64)
        hours = -(-objectives.window_s // HOUR_S)
        # Only windows longer than the minute ring need the hourly one.
        self.coarse = (
            np.zeros((hours, 4), dtype=np.int64)
            if objectives.window_s > _FINE_BUCKETS * MINUTE_S
            else None
        )

    def count(self, column: int) -> None:
        """One event in ring column `column` (SloTracker.record bumps the ints inline)."""
        if column == AV_GOOD:
            self.av_good += 1
        elif column == AV_BAD:
            self.av_bad += 1
        elif column == LAT_GOOD:
            self.lat_good += 1
        else:
            self.lat_bad += 1

    def advance(self, minute: int) -> None:
        """Flush the pending counts and move the rings on to `minute`."""
        current = self.minute
        pending = (self.av_good, self.av_bad, self.lat_good, self.lat_bad)
        if any(pending):
            self.fine[current % _FINE_BUCKETS] += pending
            if self.coarse is not None:
                self.coarse[(current // 60) % len(self.coarse)] += pending
            self.av_good = self.av_bad = self.lat_good = self.lat_bad = 0
        if minute <= current:  # same minute, or a clock that stepped back: stay put
            return
        _clear(self.fine, current + 1, minute)
        if self.coarse is not None:
            _clear(self.coarse, current // 60 + 1, minute // 60)
        self.minute = minute

    def sums(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Counts over the SLO window and over each burn window, as of `self.minute`."""
        return window_sums(self.fine, self.coarse, self.minute, self.objectives.window_s)


def window_sums(
    fine: np.ndarray, coarse: np.ndarray | None, minute: int, window_s: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Counts over the SLO window and over each burn window of rings as of `minute`."""
    # Newest minute first, then one running sum: each window is one row of it.
    end = minute % _FINE_BUCKETS + 1
    newest_first = np.concatenate((fine[:end][::-1], fine[end:][::-1]))
    running = np.cumsum(np.add.reduceat(newest_first, _SEGMENT_STARTS, axis=0), axis=0)
    burns = {label: running[i] for i, (label, _) in enumerate(BURN_WINDOWS)}
    if coarse is None:
        window = newest_first[: window_s // MINUTE_S].sum(axis=0)
    else:
        window = coarse.sum(axis=0)  # the ring spans the window exactly
    return window, burns


class SharedSeries(Series):
    """One model's counts in one worker, in a ring file other workers read.

    Events go straight into the file's current slots (there are no pending
    counts: a reader in another process must see them); moving on to a new
    minute clears the slots passed over, then stores the minute in the header.
    """

    __slots__ = ("_cells", "_coarse_at", "_map", "directory", "pattern")

    def __init__(
        self, objectives: SloObjectives, minute: int, directory: str, model: str, process: int
    ) -> None:
        super().__init__(objectives, minute)
        # Workers count a model together only under the same objectives.
        key = hashlib.sha256(f"{model}\0{objectives!r}".encode()).hexdigest()[:16]
        self.directory = directory
        self.pattern = f"{SLO_FILE_PREFIX}{key}-*.ring"
        coarse_rows = 0 if self.coarse is None else len(self.coarse)
        cells = _HEADER_CELLS + (_FINE_BUCKETS + coarse_rows) * 4
        path = os.path.join(directory, f"{SLO_FILE_PREFIX}{key}-{process}.ring")
        with open(path, "w+b") as file:  # a process that reloads back to these starts afresh
            file.truncate(cells * 8)
            self._map = mmap.mmap(file.fileno(), cells * 8)
        array = np.frombuffer(self._map, dtype=np.int64)
        array[_MAGIC_CELL], array[_FINE_CELL], array[_COARSE_CELL] = (
            _MAGIC,
            _FINE_BUCKETS,
            coarse_rows,
        )
        array[_MINUTE_CELL] = minute
        body = array[_HEADER_CELLS:]
        self.fine = body[: _FINE_BUCKETS * 4].reshape(_FINE_BUCKETS, 4)
        self.coarse = body[_FINE_BUCKETS * 4 :].reshape(coarse_rows, 4) if coarse_rows else None
        self._coarse_at = _HEADER_CELLS + _FINE_BUCKETS * 4
        self._cells = memoryview(self._map).cast("q")  # one cell: ~2x cheaper than numpy's

    def count(self, column: int) -> None:
        minute = self.minute
        cells = self._cells
        cells[_HEADER_CELLS + (minute % _FINE_BUCKETS) * 4 + column] += 1
        if self.coarse is not None:
            cells[self._coarse_at + ((minute // 60) % len(self.coarse)) * 4 + column] += 1

    def advance(self, minute: int) -> None:
        super().advance(minute)  # clears the slots first: a reader seeing the minute sees them
        self._cells[_MINUTE_CELL] = self.minute

    def combined(self, minute: int) -> tuple[int, np.ndarray, np.ndarray | None]:
        """Every worker's rings for this model and objectives, summed as of `minute`
        (or a later minute a worker has already moved on to)."""
        rings = [r for r in map(_read_ring, self._paths()) if r is not None]
        rows = (len(self.fine), 0 if self.coarse is None else len(self.coarse))
        rings = [r for r in rings if (len(r[1]), 0 if r[2] is None else len(r[2])) == rows]
        now = max([minute, *(written for written, _, _ in rings)])
        fine = np.zeros_like(self.fine)
        coarse = None if self.coarse is None else np.zeros_like(self.coarse)
        for written, ring_fine, ring_coarse in rings:
            # Slots a worker has not moved on to yet hold counts of an earlier lap.
            _clear(ring_fine, written + 1, now)
            fine += ring_fine
            if coarse is not None and ring_coarse is not None:
                _clear(ring_coarse, written // 60 + 1, now // 60)
                coarse += ring_coarse
        return now, fine, coarse

    def _paths(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        prefix, suffix = self.pattern.split("*")
        return [
            os.path.join(self.directory, n)
            for n in names
            if n.startswith(prefix) and n.endswith(suffix)
        ]


def _read_ring(path: str) -> tuple[int, np.ndarray, np.ndarray | None] | None:
    """A ring file's minute and copies of its rings; None if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        for _ in range(5):
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0)
            # Its worker moved on to a new minute meanwhile: read it again.
            if os.pread(fd, 8, _MINUTE_CELL * 8) == data[_MINUTE_CELL * 8 : _MINUTE_CELL * 8 + 8]:
                break
        array = np.frombuffer(data, dtype=np.int64).copy()
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(array) < _HEADER_CELLS or array[_MAGIC_CELL] != _MAGIC:
        return None
    fine_rows, coarse_rows = int(array[_FINE_CELL]), int(array[_COARSE_CELL])
    if len(array) != _HEADER_CELLS + (fine_rows + coarse_rows) * 4:
        return None
    body = array[_HEADER_CELLS:]
    fine = body[: fine_rows * 4].reshape(fine_rows, 4)
    coarse = body[fine_rows * 4 :].reshape(coarse_rows, 4) if coarse_rows else None
    return int(array[_MINUTE_CELL]), fine, coarse


def _clear(ring: np.ndarray, first: int, last: int) -> None:
    """Zero the slots of indices first..last (inclusive) of a ring."""
    size = len(ring)
    if last < first:
        return
    if last - first + 1 >= size:
        ring[:] = 0
        return
    start, end = first % size, last % size
    if start <= end:
        ring[start : end + 1] = 0
    else:
        ring[start:] = 0
        ring[: end + 1] = 0


def columns(kind: str) -> tuple[int, int]:
    return (AV_GOOD, AV_BAD) if kind == "availability" else (LAT_GOOD, LAT_BAD)
