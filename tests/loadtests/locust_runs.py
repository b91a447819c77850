"""Running locust as the suite must: in a subprocess, never imported here (it
monkey-patches the standard library with gevent on import), and reading what
it leaves behind: the exit code, its output and the --csv statistics."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from testkit.gateway_process import ROOT

LOCUSTFILE = ROOT / "loadtests" / "locust" / "locustfile.py"
SHAPES = ROOT / "loadtests" / "locust" / "shapes"
RUN_TIMEOUT_S = 60


def locust_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", *args]


def locust_env() -> dict[str, str]:
    """This environment without locust's own settings (LOCUST_*), which would change a run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class LocustRun:
    code: int
    output: str  # stdout and stderr
    stats: dict[str, dict[str, str]]  # entry name -> its row of <prefix>_stats.csv

    def count(self, entry: str) -> int:
        return int(self.stats[entry]["Request Count"])

    def failures(self, entry: str) -> int:
        return int(self.stats[entry]["Failure Count"])

    def verdict_row(self, entry: str) -> str:
        """The verdict table's line for `entry`."""
        table = self.output[self.output.rindex("SLO verdict, objectives from") :]
        rows = [line for line in table.splitlines() if line.startswith(entry + " ")]
        assert rows, f"no verdict row for {entry!r}:\n{table}"
        return rows[0]

    def describe(self) -> str:
        return f"exit {self.code}\n{self.output[-6000:]}"


def read_stats(prefix: Path) -> dict[str, dict[str, str]]:
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        return {}
    with path.open(newline="") as file:
        return {row["Name"]: row for row in csv.DictReader(file) if row["Name"] != "Aggregated"}


def run_locust(args: list[str], csv_prefix: Path | None = None) -> LocustRun:
    """Run locust with `args` from the project root; with `csv_prefix`, --csv too."""
    argv = locust_argv(*args, *(["--csv", str(csv_prefix)] if csv_prefix else []))
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env=locust_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    stats = read_stats(csv_prefix) if csv_prefix else {}
    return LocustRun(done.returncode, done.stdout.decode(errors="replace"), stats)
