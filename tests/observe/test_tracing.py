"""Tracing: the span tree of a request, with the caller's trace id, fallbacks
as separate attempt spans, and the trace context carried to vendors.

The gateway app runs in-process (see inprocess.py) so that its spans reach an
in-memory exporter; the vendors are real HTTP servers on loopback.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.api.http_request import request_context
from gateway.observe import spans as span_model
from gateway.observe import tracing
from tests.observe.collector import ThreadedCollector
from tests.observe.inprocess import (
    DIGITS_BODY,
    VENDOR_KEY,
    VENDOR_KEY_ENV,
    digits_backend,
    digits_model,
    fake_vendor,
    gateway,
    vendor_backend,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.setup(exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


@pytest.fixture(autouse=True)
def vendor_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VENDOR_KEY_ENV, VENDOR_KEY)


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        named.setdefault(span.name, []).append(span)
    return named


def children(finished: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[str]:
    return sorted(
        s.name
        for s in finished
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    )


def test_a_tensor_request_is_one_tree_under_the_callers_trace(spans: InMemorySpanExporter) -> None:
    config = {
        "backends": {"digits-cpu": digits_backend(batching=True)},
        "models": {"digits": digits_model(cache={"ttl_s": 60})},
    }

    async def run() -> list[Any]:
        async with gateway(config) as gw:
            headers = {
                "traceparent": TRACEPARENT,
                "tracestate": "vendor=1",
                "x-request-id": "trace-me",
            }
            first = await gw.client.post(
                "/v2/models/digits/infer", json=DIGITS_BODY, headers=headers
            )
            second = await gw.client.post(
                "/v2/models/digits/infer", json=DIGITS_BODY, headers={"traceparent": TRACEPARENT}
            )
            return [first, second]

    first, second = asyncio.run(run())
    assert first.status_code == 200 and second.status_code == 200
    assert second.headers["x-gateway-cache"] == "hit"
    finished = spans.get_finished_spans()
    assert {s.context.trace_id for s in finished} == {int(TRACE_ID, 16)}
    named = by_name(finished)

    roots = named["infer digits"]
    assert len(roots) == 2
    miss, hit = sorted(roots, key=lambda s: s.start_time)
    for root in roots:
        assert root.kind is SpanKind.SERVER
        assert root.parent is not None and root.parent.span_id == int(CALLER_SPAN, 16)
        assert root.parent.is_remote
    assert miss.context.trace_state.get("vendor") == "1"
    assert (
        dict(miss.attributes).items()
        >= {
            "gateway.model": "digits",
            "gateway.protocol": "v2_http",
            "gateway.request_id": "trace-me",
            "gateway.status_code": 200,
            "gateway.cache": "miss",
            "gateway.backend": "digits-cpu",
            "gateway.attempts": 1,
        }.items()
    )
    assert hit.attributes["gateway.cache"] == "hit"

    assert children(finished, miss) == ["attempt digits-cpu", "cache lookup", "validate"]
    assert children(finished, hit) == ["cache lookup", "validate"]
    [attempt] = named["attempt digits-cpu"]
    assert attempt.attributes["gateway.outcome"] == "ok"
    assert children(finished, attempt) == ["batch execution", "queue wait"]
    [execution] = named["batch execution"]
    assert execution.attributes["gateway.batch.rows"] == 1
    [wait] = named["queue wait"]
    assert wait.start_time <= wait.end_time <= execution.start_time + 1
    lookups = {s.attributes["gateway.cache"] for s in named["cache lookup"]}
    assert lookups == {"miss", "hit"}
    # A child lies within its parent.
    for span in finished:
        parent = next(
            (p for p in finished if span.parent and p.context.span_id == span.parent.span_id), None
        )
        if parent is not None:
            assert parent.start_time <= span.start_time <= span.end_time <= parent.end_time


def test_a_fallback_shows_two_attempts_and_vendors_get_the_trace(
    spans: InMemorySpanExporter,
) -> None:
    async def run() -> tuple[Any, list[dict[str, str]], list[dict[str, str]]]:
        async with fake_vendor(error_rate=1.0, error_kind="500") as bad, fake_vendor() as good:
            config = {
                "backends": {"bad": vendor_backend(bad.url), "good": vendor_backend(good.url)},
                "models": {"chat": {"kind": "chat", "route": {"backends": ["bad", "good"]}}},
            }
            async with gateway(config) as gw:
                reply = await gw.client.post(
                    "/v1/chat/completions",
                    headers={"traceparent": TRACEPARENT},
                    json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
                )
            return reply, bad.received, good.received

    reply, bad_headers, good_headers = asyncio.run(run())
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-gateway-backend"] == "good"
    finished = spans.get_finished_spans()
    named = by_name(finished)
    [root] = named["chat.completions chat"]
    assert root.context.trace_id == int(TRACE_ID, 16)
    assert root.attributes["gateway.attempts"] == 2
    assert children(finished, root) == ["attempt bad", "attempt good"]

    [failed] = named["attempt bad"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["gateway.error.reason"] == "5xx"
    assert "HTTP 500" in (failed.status.description or "")
    [answered] = named["attempt good"]
    assert answered.status.status_code is not StatusCode.ERROR
    assert failed.end_time <= answered.start_time

    calls = named["POST /chat/completions"]
    assert len(calls) == 2 and all(c.kind is SpanKind.CLIENT for c in calls)
    call_of = {c.parent.span_id: c for c in calls if c.parent is not None}
    good_call = call_of[answered.context.span_id]
    assert good_call.attributes["http.response.status_code"] == 200
    assert call_of[failed.context.span_id].attributes["http.response.status_code"] == 500
    # Each vendor got the trace, with its own client span as the parent.
    [received] = good_headers
    assert received["traceparent"] == f"00-{TRACE_ID}-{good_call.context.span_id:016x}-01"
    assert bad_headers[0]["traceparent"].split("-")[1] == TRACE_ID


def test_a_caller_that_does_not_sample_gets_no_spans(spans: InMemorySpanExporter) -> None:
    """OTEL_TRACES_SAMPLER's default, parentbased_always_on, follows the caller."""
    config = {"backends": {"digits-cpu": digits_backend()}, "models": {"digits": digits_model()}}

    async def run() -> int:
        async with gateway(config) as gw:
            reply = await gw.client.post(
                "/v2/models/digits/infer",
                json=DIGITS_BODY,
                headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-00"},
            )
            return reply.status_code

    assert asyncio.run(run()) == 200
    assert spans.get_finished_spans() == ()


