"""Soak: ramp to --soak-users over --soak-ramp, hold them for --soak-time, then stop.

    locust -f loadtests/locust/locustfile.py,loadtests/locust/shapes/soak.py --headless \
        --soak-users 20 --soak-time 4h
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:  # locust imports this file by its path
    sys.path.insert(0, _ROOT)

from locust import events  # noqa: E402

from loadtests.locust.plans import SoakPlan, parse_duration  # noqa: E402
from loadtests.locust.shaping import PlanShape  # noqa: E402


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    defaults = SoakPlan()
    add = parser.add_argument
    add("--soak-users", type=int, default=defaults.users, help="users to hold")
    add("--soak-ramp", type=parse_duration, default=defaults.ramp_s, help="time to start them")
    add("--soak-time", type=parse_duration, default=defaults.hold_s, help="time to hold them")


class SoakShape(PlanShape):
    def make_plan(self, options: Any) -> SoakPlan:
        return SoakPlan(
            users=options.soak_users, ramp_s=options.soak_ramp, hold_s=options.soak_time
        )
