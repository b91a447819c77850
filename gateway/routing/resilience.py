"""Per-backend health: circuit breaker and kill switch.

A breaker opens after `consecutive_failures` failures in a row, or when the
failure rate over the last `window_s` seconds reaches `error_rate` (with at
least `min_requests` calls in the window). While open, calls fail fast (the
route falls back at no cost); after `cooldown_s` one probe is let through
(half-open): success closes the breaker, failure re-opens it.

What counts as a failure is the backend's own fault: connection errors,
5xx, garbage, timeouts while it worked, vendor 429s. A full queue of ours,
a caller's invalid input or a caller's spent deadline say nothing about the
backend's health and are neutral.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.core.errors import BackendFailed, DeadlineExceeded, GatewayError, Overloaded
from gateway.observe.metrics import CIRCUIT_OPEN

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    consecutive_failures: int = 5
    error_rate: float = 0.5
    window_s: float = 10.0
    min_requests: int = 20
    cooldown_s: float = 5.0
    enabled: bool = True


def counts_as_failure(error: GatewayError) -> bool:
    if isinstance(error, BackendFailed):
        return True
    if isinstance(error, DeadlineExceeded):
        return error.reason == "timeout"  # it was working on the request, and too slow
    return isinstance(error, Overloaded) and error.reason == "429"


class BackendHealth:
    """One per backend, shared by every route that uses it."""

    def __init__(
        self, backend: str, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.backend = backend
        self.policy = policy
        self.clock = clock
        self.state = CLOSED
        self.disabled = False  # the kill switch: POST /admin/backends/{b}/disable
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        # Per-second buckets of [second, calls, failures] over the window.
        self._window: deque[list[int]] = deque()
        self._gauge = CIRCUIT_OPEN.labels(backend)
        self._gauge.set(0)

    def allow(self) -> bool:
        """May a call go to this backend now? (Half-open: only one probe at a time.)"""
        if self.state == CLOSED or not self.policy.enabled:
            return True
        if self.state == OPEN:
            if self.clock() - self._opened_at < self.policy.cooldown_s:
                return False
            self.state = HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def record(self, error: GatewayError | None) -> None:
        """The outcome of a call that `allow()` let through (None: success)."""
        if error is None:
            self._count(False)
            self._consecutive = 0
            if self.state != CLOSED:
                self._close()
            return
        if not counts_as_failure(error):
            self._probing = False  # no verdict: let another probe through
            return
        self._count(True)
        self._consecutive += 1
        if self.state == HALF_OPEN or self._should_open():
            self._open()

    def cancelled(self) -> None:
        """The caller went away mid-call: no verdict."""
        self._probing = False

    def _should_open(self) -> bool:
        if not self.policy.enabled or self.state != CLOSED:
            return False
        if self._consecutive >= self.policy.consecutive_failures:
            return True
        calls = sum(b[1] for b in self._window)
        failures = sum(b[2] for b in self._window)
        return calls >= self.policy.min_requests and failures >= self.policy.error_rate * calls

    def _count(self, failed: bool) -> None:
        second = int(self.clock())
        window = self._window
        if window and window[-1][0] == second:
            bucket = window[-1]
        else:
            bucket = [second, 0, 0]
            window.append(bucket)
            horizon = second - self.policy.window_s
            while window and window[0][0] <= horizon:
                window.popleft()
        bucket[1] += 1
        bucket[2] += failed

    def _open(self) -> None:
        self.state = OPEN
        self._opened_at = self.clock()
        self._probing = False
        self._gauge.set(1)

    def _close(self) -> None:
        self.state = CLOSED
        self._probing = False
        self._consecutive = 0
        self._window.clear()
        self._gauge.set(0)
