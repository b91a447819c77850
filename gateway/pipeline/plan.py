"""Running a route's plan for one request: which backends are tried, in which
order, and what happens when one fails.

Disabled backends and open circuits are skipped at no cost; a failure moves
on to the next backend when the route falls back on its class (invalid
input never does, nor does a spent deadline); hedging asks the next backend
after a delay; shadow traffic is mirrored in the background. Every transport
reaches this through `InferenceService`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np

from gateway.core.errors import BackendFailed, DeadlineExceeded, GatewayError, Overloaded
from gateway.core.types import RequestContext
from gateway.observe import tracing
from gateway.observe.metrics import (
    BACKEND_DURATION,
    FALLBACKS,
    HEDGES,
    SHADOW,
    FastChildren,
    fast_observe,
)
from gateway.pipeline.entry import ModelEntry
from gateway.routing.router import Attempt, Shadow, fallback_class, sticky_key

log = logging.getLogger("gateway.service")

T = TypeVar("T")

# The failures a route may fall back on; anything else (invalid input, auth,
# unknown model) would be the same on every backend.
_BACKEND_ERRORS = (BackendFailed, Overloaded, DeadlineExceeded)
_backend_duration = FastChildren(BACKEND_DURATION, fast_observe)


async def run_plan(
    entry: ModelEntry,
    ctx: RequestContext,
    call: Callable[[Any, float], Awaitable[T]],
    may_hedge: bool = True,
) -> T:
    """Try the plan's backends in order until one answers.

    A backend that is disabled or whose circuit is open is skipped at no
    cost. A failure moves on to the next backend when the route falls back
    on its class; invalid input never does (every backend would refuse it
    alike), nor does a spent deadline. With hedging, the next backend is
    also asked once `hedge_delay_s` passes without an answer.
    """
    route = entry.route
    plan = route.plan(sticky_key(route, ctx))
    errors: list[tuple[str, GatewayError]] = []
    ctx.failures = errors  # for the audit record: the fallbacks this request took
    hop_from: tuple[str, str] | None = None  # (backend, reason) we are falling back from
    index = 0
    while index < len(plan):
        attempt = plan[index]
        index += 1
        name = attempt.backend.name
        health = attempt.health
        if not _time_left(ctx):
            # Checked before allow(): a half-open breaker's one probe must not be
            # handed to a request that cannot use it.
            raise (
                errors[-1][1]
                if errors and isinstance(errors[-1][1], DeadlineExceeded)
                else DeadlineExceeded(
                    f"deadline exceeded before model '{entry.name}' could be served"
                )
            )
        if health.disabled or not health.allow():
            reason = "disabled" if health.disabled else "circuit_open"
            error: GatewayError = Overloaded(
                f"backend '{name}' is {'disabled' if health.disabled else 'failing (circuit open)'}",
                reason=reason,
            )
            errors.append((name, error))
            if not route.falls_back_on(error):
                break
            hop_from = (name, reason)
            continue
        if hop_from is not None:
            FALLBACKS.labels(entry.name, hop_from[0], name, hop_from[1]).inc()
            hop_from = None
        hedge = (
            may_hedge
            and route.hedge_delay_s is not None
            and index < len(plan)
            and not plan[index].health.disabled
        )
        try:
            if hedge:
                result, index = await _hedged(entry, ctx, call, attempt, plan[index], index)
            else:
                result = await _one_attempt(entry, ctx, call, attempt)
        except GatewayError as exc:
            if hedge:
                # Both hedged calls failed: the plan goes on after the second one.
                index = getattr(exc, "plan_next", index)
                name = getattr(exc, "plan_backend", name)
            if isinstance(exc, DeadlineExceeded) and not _time_left(ctx):
                raise
            if not isinstance(exc, _BACKEND_ERRORS) or not route.falls_back_on(exc):
                if errors:
                    log.warning("model %s: backend %s: %s", entry.name, name, exc.message)
                raise
            errors.append((name, exc))
            hop_from = (name, fallback_class(exc))
            log.warning("model %s: backend %s: %s", entry.name, name, exc.message)
            continue
        return result
    raise _plan_failed(entry, errors)


async def _one_attempt(
    entry: ModelEntry,
    ctx: RequestContext,
    call: Callable[[Any, float], Awaitable[T]],
    attempt: Attempt,
) -> T:
    try:
        deadline, callers = _attempt_deadline(entry, attempt, ctx)
    except DeadlineExceeded:
        attempt.health.cancelled()  # give a half-open probe back
        raise
    ctx.backend = attempt.backend.name
    ctx.attempts += 1
    traced = tracing.Attempt(ctx, attempt.backend.name) if tracing.ENABLED else None
    failure: GatewayError | None = None
    started = time.perf_counter()
    outcome = "cancelled"
    try:
        result = await call(attempt.backend, deadline)
        outcome = "ok"
    except GatewayError as exc:
        outcome = exc.reason
        failure = exc
        ctx.attempts += exc.tries - 1
        if isinstance(exc, DeadlineExceeded) and callers:
            # The caller's deadline was the tighter one: no verdict on the backend.
            attempt.health.cancelled()
        else:
            attempt.health.record(exc)
        raise
    except asyncio.CancelledError:
        attempt.health.cancelled()
        raise
    finally:
        took = time.perf_counter() - started
        ctx.backend_wait_s += took
        _backend_duration(entry.name, attempt.backend.name, outcome)(took)
        if traced is not None:
            traced.end(outcome, failure)
    attempt.health.record(None)
    ctx.attempts += getattr(result, "tries", 1) - 1  # a vendor's retries count too
    return result


async def _hedged(
    entry: ModelEntry,
    ctx: RequestContext,
    call: Callable[[Any, float], Awaitable[T]],
    first: Attempt,
    second: Attempt,
    index: int,
) -> tuple[T, int]:
    """`first`, and `second` too if `first` has not answered after the hedge
    delay; the first good answer wins and the other call is cancelled.
    Returns the answer and where the plan continues."""
    primary = asyncio.ensure_future(_one_attempt(entry, ctx, call, first))
    done, _ = await asyncio.wait({primary}, timeout=entry.route.hedge_delay_s)
    if done or not second.health.allow():
        return await primary, index
    HEDGES.labels(entry.name, first.backend.name, second.backend.name).inc()
    backup = asyncio.ensure_future(_one_attempt(entry, ctx, call, second))
    pending = {primary, backup}
    failure: GatewayError | None = None
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is None:
                    ctx.backend = (first if task is primary else second).backend.name
                    return task.result(), index + 1
                if not isinstance(error, GatewayError):
                    raise error
                failure = error
        assert failure is not None
        failure.plan_next = index + 1
        failure.plan_backend = second.backend.name
        raise failure
    finally:
        for task in pending:
            task.cancel()


def _time_left(ctx: RequestContext) -> bool:
    remaining = ctx.remaining_s()
    return remaining is None or remaining > 0.001


def _plan_failed(entry: ModelEntry, errors: list[tuple[str, GatewayError]]) -> GatewayError:
    if len(errors) == 1:
        return errors[0][1]
    detail = "; ".join(f"{name}: {error.message}" for name, error in errors)
    if all(isinstance(e, Overloaded) for _, e in errors):
        retry = min((e.retry_after_s for _, e in errors if e.retry_after_s), default=1.0)
        return Overloaded(
            f"every backend of model '{entry.name}' is unavailable ({detail})", retry_after_s=retry
        )
    if all(isinstance(e, (Overloaded, DeadlineExceeded)) for _, e in errors) and any(
        isinstance(e, DeadlineExceeded) for _, e in errors
    ):
        return DeadlineExceeded(f"no backend of model '{entry.name}' answered in time ({detail})")
    return BackendFailed(f"every backend of model '{entry.name}' failed ({detail})")


def mirror(
    entry: ModelEntry,
    shadow: Shadow,
    call: Callable[[Any, float], Awaitable[dict[str, np.ndarray]]],
    served: dict[str, np.ndarray],
    tasks: set[asyncio.Task[None]],
) -> None:
    """Send the same request to the shadow backend in the background and
    record whether it agreed; the caller's answer is already decided."""
    attempt = shadow.attempt

    async def run() -> None:
        result = "error"
        try:
            if attempt.health.disabled or not attempt.health.allow():
                result = "skipped"
                return
            try:
                outputs = await call(attempt.backend, time.monotonic() + attempt.timeout_s)
            except GatewayError as exc:
                attempt.health.record(exc)
                return
            attempt.health.record(None)
            result = (
                "agree"
                if all(
                    outputs[k].shape == v.shape
                    and (
                        np.array_equal(outputs[k], v)
                        if v.dtype.kind in "OUSb"
                        else np.allclose(outputs[k], v, rtol=shadow.rtol, atol=shadow.atol)
                    )
                    for k, v in served.items()
                )
                else "disagree"
            )
        finally:
            SHADOW.labels(entry.name, attempt.backend.name, result).inc()

    task = asyncio.get_running_loop().create_task(run())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def _attempt_deadline(
    entry: ModelEntry, attempt: Attempt, ctx: RequestContext
) -> tuple[float, bool]:
    """The one deadline of this attempt (time.monotonic()): the backend's
    `timeout_ms` from now, or the caller's deadline if that comes first; every
    layer below (admission, the backend, a vendor's retries) works to it. And
    whether it is the caller's (then running out says nothing of the backend)."""
    now = time.monotonic()
    deadline = now + attempt.timeout_s
    callers = False
    if ctx.deadline is not None and ctx.deadline < deadline:
        deadline, callers = ctx.deadline, True
    if deadline <= now:
        raise DeadlineExceeded(f"deadline exceeded before model '{entry.name}' could be served")
    return deadline, callers
