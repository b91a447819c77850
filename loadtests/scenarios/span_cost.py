"""What a traced request's spans cost the serving process, per span, in-process:
the gateway's own recording and OTLP encoder against the OpenTelemetry SDK's
tracer and its OTLP protobuf encoder. The reason the gateway keeps its own
(docs/benchmarks.md): both run on the core that serves requests.

The request is the digits request of the observability scenario: five spans
(the request, validate, the backend attempt, its queue wait and the batch
execution), with the attributes the gateway gives them.

    ours  tracing.py's hooks, called as the pipeline calls them, into the
          recorder that OTEL_TRACES_EXPORTER=otlp builds (trace_export.py):
          rows gathered per request, expanded and encoded 32 requests at a
          time, wrapped per batch of 512 spans on the event loop; the post is
          a no-op (sending is not measured).
    sdk   a TracerProvider's spans (the same names, kinds, parents and
          attributes; the attempt made current as ours is), collected by a
          span processor that only keeps them (cheaper than the SDK's batch
          processor: in the SDK's favour), encoded per 512 spans by
          opentelemetry-exporter-otlp-proto-common's encode_spans and
          serialized as its OTLP/HTTP exporter does.

As timeit does: each variant warmed up once, then `runs` timed runs of
`requests` requests with the garbage collector off (the SDK allocates far
more objects than ours, so this too is in its favour); the result is the
median over runs of microseconds per span. Both outputs are decoded once and
checked to hold as many spans of the same names. Prints one JSON line.

    python -m loadtests.scenarios.span_cost [--runs 7] [--requests 2000] [--cpus 0]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

SPANS_PER_REQUEST = 5
BATCH = 512  # OTEL_BSP_MAX_EXPORT_BATCH_SIZE's default, for both
BACKEND = "digits-cpu"
SERVICE = "inference-gateway"


def _timed(variant: Ours | Sdk, runs: int) -> list[float]:
    """Microseconds per span of each timed run, after one run of warm-up. What
    a request brings (its context, its id) is made before the clock starts."""
    variant.run(variant.prepare())
    per_span = []
    for _ in range(runs):
        prepared = variant.prepare()
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            spans = variant.run(prepared)
            took = time.perf_counter() - started
        finally:
            gc.enable()
        per_span.append(took / spans * 1e6)
    return per_span


def _request_ids(requests: int) -> list[str]:
    return [f"3f1c9a7be2d4-{i:x}" for i in range(requests)]  # as api/plumbing.py makes them


# -- ours -----------------------------------------------------------------------------


class Ours:
    """tracing.py's hooks into the OTLP recorder, with a post that keeps the
    payloads (only the last run's, for the check)."""

    def __init__(self, requests: int) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from gateway import __version__
        from gateway.observe import spans, tracing
        from gateway.observe.otlp import Encoder, encode_span
        from gateway.observe.trace_export import Recorder

        for name in ("OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE"):
            os.environ.pop(name, None)
        os.environ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = str(BATCH)
        # The sampler and propagator as setup() makes them; then the recorder
        # build_recorder makes for OTLP, but for the post.
        tracing.setup(exporter=InMemorySpanExporter(), service_name=SERVICE, batch=True)
        resource = Resource.create({"service.name": SERVICE})
        self.payloads: list[bytes] = []

        async def post(payload: bytes) -> bool:
            self.payloads.append(payload)
            return True

        self.recorder = Recorder(
            Encoder(resource.attributes, tracing.SCOPE, __version__).wrap,
            self.payloads.append,
            lambda: None,
            True,
            expand=spans.expand,
            post=post,
            encode_span=encode_span,
        )
        spans.recorder = self.recorder
        self.requests = requests
        self.loop = asyncio.new_event_loop()

    def prepare(self) -> list[Any]:
        from gateway.core.types import RequestContext

        return [
            RequestContext(request_id=request_id, protocol="v2_http", model="digits")
            for request_id in _request_ids(self.requests)
        ]

    def run(self, contexts: list[Any]) -> int:
        self.payloads.clear()
        self.loop.run_until_complete(self._serve(contexts))
        assert self.recorder.dropped == 0
        return len(contexts) * SPANS_PER_REQUEST

    async def _serve(self, contexts: list[Any]) -> None:
        from gateway.observe import tracing

        time_ns = time.time_ns
        for i, ctx in enumerate(contexts):
            # What the pipeline does for a digits request, when tracing is on.
            tracing.step(ctx, "validate", time_ns())
            ctx.backend = BACKEND
            ctx.attempts += 1
            attempt = tracing.Attempt(ctx, BACKEND)
            handle = tracing.queued()
            assert handle is not None
            tracing.queue_waited(handle, BACKEND)
            tracing.executed([handle], time_ns(), BACKEND, 1)
            attempt.end("ok")
            tracing.finish_request(ctx, 200, "tensor")
            if i % 32 == 31:
                await asyncio.sleep(0)  # the loop runs between requests: full batches go
        await self.recorder.flush_async()

    def close(self) -> None:
        from gateway.observe import tracing

        tracing.shutdown()
        self.loop.close()


# -- the SDK --------------------------------------------------------------------------


class Sdk:
    """The SDK's tracer and OTLP encoder, as a gateway instrumented with them
    would record the same request."""

    def __init__(self, requests: int) -> None:
        from opentelemetry import context, trace
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

        from gateway import __version__

        ended: list[ReadableSpan] = []

        class Keep(SpanProcessor):
            def on_end(self, span: ReadableSpan) -> None:
                ended.append(span)

        provider = TracerProvider(
            resource=Resource.create({"service.name": SERVICE}), shutdown_on_exit=False
        )
        provider.add_span_processor(Keep())
        self.tracer = provider.get_tracer("gateway", __version__)
        self.ended = ended
        self.encode_spans = encode_spans
        self.payloads: list[bytes] = []
        self.requests = requests
        self.context = context
        self.trace = trace

    def _flush(self) -> None:
        if self.ended:
            self.payloads.append(self.encode_spans(self.ended).SerializePartialToString())
            self.ended.clear()

    def prepare(self) -> list[str]:
        return _request_ids(self.requests)

    def run(self, request_ids: list[str]) -> int:
        tracer, trace, context = self.tracer, self.trace, self.context
        server, in_context = trace.SpanKind.SERVER, trace.set_span_in_context
        self.payloads.clear()
        spans = 0
        for request_id in request_ids:
            request = tracer.start_span("infer digits", kind=server)
            parent = in_context(request)
            tracer.start_span("validate", parent).end()
            attempt = tracer.start_span(
                f"attempt {BACKEND}", parent, attributes={"gateway.backend": BACKEND}
            )
            current = in_context(attempt)
            token = context.attach(current)
            tracer.start_span("queue wait", current, attributes={"gateway.backend": BACKEND}).end()
            tracer.start_span(
                "batch execution",
                current,
                attributes={
                    "gateway.backend": BACKEND,
                    "gateway.batch.rows": 1,
                    "gateway.batch.requests": 1,
                },
            ).end()
            attempt.set_attribute("gateway.outcome", "ok")
            attempt.end()
            context.detach(token)
            request.set_attributes(
                {
                    "gateway.protocol": "v2_http",
                    "gateway.status_code": 200,
                    "gateway.cache": "bypass",
                    "gateway.attempts": 1,
                    "gateway.model": "digits",
                    "gateway.backend": BACKEND,
                    "gateway.request_id": request_id,
                }
            )
            request.end()
            spans += SPANS_PER_REQUEST
            if len(self.ended) >= BATCH:
                self._flush()
        self._flush()
        return spans

    def close(self) -> None:
        pass


def _decoded_names(payloads: list[bytes]) -> list[str]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    return [
        span.name
        for payload in payloads
        for resource_spans in ExportTraceServiceRequest.FromString(payload).resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


def measure(runs: int, requests: int) -> dict[str, Any]:
    ours, sdk = Ours(requests), Sdk(requests)
    try:
        # Once, untimed: both make as many spans of the same names (opentelemetry-proto).
        ours.run(ours.prepare())
        ours_names = sorted(_decoded_names(ours.payloads))
        sdk.run(sdk.prepare())
        sdk_names = sorted(_decoded_names(sdk.payloads))
        if ours_names != sdk_names or len(ours_names) != requests * SPANS_PER_REQUEST:
            raise RuntimeError("the two variants do not record the same spans")
        ours_us = _timed(ours, runs)
        sdk_us = _timed(sdk, runs)
    finally:
        ours.close()
        sdk.close()
    ours_median, sdk_median = statistics.median(ours_us), statistics.median(sdk_us)
    from google.protobuf.internal import api_implementation

    return {
        "runs": runs,
        "requests_per_run": requests,
        "spans_per_request": SPANS_PER_REQUEST,
        "spans_per_run": requests * SPANS_PER_REQUEST,
        "ours_us_per_span": round(ours_median, 3),
        "sdk_us_per_span": round(sdk_median, 3),
        "sdk_over_ours": round(sdk_median / ours_median, 1),
        "ours_runs_us": [round(v, 3) for v in ours_us],
        "sdk_runs_us": [round(v, 3) for v in sdk_us],
        "protobuf": api_implementation.Type(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7, help="timed runs (default %(default)s)")
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per run (default %(default)s)"
    )
    parser.add_argument("--cpus", default=None, help="pin to these cores, e.g. 0")
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    print(json.dumps(measure(args.runs, args.requests)))


if __name__ == "__main__":
    main()
