"""The locustfile's event listeners: which users run and their inputs (init),
and the SLO verdict (quitting and quit).

The choice of users and the verdict are the master's (or the only process's):
its dispatcher decides how many users of each class the workers run, and its
statistics hold every worker's requests. Inputs are prepared where users run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.request
from typing import Any

from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtests.locust.entries import model_of
from loadtests.locust.options import Settings
from loadtests.locust.selection import select_users
from loadtests.locust.verdict import (
    EntryStats,
    Row,
    breached,
    failures_allowed,
    judge,
    objectives_from_slo,
    render,
    summary,
)

log = logging.getLogger("loadtests.locust")

BREACH_EXIT_CODE = 3  # locust itself exits 1 when requests failed, 2 on an unhandled error
_SLO_TIMEOUT_S = 10.0
# The gateway under test is reached directly, as the users reach it: no proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _on_worker(environment: Environment) -> bool:
    return isinstance(environment.runner, WorkerRunner)


def _settings(environment: Environment) -> Settings:
    return Settings.of(environment.parsed_options, environment.host)


def choose_users(environment: Environment, **_: Any) -> None:
    """events.init: keep the user classes that --weight-* and --tags select."""
    if _on_worker(environment) or environment.parsed_options is None:
        return
    options = environment.parsed_options
    classes = {cls.__name__: cls for cls in environment.user_classes}
    tags_of = {
        name: frozenset().union(*(getattr(t, "locust_tag_set", ()) for t in cls.tasks))
        for name, cls in classes.items()
    }
    chosen = select_users(
        tags_of, _settings(environment).weights, options.tags, options.exclude_tags
    )
    if not chosen:
        log.error(
            "no user class left to run: check --tags, --exclude-tags and the --weight-* options"
        )
        sys.exit(1)
    for name, weight in chosen.items():
        classes[name].weight = weight
    environment.user_classes[:] = [classes[name] for name in classes if name in chosen]
    log.info("users: %s", ", ".join(f"{name} (weight {w})" for name, w in chosen.items()))


def prepare_users(environment: Environment, **_: Any) -> None:
    """events.init: load and encode every running class's inputs now. Done by a
    user's first request instead, it would hold up the process (loading the
    digits takes scikit-learn about a second) after the run's clock started."""
    if isinstance(environment.runner, MasterRunner) or environment.parsed_options is None:
        return
    settings = _settings(environment)
    for cls in environment.user_classes:
        prepare = getattr(cls, "prepare", None)
        if prepare is not None:
            prepare(settings)
    # Locust has patched time.sleep into gevent's: sleep(0) is one turn of the event
    # loop, which brings the loop's clock up to date after the load held it up. Left
    # stale, the --run-time timer started next would fire early by that much.
    time.sleep(0)


def fetch_slo(host: str) -> dict[str, Any]:
    """The gateway's GET /slo."""
    with _OPENER.open(host.rstrip("/") + "/slo", timeout=_SLO_TIMEOUT_S) as answer:
        snapshot: dict[str, Any] = json.loads(answer.read())
        return snapshot


class Verdict:
    """Judged at quitting, when the exit code can still be set; printed at quit,
    after locust's own summary, so that it is the last thing a run shows."""

    def __init__(self) -> None:
        self.text: str | None = None

    def judge(self, environment: Environment, **_: Any) -> None:
        if _on_worker(environment) or environment.runner is None:
            return
        settings = _settings(environment)
        entries = [
            EntryStats(
                name=entry.name,
                model=model_of(entry.name),
                requests=entry.num_requests,
                failures=entry.num_failures,
                response_times=dict(entry.response_times),
            )
            for entry in environment.runner.stats.entries.values()
        ]
        gateway = None
        problem = ""
        if settings.slo_source == "gateway":
            try:
                gateway = objectives_from_slo(fetch_slo(settings.host))
            except (OSError, ValueError) as error:
                problem = (
                    f"could not read the gateway's SLOs from {settings.host}/slo ({error}); "
                    "--slo-source none judges by the command line's objectives only"
                )
        rows = judge(entries, settings.thresholds, gateway)
        self.text = _report(rows, settings.slo_source, gateway, problem)
        if problem or not rows or breached(rows):
            environment.process_exit_code = BREACH_EXIT_CODE
        elif failures_allowed(rows) and any(row.failures for row in rows):
            # Every failure was within an agreed failure ratio: the run passes,
            # where locust alone would exit 1 for any failed request.
            environment.process_exit_code = 0

    def show(self, **_: Any) -> None:
        if self.text is not None:
            print(self.text, flush=True)


def _report(rows: list[Row], source: str, gateway: dict[str, Any] | None, problem: str) -> str:
    if gateway is not None:
        declared = ", ".join(sorted(gateway)) or "none"
        where = f"the command line and the gateway's /slo (models with an SLO: {declared})"
    else:
        where = "the command line" + (" (--slo-source none)" if source == "none" else "")
    lines = ["", f"SLO verdict, objectives from {where}:"]
    if rows:
        lines.append(render(rows))
    lines.append(f"SLO verdict: BREACH: {problem}" if problem else f"SLO verdict: {summary(rows)}")
    return "\n".join(lines)
