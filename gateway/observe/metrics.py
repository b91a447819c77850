"""Prometheus metrics (names and labels are a contract: docs/contracts.md#metrics).

Defined once at import; label values are bounded (model and backend names from
config, fixed reason words), never request data.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

REGISTRY = CollectorRegistry(auto_describe=True)

# GATEWAY_METRICS=off turns the metrics below into no-ops: not a production
# setting, but the baseline against which `make bench` (observability) measures
# what metrics, audit and tracing cost. Read once, at import.
METRICS_ENV = "GATEWAY_METRICS"
METRICS_ON = os.environ.get(METRICS_ENV, "on").strip().lower() != "off"


class _NoMetric:
    """A metric that records nothing, with the calls the gateway makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def labels(self, *args: Any, **kwargs: Any) -> _NoMetric:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


if not METRICS_ON:
    Counter = Gauge = Histogram = _NoMetric  # type: ignore[misc, assignment]  # no-op stand-ins


class LoopValue:
    """A metric's value without prometheus-client's per-update lock.

    Every update of the gateway's metrics happens on the event loop's thread
    (backends' threads hand results back to the loop before anything is
    counted), and so does every read (/metrics is served there): the lock
    guarded nothing and cost a fifth of each update. Multiprocess mode keeps
    prometheus-client's own (file-backed) values."""

    _multiprocess = False

    def __init__(
        self,
        typ: str,
        metric_name: str,
        name: str,
        labelnames: Any,
        labelvalues: Any,
        help_text: str,
        **kwargs: Any,
    ) -> None:
        self._value = 0.0
        self._exemplar: Any = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


# Chosen before the metrics below make their values; the metrics other modules
# define later (SLO, Redis, rate limits) get it too.
if values.ValueClass is values.MutexValue:
    values.ValueClass = LoopValue

# Sub-millisecond to tens of seconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter(
    "gateway_requests_total",
    "Requests answered, by model, protocol and status code",
    ["model", "protocol", "code"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time from request to answer, as the gateway saw it",
    ["model", "protocol"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
OVERHEAD = Histogram(
    "gateway_overhead_seconds",
    "The gateway's own time per request: total minus the time spent waiting on backends",
    ["model", "protocol"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BACKEND_DURATION = Histogram(
    "gateway_backend_duration_seconds",
    "Time of each backend attempt, by outcome",
    ["model", "backend", "outcome"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CACHE_REQUESTS = Counter(
    "gateway_cache_requests_total",
    "Response cache lookups by tier (local, redis) and result (hit, miss, unavailable, bypass)",
    ["model", "tier", "result"],
    registry=REGISTRY,
)
CACHE_REJECTED = Counter(
    "gateway_cache_rejected_total",
    "Values read from Redis that were not served (counted as misses): their signature "
    "did not verify, or they did not decode",
    ["model", "reason"],
    registry=REGISTRY,
)
CACHE_LOCAL_BYTES = Gauge(
    "gateway_cache_local_bytes",
    "Bytes held by the in-process tier of the response cache",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
INFLIGHT = Gauge(
    "gateway_inflight_requests",
    "Requests executing on a backend now",
    ["backend"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
QUEUED = Gauge(
    "gateway_queued_requests",
    "Requests waiting in a backend's queue now",
    ["backend"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
QUEUE_DURATION = Histogram(
    "gateway_queue_duration_seconds",
    "Time requests waited in a backend's queue",
    ["backend"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "gateway_batch_size",
    "Rows per execution of a local backend",
    ["backend"],
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
SHED = Counter(
    "gateway_shed_total",
    "Requests refused or dropped before execution",
    ["backend", "reason"],
    registry=REGISTRY,
)

TOKENS = Counter(
    "gateway_tokens_total",
    "Tokens used, as the vendor reported them (or counted from a stream)",
    ["model", "backend", "direction"],
    registry=REGISTRY,
)
COST = Counter(
    "gateway_cost_usd_total",
    "Cost in US dollars by the backend's configured prices",
    ["model", "backend", "tenant"],
    registry=REGISTRY,
)

CIRCUIT_OPEN = Gauge(
    "gateway_circuit_open",
    "1 while a backend's circuit breaker is open (or half-open)",
    ["backend"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
FALLBACKS = Counter(
    "gateway_fallbacks_total",
    "Requests passed from one backend of a route to the next",
    ["model", "from_backend", "to_backend", "reason"],
    registry=REGISTRY,
)
HEDGES = Counter(
    "gateway_hedges_total",
    "Hedged requests: a second backend asked after the hedge delay",
    ["model", "from_backend", "to_backend"],
    registry=REGISTRY,
)
SHADOW = Counter(
    "gateway_shadow_requests_total",
    "Mirrored requests to a shadow backend, by whether its answer agreed with the served one",
    ["model", "backend", "result"],
    registry=REGISTRY,
)
PII_DETECTIONS = Counter(
    "gateway_pii_detections_total",
    "Personal data found by a model's pii policy, by detector, the action taken and "
    "direction (input: the request, output: the answer)",
    ["model", "detector", "action", "direction"],
    registry=REGISTRY,
)


# -- the request path's fast calls ----------------------------------------------------
#
# A labelled child's observe() checks its arguments and walks the buckets in
# Python (~0.7 us); .labels() takes a lock and hashes (~1.5 us). The request
# path instead holds, per label set, the bound calls below: a bisect and the
# same value objects (so multiprocess mode and the exposition are unchanged).


def _ignore(amount: float = 1.0) -> None:
    pass


def fast_observe(child: Any) -> Callable[[float], None]:
    """`child.observe` for a histogram child, without the per-call checks."""
    try:
        bounds, buckets, add_sum = child._upper_bounds, child._buckets, child._sum.inc
    except AttributeError:  # GATEWAY_METRICS=off, or a prometheus-client without them
        return child.observe if METRICS_ON else _ignore

    def observe(amount: float) -> None:
        # Prometheus buckets are "le": the first bound >= amount (bounds end with +Inf).
        buckets[bisect_left(bounds, amount)].inc(1)
        add_sum(amount)

    return observe


def fast_inc(child: Any) -> Callable[[float], None]:
    """`child.inc` for a counter or gauge child, without the per-call checks."""
    value = getattr(child, "_value", None)
    if value is None:
        return child.inc if METRICS_ON else _ignore
    inc: Callable[[float], None] = value.inc
    return inc


class FastChildren:
    """Per label set, a fast call on one metric's child (made on first use).
    Label sets must stay bounded, as for any Prometheus label."""

    def __init__(self, metric: Any, make: Callable[[Any], Callable[[float], None]]) -> None:
        self._metric = metric
        self._make = make
        self._calls: dict[tuple[str, ...], Callable[[float], None]] = {}

    def __call__(self, *labels: str) -> Callable[[float], None]:
        call = self._calls.get(labels)
        if call is None:
            call = self._calls[labels] = self._make(self._metric.labels(*labels))
        return call


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus text format, and its content type: with
    `--workers N` (PROMETHEUS_MULTIPROC_DIR set), the sum over every worker."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated __init__
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
