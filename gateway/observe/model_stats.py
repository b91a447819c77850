"""Per-model request statistics in Triton's terms (its statistics extension):
successes and failures, queue and compute time, inferences and executions.

Counted once per answered request, where every transport reports its answer
(`InferenceService.observe`): a handful of attribute adds on the model's own
object, on the event loop's thread, so no lock. Plain in-process numbers, not
Prometheus metrics: each process counts its own (with `server.workers` > 1 a
caller sees the worker that answered it), and a reload keeps a model's counts
while its version stays the same (pipeline/service.py).
"""

from __future__ import annotations

import time

from gateway.core.types import RequestContext


class ModelStats:
    """One model's counts since it was loaded (durations in seconds, summed).

    A request is counted once its model is resolved and the caller may use it.
    Answered 200 it is a success, anything else a failure (invalid inputs,
    limits, overload, deadlines, backend failures, callers gone). A success
    that a backend answered also counts its queue wait and its execution, as
    admission measured them (the execution of a batch counted once, for the
    batch's first request); a cache hit counts as a success and a cache hit.
    """

    __slots__ = (
        "cache_hit_count",
        "cache_hit_s",
        "cache_miss_count",
        "compute_count",
        "compute_s",
        "execution_count",
        "fail_count",
        "fail_s",
        "inference_count",
        "last_at",
        "queue_count",
        "queue_s",
        "success_count",
        "success_s",
    )

    def __init__(self) -> None:
        self.success_count = 0
        self.success_s = 0.0
        self.fail_count = 0
        self.fail_s = 0.0
        self.queue_count = 0
        self.queue_s = 0.0
        self.compute_count = 0
        self.compute_s = 0.0
        self.cache_hit_count = 0
        self.cache_hit_s = 0.0
        self.cache_miss_count = 0
        self.inference_count = 0
        self.execution_count = 0
        # When the last request was answered, on time.perf_counter()'s clock (the
        # one RequestContext.started is on): no clock read per request.
        self.last_at = 0.0

    def record(self, ctx: RequestContext, code: int, total_s: float) -> None:
        """Count one answered request of this model that took `total_s` seconds."""
        self.last_at = ctx.started + total_s
        if code != 200:
            self.fail_count += 1
            self.fail_s += total_s
            return
        self.success_count += 1
        self.success_s += total_s
        cache = ctx.cache
        if cache == "hit":
            self.cache_hit_count += 1
            self.cache_hit_s += total_s
            return
        if cache == "miss":
            self.cache_miss_count += 1
        execution = ctx.execution
        if execution is not None:
            self.queue_count += 1
            self.queue_s += execution.waited_s
            self.compute_count += 1
            self.compute_s += execution.ran_s
            self.inference_count += execution.inferences
            if execution.leads:
                self.execution_count += 1
        elif ctx.attempts:
            # A backend without a queue of admission's in front (a vendor API):
            # its call, slot wait included, is the execution.
            self.queue_count += 1
            self.compute_count += 1
            self.compute_s += ctx.backend_wait_s
            self.inference_count += 1
            self.execution_count += 1

    def last_inference_ms(self) -> int:
        """When the last request was answered, in milliseconds since the epoch (0: none)."""
        if not self.last_at:
            return 0
        return int((time.time() - (time.perf_counter() - self.last_at)) * 1000.0)