def test_without_a_traceparent_the_request_starts_a_trace(spans: InMemorySpanExporter) -> None:
    config = {"backends": {"digits-cpu": digits_backend()}, "models": {"digits": digits_model()}}

    async def run() -> None:
        async with gateway(config) as gw:
            wrong_shape = {
                "inputs": [
                    {"name": "pixels", "datatype": "FP32", "shape": [1, 65], "data": [0.0] * 65}
                ]
            }
            bad = await gw.client.post("/v2/models/digits/infer", json=wrong_shape)
            assert bad.status_code == 400
            missing = await gw.client.post("/v2/models/nope/infer", json=DIGITS_BODY)
            assert missing.status_code == 404

    asyncio.run(run())
    named = by_name(spans.get_finished_spans())
    [invalid] = named["infer digits"]
    assert invalid.parent is None
    assert invalid.attributes["gateway.status_code"] == 400
    [validate] = named["validate"]
    assert validate.status.status_code is StatusCode.ERROR
    [unknown] = named["infer"]  # no model resolved: the operation alone
    assert unknown.attributes["gateway.status_code"] == 404
    assert "gateway.model" not in unknown.attributes


def test_off_by_default_and_chosen_by_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(tracing.EXPORTER_ENV, raising=False)
    assert tracing.setup() is False and tracing.ENABLED is False
    ctx = contextvars.Context().run(
        request_context, {b"traceparent": TRACEPARENT.encode()}, "v2_http"
    )
    assert ctx.trace_parent is None and ctx.span is None  # nothing built while off
    # The caller's trace id still reaches logs and audit records.
    assert tracing.trace_id_of(ctx) == TRACE_ID

    monkeypatch.setenv(tracing.EXPORTER_ENV, "none")
    assert tracing.setup() is False
    monkeypatch.setenv(tracing.EXPORTER_ENV, "console")
    try:
        assert tracing.setup() is True and tracing.ENABLED is True
    finally:
        tracing.shutdown()
    monkeypatch.setenv(tracing.EXPORTER_ENV, "zipkin")
    with pytest.raises(RuntimeError, match="expected otlp, console or none"):
        tracing.setup()
    assert tracing.ENABLED is False


