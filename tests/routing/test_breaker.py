"""BackendHealth, the circuit breaker, on an injected clock: when it opens, how
long it stays open, the single half-open probe, and which errors are neutral."""

from __future__ import annotations

import itertools

import pytest

from gateway.core.errors import (
    BackendFailed,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    Overloaded,
)
from gateway.observe.metrics import REGISTRY
from gateway.routing.resilience import CLOSED, HALF_OPEN, OPEN, BackendHealth, BreakerPolicy
from tests.fakes import ManualClock

_names = itertools.count()


def failure() -> GatewayError:
    return BackendFailed("the vendor answered HTTP 500", reason="5xx")


# The caller's or our own doing: they say nothing about the backend's health.
NEUTRAL = {
    "invalid input": lambda: InvalidInput("bad pixels"),
    "our queue is full": lambda: Overloaded("max_queue reached"),
    "caller's deadline spent in our queue": lambda: DeadlineExceeded(
        "waited", reason="deadline_queued"
    ),
}
# The backend's own fault.
FAILURES = {
    "5xx": failure,
    "connection refused": lambda: BackendFailed("cannot reach", reason="connection"),
    "garbage": lambda: BackendFailed("not JSON", reason="bad_output"),
    "slow past its timeout": lambda: DeadlineExceeded("too slow"),
    "vendor 429": lambda: Overloaded("rate limited", reason="429"),
}


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock()


def health(clock: ManualClock, **policy: object) -> BackendHealth:
    # A fresh backend name per breaker: the gauge is per backend in a shared registry.
    return BackendHealth(f"unit-{next(_names)}", BreakerPolicy(**policy), clock=clock)


def gauge(h: BackendHealth) -> float | None:
    return REGISTRY.get_sample_value("gateway_circuit_open", {"backend": h.backend})


def opened(clock: ManualClock, cooldown_s: float = 5.0) -> BackendHealth:
    h = health(clock, consecutive_failures=2, min_requests=1000, cooldown_s=cooldown_s)
    for _ in range(2):
        assert h.allow()
        h.record(failure())
    assert h.state == OPEN
    return h


def test_consecutive_failures_open_the_circuit(clock: ManualClock) -> None:
    h = health(clock, consecutive_failures=3, min_requests=1000)
    assert gauge(h) == 0
    for _ in range(2):
        assert h.allow()
        h.record(failure())
    assert h.state == CLOSED and h.allow() and gauge(h) == 0
    h.record(failure())
    assert h.state == OPEN
    assert not h.allow()
    assert gauge(h) == 1


def test_a_success_restarts_the_count_of_consecutive_failures(clock: ManualClock) -> None:
    h = health(clock, consecutive_failures=3, min_requests=1000)
    for outcome in [failure(), failure(), None, failure(), failure(), None, failure(), failure()]:
        h.record(outcome)
    assert h.state == CLOSED and h.allow()


@pytest.mark.parametrize("kind", FAILURES)
def test_every_fault_of_the_backend_counts(clock: ManualClock, kind: str) -> None:
    h = health(clock, consecutive_failures=3, min_requests=1000)
    for _ in range(3):
        h.record(FAILURES[kind]())
    assert h.state == OPEN


@pytest.mark.parametrize("kind", NEUTRAL)
def test_neutral_errors_never_open_the_circuit(clock: ManualClock, kind: str) -> None:
    h = health(clock, consecutive_failures=2, error_rate=0.1, min_requests=5)
    for _ in range(50):
        assert h.allow()
        h.record(NEUTRAL[kind]())
    assert h.state == CLOSED and gauge(h) == 0
    # Nor do they count as calls that would dilute the error rate: after them,
    # 5 failures in 10 real calls is 50 % and opens the circuit.
    h2 = health(clock, consecutive_failures=100, error_rate=0.5, min_requests=10)
    for _ in range(10):
        h2.record(NEUTRAL[kind]())
    for i in range(10):
        h2.record(failure() if i % 2 else None)
    assert h2.state == OPEN


def test_a_neutral_error_between_failures_neither_counts_nor_resets(clock: ManualClock) -> None:
    h = health(clock, consecutive_failures=2, min_requests=1000)
    h.record(failure())
    h.record(NEUTRAL["invalid input"]())
    assert h.state == CLOSED
    h.record(failure())
    assert h.state == OPEN


