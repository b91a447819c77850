"""Step load: --step-users more users every --step-time, --step-count times, then stop.

    locust -f loadtests/locust/locustfile.py,loadtests/locust/shapes/step.py --headless \
        --step-users 10 --step-time 30s --step-count 5
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:  # locust imports this file by its path
    sys.path.insert(0, _ROOT)

from locust import events  # noqa: E402

from loadtests.locust.plans import StepPlan, parse_duration  # noqa: E402
from loadtests.locust.shaping import PlanShape  # noqa: E402


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    defaults = StepPlan()
    parser.add_argument("--step-users", type=int, default=defaults.users, help="users per step")
    parser.add_argument(
        "--step-time", type=parse_duration, default=defaults.step_s, help="how long each step lasts"
    )
    parser.add_argument("--step-count", type=int, default=defaults.steps, help="number of steps")
    parser.add_argument(
        "--step-spawn-rate",
        type=float,
        default=defaults.spawn_rate,
        help="users started per second",
    )


class StepShape(PlanShape):
    def make_plan(self, options: Any) -> StepPlan:
        return StepPlan(
            users=options.step_users,
            step_s=options.step_time,
            steps=options.step_count,
            spawn_rate=options.step_spawn_rate,
        )
