"""What each load shape asks for at each moment: (users, spawn rate) or None to stop.

Pure functions of the elapsed time, so that they can be tested without locust;
shapes/*.py wrap them in locust's LoadTestShape. Durations on the command line
read like locust's --run-time: "90", "90s", "5m", "1h30m".
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import Protocol

Tick = tuple[int, float] | None


class Plan(Protocol):
    def tick(self, elapsed_s: float) -> Tick:
        """(users, spawn rate) `elapsed_s` seconds into the run, or None: stop."""
        ...


_UNITS = {"h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[hms]?)+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "5m", "1h30m" (a bare number is seconds)."""
    value = text.strip().lower()
    if not value or not _DURATION.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"expected a duration like 90, 90s, 5m or 1h30m, got {text!r}"
        )
    parts = _PART.findall(value)
    if len(parts) > 1 and not all(unit for _, unit in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give every part of the duration a unit")
    return sum(float(number) * _UNITS[unit or "s"] for number, unit in parts)


@dataclass(frozen=True)
class StepPlan:
    """`users` more every `step_s` seconds, `steps` times, then stop: where the
    latency knee is, and at what load the first objective breaks."""

    users: int = 10
    step_s: float = 30.0
    steps: int = 5
    spawn_rate: float = 10.0

    def tick(self, elapsed_s: float) -> Tick:
        if elapsed_s >= self.steps * self.step_s:
            return None
        step = math.floor(elapsed_s / self.step_s) + 1
        return self.users * step, self.spawn_rate


@dataclass(frozen=True)
class SpikePlan:
    """`base_users` for `before_s`, `peak_users` for `spike_s`, `base_users` again
    for `after_s`, then stop: how the gateway sheds a burst and how it recovers."""

    base_users: int = 5
    peak_users: int = 50
    before_s: float = 30.0
    spike_s: float = 15.0
    after_s: float = 30.0
    spawn_rate: float = 50.0

    def tick(self, elapsed_s: float) -> Tick:
        if elapsed_s < self.before_s:
            return self.base_users, self.spawn_rate
        if elapsed_s < self.before_s + self.spike_s:
            return self.peak_users, self.spawn_rate
        if elapsed_s < self.before_s + self.spike_s + self.after_s:
            return self.base_users, self.spawn_rate
        return None


@dataclass(frozen=True)
class SoakPlan:
    """Ramp to `users` over `ramp_s`, hold them for `hold_s`, then stop: leaks,
    drifting latency and anything else that only shows after hours."""

    users: int = 20
    ramp_s: float = 60.0
    hold_s: float = 3600.0

    @property
    def spawn_rate(self) -> float:
        # A ramp of 0 s spawns everyone at once (locust wants a positive rate).
        return self.users / self.ramp_s if self.ramp_s > 0 else float(max(self.users, 1))

    def tick(self, elapsed_s: float) -> Tick:
        if elapsed_s >= self.ramp_s + self.hold_s:
            return None
        return self.users, self.spawn_rate
