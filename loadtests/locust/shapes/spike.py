"""Spike: --spike-base-users for --spike-before, --spike-peak-users for
--spike-time, the base again for --spike-after, then stop.

    locust -f loadtests/locust/locustfile.py,loadtests/locust/shapes/spike.py --headless \
        --spike-base-users 5 --spike-peak-users 50 --spike-time 15s
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:  # locust imports this file by its path
    sys.path.insert(0, _ROOT)

from locust import events  # noqa: E402

from loadtests.locust.plans import SpikePlan, parse_duration  # noqa: E402
from loadtests.locust.shaping import PlanShape  # noqa: E402


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    defaults = SpikePlan()
    add = parser.add_argument
    add("--spike-base-users", type=int, default=defaults.base_users, help="users before and after")
    add("--spike-peak-users", type=int, default=defaults.peak_users, help="users during the spike")
    add("--spike-before", type=parse_duration, default=defaults.before_s, help="time at the base")
    add("--spike-time", type=parse_duration, default=defaults.spike_s, help="time at the peak")
    add("--spike-after", type=parse_duration, default=defaults.after_s, help="recovery time")
    add(
        "--spike-spawn-rate",
        type=float,
        default=defaults.spawn_rate,
        help="users started or stopped per second",
    )


class SpikeShape(PlanShape):
    def make_plan(self, options: Any) -> SpikePlan:
        return SpikePlan(
            base_users=options.spike_base_users,
            peak_users=options.spike_peak_users,
            before_s=options.spike_before,
            spike_s=options.spike_time,
            after_s=options.spike_after,
            spawn_rate=options.spike_spawn_rate,
        )
