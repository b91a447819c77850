"""The promotion gate's steps on a running gateway, one promotion at a time:
signature check, offline evaluation, canary, then promotion or roll-back;
each decision goes to the audit log and to the model's lineage file.

The canary is applied without entering the roll-back history (it is a
temporary state, not a config); ending it re-applies the config it started
from. A promotion then rewrites the config file (the promoted values only)
and applies it like a reload, with that config in the history:
`POST /admin/rollback` undoes it in the running gateway, and the file is
what a restart serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from gateway.config.loader import ConfigError, LoadedConfig, parse_config
from gateway.core.errors import InvalidInput, NotFound
from gateway.promotion.canary import (
    WatchedBackend,
    canary_backend_name,
    canary_config,
    promoted_text,
    watch_candidate,
    write_atomically,
)
from gateway.promotion.candidate import Plan, check_signature, evaluate, plan_promotion
from gateway.promotion.gate import CanaryPolicy, CanaryWatch, Verdict
from gateway.reload import ConfigManager, ReloadRefused
from gateway.runtime import Runtime

log = logging.getLogger("gateway.promotion")

LINEAGE_FILE = "lineage.jsonl"  # in the model's directory, beside its versions
FINAL_STATES = frozenset({"refused", "rolled_back", "promoted", "aborted", "superseded", "failed"})
# How often a quiet canary looks whether a reload replaced it.
_SUPERSEDED_POLL_S = 1.0


def _now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Run:
    """One promotion attempt and what is known of it so far."""

    plan: Plan
    state: str = "checking"
    reasons: list[str] = field(default_factory=list)
    signature: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    started_at: str = field(default_factory=_now_text)
    finished_at: str | None = None
    canary_backend: str | None = None
    watch: CanaryWatch | None = None
    watched: WatchedBackend | None = None
    base: LoadedConfig | None = None  # the config the canary started from
    runtime: Runtime | None = None  # the canary's
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    concluding: bool = False

    def finish(self, state: str, reasons: list[str] | tuple[str, ...] = ()) -> None:
        self.state = state
        self.reasons = list(reasons)
        self.finished_at = _now_text()
        if self.watched is not None:
            self.watched.closed = True

    def view(self) -> dict[str, Any]:
        return {
            "model": self.plan.model,
            "version": self.plan.version,
            "serving_version": self.plan.serving_version,
            "state": self.state,
            "final": self.state in FINAL_STATES,
            "reasons": self.reasons,
            "signature": self.signature,
            "evaluation": self.evaluation,
            "canary_backend": self.canary_backend,
            "canary": self.watch.numbers() if self.watch is not None else None,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "lineage": str(self.plan.model_dir / LINEAGE_FILE),
        }


class Promotions:
    """The gate behind `POST /admin/models/{model}/promote` and `gateway models promote`."""

    def __init__(self, manager: ConfigManager, clock: Callable[[], float] = time.monotonic) -> None:
        self._manager = manager
        self._clock = clock
        self._runs: dict[str, Run] = {}  # the latest run of each model
        self._active: Run | None = None
        self._lock = asyncio.Lock()

    # -- the admin API -------------------------------------------------------------

    async def promote(self, model: str, version: str) -> dict[str, Any]:
        """Check and evaluate `version` of `model`, and start its canary; the
        answer is the run so far (its `state`: refused, or canary)."""
        settings = self._manager.runtime.loaded.config.promotion
        if settings is None:
            raise NotFound("promotions are off: the config has no `promotion` section")
        async with self._lock:
            active = self._active
            if active is not None and active.state not in FINAL_STATES:
                raise InvalidInput(
                    f"the promotion of {active.plan.model} version {active.plan.version} is "
                    f"{active.state}: abort it first (POST /admin/models/{active.plan.model}"
                    "/promotion/abort)"
                )
            loaded = self._manager.runtime.loaded
            run = Run(plan_promotion(loaded, model, version))
            self._runs[model] = self._active = run
            try:
                await self._gate(run, loaded)
            except BaseException:
                if run.state not in FINAL_STATES:
                    run.finish("failed", ["the gate stopped on an internal error"])
                raise
        return run.view()

    def status(self, model: str) -> dict[str, Any]:
        run = self._runs.get(model)
        if run is None:
            raise NotFound(f"no promotion of model '{model}' since this gateway started")
        return run.view()

    async def abort(self, model: str) -> dict[str, Any]:
        run = self._runs.get(model)
        if run is None or run.state != "canary" or run.concluding:
            raise InvalidInput(f"no canary of model '{model}' is running")
        if run.task is not None:
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.task
        await self._end_canary(run, "promotion aborted")
        self._decide(run, "abort", "aborted", self._canary_numbers(run), ["aborted by an admin"])
        run.finish("aborted", ["aborted by an admin"])
        return run.view()

    async def stop(self) -> None:
        """The gateway is stopping: a running canary ends without a verdict (the
        file is unchanged, so a restart serves the version it started from)."""
        run = self._active
        if run is None or run.state != "canary" or run.task is None:
            return
        run.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run.task
        if run.state == "canary":
            reasons = ["the gateway stopped during the canary"]
            self._decide(run, "abort", "aborted", self._canary_numbers(run), reasons)
            run.finish("aborted", reasons)

    # -- the steps -------------------------------------------------------------------

    async def _gate(self, run: Run, loaded: LoadedConfig) -> None:
        plan = run.plan
        signature, candidate = await check_signature(plan, loaded)
        run.signature = signature
        passed = candidate is not None
        self._decide(
            run, "signature", "pass" if passed else "refused", signature, signature["problems"]
        )
        if candidate is None:
            run.finish("refused", [f"signature: {p}" for p in signature["problems"]])
            return
        try:
            evaluation = await evaluate(plan, loaded, candidate)
        finally:
            await candidate.close()
        run.evaluation = evaluation.numbers()
        reasons = (
            []
            if evaluation.passed
            else [
                f"evaluation: {evaluation.metric} {evaluation.candidate:.4f} is "
                f"{evaluation.drop:.4f} below the serving version's {evaluation.serving:.4f} "
                f"(max_drop {evaluation.max_drop:g})"
            ]
        )
        self._decide(
            run, "evaluation", "pass" if evaluation.passed else "refused", run.evaluation, reasons
        )
        if not evaluation.passed:
            run.finish("refused", reasons)
            return
        await self._start_canary(run, loaded)

    async def _start_canary(self, run: Run, loaded: LoadedConfig) -> None:
        settings = loaded.config.promotion
        assert settings is not None
        plan = run.plan
        name = canary_backend_name(loaded, plan)
        policy = CanaryPolicy.of(settings, loaded.config.models[plan.model].slo)
        watch = CanaryWatch(policy, self._clock)

        def prepare(runtime: Runtime) -> None:
            run.watched = watch_candidate(runtime, plan, name, watch, run.wake.set)
            run.runtime = runtime

        try:
            canary = canary_config(loaded, plan, settings.canary_weight, name)
            await self._manager.apply(
                canary,
                f"canary of {plan.model} version {plan.version}",
                keep_history=False,
                prepare=prepare,
                if_running=self._manager.runtime,
            )
        except (ConfigError, ReloadRefused) as exc:
            problems = list(getattr(exc, "problems", [str(exc)]))
            self._decide(run, "canary_start", "failed", {"backend": name}, problems)
            run.finish("failed", [f"canary: {p}" for p in problems])
            return
        watch.started = self._clock()  # the watch starts once the canary serves
        run.watch, run.base, run.canary_backend = watch, loaded, name
        run.state = "canary"
        self._decide(
            run,
            "canary_start",
            "started",
            {"backend": name, "weight": settings.canary_weight, **watch.numbers()},
        )
        run.task = asyncio.get_running_loop().create_task(self._watch(run))

    async def _watch(self, run: Run) -> None:
        watch = run.watch
        assert watch is not None
        verdict: Verdict | None = None
        while verdict is None:
            run.wake.clear()
            verdict = watch.verdict()
            if verdict is not None:
                break
            if self._manager.runtime is not run.runtime:
                reasons = ["the config was reloaded or rolled back during the canary"]
                self._decide(run, "canary_verdict", "superseded", watch.numbers(), reasons)
                run.finish("superseded", reasons)
                return
            timeout = min(_SUPERSEDED_POLL_S, max(0.01, watch.next_deadline_s()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.wake.wait(), timeout)
        run.concluding = True
        if run.watched is not None:
            run.watched.closed = True
        self._decide(run, "canary_verdict", verdict.outcome, watch.numbers(), verdict.reasons)
        if verdict.outcome == "rollback":
            await self._end_canary(run, "canary rolled back")
            self._decide(run, "rollback", "rolled_back", watch.numbers(), verdict.reasons)
            run.finish("rolled_back", [f"canary: {r}" for r in verdict.reasons])
            return
        await self._promote(run)

    async def _end_canary(self, run: Run, trigger: str) -> bool:
        """Serve the config the canary started from again (unless a reload
        replaced the canary meanwhile); whether it did."""
        assert run.base is not None
        try:
            await self._manager.apply(run.base, trigger, keep_history=False, if_running=run.runtime)
        except ReloadRefused as refused:
            log.warning("%s: %s", trigger, "; ".join(refused.problems))
            return False
        return True

    async def _promote(self, run: Run) -> None:
        base, plan = run.base, run.plan
        assert base is not None and base.source is not None
        source: Path = base.source
        try:
            current = source.read_text(encoding="utf-8")
            if hashlib.sha256(current.encode()).hexdigest() != base.sha256:
                raise ValueError(f"{source} changed since the canary started")
            text = promoted_text(current, plan)
            promoted = parse_config(text, source=source)
        except (OSError, ValueError, yaml.YAMLError, ConfigError) as exc:
            await self._end_canary(run, "promotion failed")
            self._fail(run, list(getattr(exc, "problems", [str(exc)])))
            return
        if not await self._end_canary(run, f"canary of {plan.model} passed"):
            self._fail(run, ["the config was reloaded or rolled back during the canary"])
            return
        running = self._manager.runtime
        write_atomically(source, text)
        self._manager.file_written(
            promoted.sha256
        )  # before any await: the watch must not reload it
        try:
            await self._manager.apply(
                promoted,
                f"promotion of {plan.model} to version {plan.version}",
                keep_history=True,
                if_running=running,
            )
        except ReloadRefused as refused:
            write_atomically(source, current)
            self._manager.file_written(base.sha256)
            self._fail(run, refused.problems)
            return
        numbers = {
            "file": str(source),
            "config_before": base.sha256,
            "config_after": promoted.sha256,
            "changed": {
                **{".".join(str(p) for p in k): v for k, v in plan.rewrites.items()},
                f"models.{plan.model}.version": plan.version,
            },
        }
        self._decide(run, "promotion", "promoted", numbers)
        run.finish("promoted")

    def _fail(self, run: Run, problems: list[str]) -> None:
        self._decide(run, "promotion", "failed", self._canary_numbers(run), problems)
        run.finish("failed", [f"promotion: {p}" for p in problems])

    @staticmethod
    def _canary_numbers(run: Run) -> dict[str, Any]:
        return run.watch.numbers() if run.watch is not None else {}

    # -- the record ------------------------------------------------------------------

    def _decide(
        self,
        run: Run,
        step: str,
        outcome: str,
        numbers: dict[str, Any],
        reasons: list[str] | tuple[str, ...] = (),
    ) -> None:
        """One decision, with its numbers, to the audit log and the lineage file."""
        plan = run.plan
        record = {
            "model": plan.model,
            "version": plan.version,
            "serving_version": plan.serving_version,
            "step": step,
            "outcome": outcome,
            "reasons": list(reasons),
            "numbers": numbers,
            "config_sha256": self._manager.config_sha256,
        }
        log.info(
            "promotion of %s version %s: %s %s%s",
            plan.model,
            plan.version,
            step,
            outcome,
            f" ({'; '.join(reasons)})" if reasons else "",
        )
        audit = self._manager.runtime.audit
        if audit is not None:
            audit.promotion(record)
        line = orjson.dumps({"time": _now_text(), **record}, option=orjson.OPT_APPEND_NEWLINE)
        try:
            with (plan.model_dir / LINEAGE_FILE).open("ab") as lineage:
                lineage.write(line)
        except OSError:  # the audit log has the decision; the gate goes on
            log.exception("promotion: cannot append to %s", plan.model_dir / LINEAGE_FILE)
