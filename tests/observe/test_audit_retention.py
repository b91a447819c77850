"""Audit payload retention (`audit.payload_retention_days`): whole files expire.
The file sink rotates by age as well as size, and deletes rotated files whose
newest record (their mtime) is older than the retention, its own and those of
processes that are gone; `maintain()` does both without a write, so retention
holds at no traffic. Time is an injected clock and file mtimes: nothing waits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from gateway.app import build_runtime
from gateway.config.loader import parse_config
from gateway.observe.audit import audit_log
from gateway.observe.audit_sinks import DAY_S, RotatingFileSink
from tests.observe.inprocess import digits_backend, digits_model

HOUR_S = 3600.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(at: float, text: str) -> bytes:
    """A line as the audit log writes it (its time first)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    return f'{{"time":"{stamp}.000Z","request_id":"{text}"}}\n'.encode()


def written_at(path: Path, at: float) -> None:
    """Give `path` the mtime of a write at `at` (the clock is not the filesystem's)."""
    os.utime(path, (at, at))


def test_a_record_lives_from_retention_to_retention_plus_a_day(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    t0 = time.time() - 10 * DAY_S
    clock = Clock(t0)
    sink = RotatingFileSink(path, 0, 10, retention_s=2 * DAY_S, clock=clock)
    assert sink.rotate_after_s == DAY_S

    sink.write(record(clock.now, "a"))
    written_at(path, clock.now)
    clock.now = t0 + DAY_S - 1
    sink.write(record(clock.now, "b"))
    written_at(path, clock.now)
    assert not path.with_name("audit.jsonl.1").exists()  # under a day old: not rotated

    clock.now = t0 + DAY_S  # the file's first record is a day old: a new file starts
    sink.write(record(clock.now, "c"))
    written_at(path, clock.now)
    rotated = path.with_name("audit.jsonl.1")
    assert rotated.read_bytes().count(b"\n") == 2 and b'"c"' in path.read_bytes()

    # Its newest record ("b", t0 + 1d - 1 s) is two days old one second before
    # t0 + 3d: kept until then, gone after, without a write (maintain()).
    clock.now = t0 + 3 * DAY_S - 2
    sink.maintain()
    # The live file ("c", a day old since t0 + 2d) was rotated meanwhile.
    assert b'"a"' in path.with_name("audit.jsonl.2").read_bytes()
    assert b'"c"' in path.with_name("audit.jsonl.1").read_bytes()
    assert path.read_bytes() == b""
    clock.now = t0 + 3 * DAY_S
    sink.maintain()
    assert not path.with_name("audit.jsonl.2").exists()  # "a" and "b": gone
    assert b'"c"' in path.with_name("audit.jsonl.1").read_bytes()
    clock.now = t0 + 3 * DAY_S + 1
    sink.maintain()
    assert not path.with_name("audit.jsonl.1").exists()  # "c": two days after it was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl"]
    sink.close()


def test_no_retention_rotates_by_size_only_and_keeps_old_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    clock = Clock(time.time())
    sink = RotatingFileSink(path, 0, 3, clock=clock)
    assert sink.rotate_after_s is None and sink.maintain_interval_s is None
    sink.write(record(clock.now, "a"))
    clock.now += 30 * DAY_S
    sink.write(record(clock.now, "b"))
    sink.maintain()
    assert path.read_bytes().count(b"\n") == 2
    sink.close()


def test_a_file_a_previous_run_left_is_as_old_as_its_first_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    now = time.time()
    path.write_bytes(record(now - 1.5 * DAY_S, "old"))
    written_at(path, now - 1.5 * DAY_S)
    sink = RotatingFileSink(path, 0, 5, retention_s=7 * DAY_S)
    sink.write(record(now, "new"))
    assert path.read_bytes() == record(now, "new")
    assert path.with_name("audit.jsonl.1").read_bytes() == record(now - 1.5 * DAY_S, "old")
    sink.close()

    # A file whose first line is not a record cannot say its age: due at once.
    path.write_bytes(b"not json\n")
    sink = RotatingFileSink(path, 0, 5, retention_s=7 * DAY_S)
    sink.maintain()
    assert (
        path.read_bytes() == b"" and path.with_name("audit.jsonl.1").read_bytes() == b"not json\n"
    )
    sink.close()


def test_expired_files_of_processes_that_are_gone_are_swept(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = os.getppid()
    now = time.time()
    old, recent = now - 8 * DAY_S, now - HOUR_S
    files = {
        f"audit-{gone.pid}.jsonl": old,
        f"audit-{gone.pid}.jsonl.1": old,
        f"audit-{gone.pid}.jsonl.2": old - DAY_S,
        f"audit-{alive}.jsonl.1": old,  # its process may still write: not ours to judge
        "other.jsonl.1": old,  # not an audit file of this path
    }
    for name, mtime in files.items():
        (tmp_path / name).write_bytes(record(mtime, name))
        written_at(tmp_path / name, mtime)
    sink = RotatingFileSink(str(tmp_path / "audit-{pid}.jsonl"), 0, 5, retention_s=7 * DAY_S)
    own_rotated = sink.path.with_name(sink.path.name + ".1")
    own_rotated.write_bytes(record(old, "own"))
    written_at(own_rotated, old)
    fresh = tmp_path / f"audit-{gone.pid}.jsonl.3"
    fresh.write_bytes(record(recent, "fresh"))  # gone, but within the retention
    written_at(fresh, recent)

    sink.maintain()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"audit-{alive}.jsonl.1", "other.jsonl.1", fresh.name]
    )
    sink.close()


def test_the_audit_log_maintains_its_file_from_a_thread_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    expired = path.with_name("audit.jsonl.4")  # a previous run's, past the retention
    expired.write_bytes(record(time.time() - 3 * DAY_S, "x"))
    written_at(expired, time.time() - 3 * DAY_S)
    before = set(threading.enumerate())
    log = audit_log("file", str(path), 0, 5, payload_retention_s=2 * DAY_S)
    assert log is not None
    assert log.sink.maintain_interval_s == HOUR_S  # type: ignore[attr-defined]
    housekeeping = [t for t in set(threading.enumerate()) - before if t.name == "audit-retention"]
    assert housekeeping, "no thread keeps the retention at zero traffic"
    log.maintain()  # what that thread queues to the writer every hour
    assert not expired.exists()
    assert not path.exists()  # maintaining makes no file of its own
    asyncio.run(log.aclose())
    for thread in housekeeping:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in housekeeping)


def test_payload_retention_days_reaches_the_sink(tmp_path: Path) -> None:
    text = yaml.safe_dump(
        {
            "audit": {
                "sink": "file",
                "path": str(tmp_path / "a.jsonl"),
                "payload_retention_days": 30,
            },
            "backends": {"digits-cpu": digits_backend()},
            "models": {"digits": digits_model(audit_payload=True)},
        }
    )

    async def run() -> None:
        runtime = build_runtime(parse_config(text))
        assert runtime.audit is not None
        sink = runtime.audit.sink
        assert isinstance(sink, RotatingFileSink)
        assert (sink.retention_s, sink.rotate_after_s) == (30 * DAY_S, DAY_S)
        await runtime.close()

    asyncio.run(run())
