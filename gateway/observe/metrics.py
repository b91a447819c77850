"""Prometheus metrics (names and labels are a contract: design.md §1.7).

Defined once at import; label values are bounded (model and backend names from
config, fixed reason words), never request data.
"""

from __future__ import annotations

import os

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest, multiprocess

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

    def labels(self, *args: Any, **kwargs: Any) -> "_NoMetric":
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
    Counter = Gauge = Histogram = _NoMetric  # type: ignore[misc, assignment]  # noqa: N806

# Sub-millisecond to tens of seconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
    0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter(
    "gateway_requests_total", "Requests answered, by model, protocol and status code",
    ["model", "protocol", "code"], registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds", "Time from request to answer, as the gateway saw it",
    ["model", "protocol"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
OVERHEAD = Histogram(
    "gateway_overhead_seconds",
    "The gateway's own time per request: total minus the time spent waiting on backends",
    ["model", "protocol"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
BACKEND_DURATION = Histogram(
    "gateway_backend_duration_seconds", "Time of each backend attempt, by outcome",
    ["model", "backend", "outcome"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
CACHE_REQUESTS = Counter(
    "gateway_cache_requests_total",
    "Response cache lookups by tier (local, redis) and result (hit, miss, unavailable, bypass)",
    ["model", "tier", "result"], registry=REGISTRY,
)
CACHE_LOCAL_BYTES = Gauge(
    "gateway_cache_local_bytes", "Bytes held by the in-process tier of the response cache",
    registry=REGISTRY, multiprocess_mode="livesum",
)
INFLIGHT = Gauge(
    "gateway_inflight_requests", "Requests executing on a backend now",
    ["backend"], registry=REGISTRY, multiprocess_mode="livesum",
)
QUEUED = Gauge(
    "gateway_queued_requests", "Requests waiting in a backend's queue now",
    ["backend"], registry=REGISTRY, multiprocess_mode="livesum",
)
QUEUE_DURATION = Histogram(
    "gateway_queue_duration_seconds", "Time requests waited in a backend's queue",
    ["backend"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "gateway_batch_size", "Rows per execution of a local backend",
    ["backend"], buckets=BATCH_BUCKETS, registry=REGISTRY,
)
SHED = Counter(
    "gateway_shed_total", "Requests refused or dropped before execution",
    ["backend", "reason"], registry=REGISTRY,
)

TOKENS = Counter(
    "gateway_tokens_total", "Tokens used, as the vendor reported them (or counted from a stream)",
    ["model", "backend", "direction"], registry=REGISTRY,
)
COST = Counter(
    "gateway_cost_usd_total", "Cost in US dollars by the backend's configured prices",
    ["model", "backend", "tenant"], registry=REGISTRY,
)

CIRCUIT_OPEN = Gauge(
    "gateway_circuit_open", "1 while a backend's circuit breaker is open (or half-open)",
    ["backend"], registry=REGISTRY, multiprocess_mode="livemax",
)
FALLBACKS = Counter(
    "gateway_fallbacks_total", "Requests passed from one backend of a route to the next",
    ["model", "from_backend", "to_backend", "reason"], registry=REGISTRY,
)
HEDGES = Counter(
    "gateway_hedges_total", "Hedged requests: a second backend asked after the hedge delay",
    ["model", "from_backend", "to_backend"], registry=REGISTRY,
)
SHADOW = Counter(
    "gateway_shadow_requests_total",
    "Mirrored requests to a shadow backend, by whether its answer agreed with the served one",
    ["model", "backend", "result"], registry=REGISTRY,
)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus text format, and its content type: with
    `--workers N` (PROMETHEUS_MULTIPROC_DIR set), the sum over every worker."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