def test_context_from_grpc_metadata(spans: InMemorySpanExporter) -> None:
    from opentelemetry import trace

    parent = tracing.context_from_headers({"traceparent": TRACEPARENT, "x-request-id": "r"})
    context = trace.get_current_span(parent).get_span_context()
    assert (context.trace_id, context.span_id) == (int(TRACE_ID, 16), int(CALLER_SPAN, 16))
    assert tracing.context_from_headers({"x-request-id": "r"}) is None


def test_the_sampler_is_the_one_the_standard_variables_choose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    exporter = InMemorySpanExporter()
    tracing.setup(exporter=exporter)
    config = {"backends": {"digits-cpu": digits_backend()}, "models": {"digits": digits_model()}}

    async def run() -> int:
        async with gateway(config) as gw:
            reply = await gw.client.post(
                "/v2/models/digits/infer", json=DIGITS_BODY, headers={"traceparent": TRACEPARENT}
            )
            return reply.status_code

    try:
        assert asyncio.run(run()) == 200
    finally:
        tracing.shutdown()
    assert exporter.get_finished_spans() == ()


BATCHED = 4


def batch_of(size: int) -> dict[str, Any]:
    """A digits backend whose batches close only when `size` requests are in
    (or after 10 s): concurrent requests share one execution, deterministically."""
    backend = digits_backend()
    backend["batching"] = {"max_batch_size": size, "max_queue_delay_us": 10_000_000}
    return backend


def test_a_batch_is_one_execution_span_linked_from_every_request(
    spans: InMemorySpanExporter,
) -> None:
    config = {
        "backends": {"digits-batch": batch_of(BATCHED)},
        "models": {"digits": digits_model(route={"backends": ["digits-batch"]})},
    }

    async def run() -> list[Any]:
        async with gateway(config) as gw:
            return await asyncio.gather(
                *(
                    gw.client.post("/v2/models/digits/infer", json=DIGITS_BODY)
                    for _ in range(BATCHED)
                )
            )

    assert [r.status_code for r in asyncio.run(run())] == [200] * BATCHED
    named = by_name(spans.get_finished_spans())
    attempts = named["attempt digits-batch"]
    assert (
        len(attempts)
        == len(named["queue wait"])
        == len({a.context.trace_id for a in attempts})
        == BATCHED
    )  # a trace per request, each with its attempt and queue wait
    [execution] = named["batch execution"]
    assert execution.attributes["gateway.batch.requests"] == BATCHED
    assert execution.attributes["gateway.batch.rows"] == BATCHED
    by_span = {a.context.span_id: a for a in attempts}
    assert execution.parent is not None and execution.parent.span_id in by_span
    linked = {(link.context.trace_id, link.context.span_id) for link in execution.links}
    others = {
        (a.context.trace_id, a.context.span_id)
        for a in attempts
        if a.context.span_id != execution.parent.span_id
    }
    assert linked == others and len(linked) == BATCHED - 1
    for wait in named["queue wait"]:
        assert wait.end_time <= execution.start_time + 1


