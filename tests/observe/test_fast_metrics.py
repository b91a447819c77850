"""The request path's fast metric calls record exactly what prometheus-client's own do."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.observe.metrics import LATENCY_BUCKETS, FastChildren, fast_inc, fast_observe

# On, between and beyond the bucket bounds, and zero.
AMOUNTS = [0.0, 0.0001, 0.00011, 0.002, 0.0049999, 0.005, 0.7, 10.0, 59.9, 60.0, 61.0, 1e6]


def _samples(registry: CollectorRegistry) -> list[bytes]:
    """The exposition without the `_created` timestamps, which differ by construction."""
    return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]


def _pair(name: str) -> tuple[CollectorRegistry, CollectorRegistry, Histogram, Histogram]:
    slow, fast = CollectorRegistry(), CollectorRegistry()
    return (
        slow,
        fast,
        Histogram(name, "h", ["model"], buckets=LATENCY_BUCKETS, registry=slow),
        Histogram(name, "h", ["model"], buckets=LATENCY_BUCKETS, registry=fast),
    )


def test_fast_observe_fills_the_same_buckets_and_sum_as_observe() -> None:
    slow, fast, reference, under_test = _pair("latency_seconds")
    observe = fast_observe(under_test.labels("digits"))
    for amount in AMOUNTS:
        reference.labels("digits").observe(amount)
        observe(amount)
    assert _samples(fast) == _samples(slow)
    assert b'latency_seconds_bucket{le="0.005",model="digits"} 6.0' in _samples(fast)


def test_fast_children_make_one_call_per_label_set_and_count_like_inc() -> None:
    registry = CollectorRegistry()
    counter = Counter("answers", "c", ["model", "code"], registry=registry)
    count = FastChildren(counter, fast_inc)
    assert count("digits", "200") is count("digits", "200")
    for code in ("200", "200", "503"):
        count("digits", code)(1)
    count("digits", "200")(2.5)
    assert registry.get_sample_value("answers_total", {"model": "digits", "code": "200"}) == 4.5
    assert registry.get_sample_value("answers_total", {"model": "digits", "code": "503"}) == 1.0
