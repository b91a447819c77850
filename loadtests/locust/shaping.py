"""A LoadTestShape that follows a plan of loadtests.locust.plans, built from the
command line when the test starts (on the master: shapes run there only)."""

from __future__ import annotations

from typing import Any, ClassVar

from locust import LoadTestShape

from loadtests.locust.plans import Plan, Tick


class PlanShape(LoadTestShape):
    # Locust runs every non-abstract shape class it finds in a locustfile: this
    # base must never be one of them.
    abstract: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self._plan: Plan | None = None

    def make_plan(self, options: Any) -> Plan:
        """The plan from locust's parsed options."""
        raise NotImplementedError

    def tick(self) -> Tick:
        if self._plan is None:
            assert self.runner is not None  # locust sets it before the first tick
            self._plan = self.make_plan(self.runner.environment.parsed_options)
        return self._plan.tick(self.get_run_time())