def spans_of_two_requests(spans: InMemorySpanExporter) -> list[tuple[Any, ...]]:
    """The gateway's own span records of a cached tensor request (twice), a chat
    fallback and a batch of requests (what the OTLP encoder receives), with the
    caller's tracestate and the batch's links."""
    recorded: list[tuple[Any, ...]] = []
    recorder = span_model.recorder
    assert recorder is not None
    encode = recorder._encode

    def keep(records: list[tuple[Any, ...]]) -> Any:
        recorded.extend(records)
        return encode(records)

    recorder._encode = keep  # type: ignore[method-assign]

    async def run() -> None:
        async with fake_vendor(error_rate=1.0, error_kind="500") as bad, fake_vendor() as good:
            config = {
                "backends": {
                    "digits-cpu": digits_backend(),
                    "bad": vendor_backend(bad.url),
                    "good": vendor_backend(good.url),
                    "digits-batch": batch_of(BATCHED),
                },
                "models": {
                    "digits": digits_model(cache={"ttl_s": 60}),
                    "batched": digits_model(route={"backends": ["digits-batch"]}),
                    "chat": {"kind": "chat", "route": {"backends": ["bad", "good"]}},
                },
            }
            async with gateway(config) as gw:
                headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=1,other=x"}
                await gw.client.post("/v2/models/digits/infer", json=DIGITS_BODY, headers=headers)
                await gw.client.post(
                    "/v2/models/digits/infer",
                    json=DIGITS_BODY,
                    headers={"traceparent": TRACEPARENT, "x-request-id": "caller-chosen-id"},
                )
                await gw.client.post(
                    "/v1/chat/completions",
                    json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
                )
                await asyncio.gather(
                    *(
                        gw.client.post("/v2/models/batched/infer", json=DIGITS_BODY)
                        for _ in range(BATCHED)
                    )
                )

    asyncio.run(run())
    return recorded


def test_otlp_encoding_matches_the_sdk_encoder(spans: InMemorySpanExporter) -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from gateway import __version__
    from gateway.observe.otlp import encode_request

    recorded = spans_of_two_requests(spans)
    readable = spans.get_finished_spans()
    assert len(recorded) == len(readable) > 10
    # error, tracestate, links
    assert (
        any(r[9] for r in recorded)
        and any(r[10] for r in recorded)
        and any(r[11] for r in recorded)
    )
    # request spans: with and without a caller's span, with a cost, of two request id lengths
    requests = [r for r in recorded if r[0] is None]
    assert any(r[3] is None for r in requests) and any(r[3] and not r[10] for r in requests)
    assert any(r[8][-1] is not None for r in requests)
    assert len({len(r[8][-2]) for r in requests}) > 1
    ours = ExportTraceServiceRequest.FromString(
        encode_request(recorded, readable[0].resource.attributes, tracing.SCOPE, __version__)
    )
    assert ours == encode_spans(readable)


def test_otlp_export_reaches_a_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    collector = ThreadedCollector()
    monkeypatch.setenv(tracing.EXPORTER_ENV, "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=gw%20test,authorization=Basic abc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    monkeypatch.setenv(tracing.SERVICE_NAME_ENV, "gw-under-test")
    config = {"backends": {"digits-cpu": digits_backend()}, "models": {"digits": digits_model()}}
    assert tracing.setup()

    async def run() -> None:
        async with gateway(config) as gw:
            for _ in range(3):
                reply = await gw.client.post(
                    "/v2/models/digits/infer",
                    json=DIGITS_BODY,
                    headers={"traceparent": TRACEPARENT},
                )
                assert reply.status_code == 200
            await tracing.flush_async()  # what a served gateway does as it stops

    try:
        asyncio.run(run())
    finally:
        tracing.shutdown()
        collector.close()
    received = collector.received
    assert received
    path, headers, _body = received[0]
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    assert (headers["content-encoding"], headers["x-tenant"]) == ("gzip", "gw test")
    exported = [ExportTraceServiceRequest.FromString(gzip.decompress(b)) for _, _, b in received]
    resource = exported[0].resource_spans[0].resource
    assert {"key": "service.name", "value": "gw-under-test"} in [
        {"key": a.key, "value": a.value.string_value} for a in resource.attributes
    ]
    names = [
        s.name
        for e in exported
        for rs in e.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    assert names.count("infer digits") == 3 and names.count("batch execution") == 3