def test_the_error_rate_over_the_window_opens_the_circuit(clock: ManualClock) -> None:
    h = health(clock, consecutive_failures=100, error_rate=0.5, window_s=10, min_requests=10)
    # Alternating success and failure: never two failures in a row.
    for i in range(9):
        h.record(None if i % 2 == 0 else failure())
        clock.advance(0.5)
    assert h.state == CLOSED  # 4 failures in 9 calls: under min_requests
    h.record(failure())  # 5 failures in 10 calls: 50 %
    assert h.state == OPEN
    assert not h.allow()


def test_an_error_rate_below_the_threshold_keeps_it_closed(clock: ManualClock) -> None:
    h = health(clock, consecutive_failures=100, error_rate=0.5, window_s=10, min_requests=10)
    for i in range(40):
        h.record(failure() if i % 3 == 0 else None)  # 1 in 3
        clock.advance(0.1)
    assert h.state == CLOSED


def test_failures_older_than_the_window_do_not_count(clock: ManualClock) -> None:
    h = health(clock, consecutive_failures=100, error_rate=0.5, window_s=10, min_requests=10)
    for _ in range(8):
        h.record(failure())
    h.record(None)
    clock.advance(11)  # the 8 failures fall out of the window
    for _ in range(9):
        h.record(None)
    h.record(failure())
    assert h.state == CLOSED  # 1 failure in the last 10 calls
    # Control: without the pause, the next failure opens it.
    h2 = health(clock, consecutive_failures=100, error_rate=0.5, window_s=10, min_requests=10)
    for _ in range(8):
        h2.record(failure())
    h2.record(None)
    h2.record(failure())
    assert h2.state == OPEN  # 9 failures in 10 calls


def test_open_until_the_cooldown_then_exactly_one_probe(clock: ManualClock) -> None:
    h = opened(clock, cooldown_s=5.0)
    clock.advance(4.99)
    assert not h.allow()
    clock.advance(0.01)
    assert h.allow()  # the probe
    assert h.state == HALF_OPEN
    assert gauge(h) == 1  # half-open is not healthy yet
    for _ in range(10):
        assert not h.allow()  # only one probe at a time
    clock.advance(60)
    assert not h.allow()  # and still only one, however long it takes


def test_a_successful_probe_closes_the_circuit(clock: ManualClock) -> None:
    h = opened(clock)
    clock.advance(5)
    assert h.allow()
    h.record(None)
    assert h.state == CLOSED
    assert gauge(h) == 0
    assert all(h.allow() for _ in range(10))
    # The count starts over: one failure after closing does not re-open it.
    h.record(failure())
    assert h.state == CLOSED


def test_a_failed_probe_reopens_for_a_whole_cooldown(clock: ManualClock) -> None:
    h = opened(clock, cooldown_s=5.0)
    clock.advance(5)
    assert h.allow()
    h.record(failure())
    assert h.state == OPEN and gauge(h) == 1
    clock.advance(4.9)
    assert not h.allow()
    clock.advance(0.1)
    assert h.allow()
    assert not h.allow()


@pytest.mark.parametrize("kind", NEUTRAL)
def test_a_probe_without_verdict_lets_another_probe_through(clock: ManualClock, kind: str) -> None:
    h = opened(clock)
    clock.advance(5)
    assert h.allow()
    h.record(NEUTRAL[kind]())
    assert h.state == HALF_OPEN
    assert h.allow()  # the next probe
    assert not h.allow()
    h.record(None)
    assert h.state == CLOSED


def test_a_cancelled_probe_lets_another_probe_through(clock: ManualClock) -> None:
    h = opened(clock)
    clock.advance(5)
    assert h.allow()
    h.cancelled()
    assert h.allow()
    assert not h.allow()


def test_a_disabled_breaker_never_opens(clock: ManualClock) -> None:
    h = health(clock, enabled=False, consecutive_failures=1, min_requests=1)
    for _ in range(50):
        assert h.allow()
        h.record(failure())
    assert h.allow() and gauge(h) == 0


def test_the_kill_switch_is_apart_from_the_breaker(clock: ManualClock) -> None:
    h = health(clock)
    h.disabled = True
    assert h.state == CLOSED  # the route checks `disabled` itself; the breaker is untouched
    h.disabled = False
    assert h.allow()
