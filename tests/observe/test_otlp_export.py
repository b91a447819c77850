"""The OTLP/HTTP exporter (aiohttp) against real HTTP servers on loopback.

The exporter alone: what it sends, how it reads the answers a collector may
give (content length, chunked, no body, closed connection), what it retries,
TLS, and that a missing collector costs a False, not an exception; both ways
of posting, `post` on the event loop and the blocking `send`.

With the recorder, as `OTEL_TRACES_EXPORTER=otlp` wires them: spans arrive and
decode (opentelemetry-proto's classes), a 503 gets the batch retried, a
collector that is down drops and counts spans without holding up the loop,
and shutdown flushes what waits, on the loop and off it.

Nothing here sleeps to synchronise: tests wait on the collector's condition."""

from __future__ import annotations

import asyncio
import gc
import gzip
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from gateway import __version__
from gateway.observe import otlp_export
from gateway.observe.otlp_export import OtlpHttpExporter
from gateway.observe.span_record import KIND_INTERNAL, KIND_SERVER
from gateway.observe.spans import expand
from gateway.observe.trace_export import Recorder, build_recorder
from tests.observe.collector import HANG_UP, ThreadedCollector

OTLP_VARIABLES = (
    "ENDPOINT",
    "HEADERS",
    "COMPRESSION",
    "TIMEOUT",
    "PROTOCOL",
    "CERTIFICATE",
    "CLIENT_CERTIFICATE",
    "CLIENT_KEY",
)


class Collector:
    """An OTLP/HTTP collector on the test's own loop whose answers a test
    scripts, one per request (aiohttp's server: chunked and streamed answers)."""

    def __init__(self, answers: list[Callable[[web.Request], Any]] | None = None) -> None:
        self.answers = list(answers or [])
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.peers: list[Any] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        self.peers.append(
            request.transport.get_extra_info("peername") if request.transport else None
        )
        answer = self.answers.pop(0) if self.answers else ok
        return await answer(request)

    async def __aenter__(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def ok(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"", content_type="application/x-protobuf")


def status(code: int) -> Callable[[web.Request], Any]:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text=f"status {code}")

    return answer


async def chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b"partial")
    await response.write(b" success")
    await response.write_eof()
    return response


async def no_content(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


async def closing(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"", headers={"connection": "close"})


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    for name in OTLP_VARIABLES:
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{name}", raising=False)
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_TRACES_{name}", raising=False)
    for name in ("SCHEDULE_DELAY", "MAX_QUEUE_SIZE", "MAX_EXPORT_BATCH_SIZE"):
        monkeypatch.delenv(f"OTEL_BSP_{name}", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)

    def point_at(port: int, scheme: str = "http") -> None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"{scheme}://127.0.0.1:{port}")

    return point_at


def unused_port() -> int:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return int(unused.getsockname()[1])  # nothing listens there once closed


def own_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "otlp-export"]


# -- the exporter alone ---------------------------------------------------------------


def test_posts_from_the_loop_over_one_kept_alive_connection(
    endpoint: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=gw%20test,Authorization=Basic abc")

    async def run() -> tuple[list[bool], Collector]:
        async with Collector() as collector:
            endpoint(collector.port)
            exporter = OtlpHttpExporter()
            delivered = [await exporter.post(b"batch-%d" % i) for i in range(3)]
            await exporter.aclose()
            return delivered, collector

    delivered, collector = asyncio.run(run())
    assert delivered == [True, True, True]
    assert collector.bodies == [b"batch-0", b"batch-1", b"batch-2"]
    assert len(set(collector.peers)) == 1  # one connection for all three
    sent = collector.headers[0]
    assert (sent["content-type"], sent["x-tenant"], sent["authorization"]) == (
        "application/x-protobuf",
        "gw test",
        "Basic abc",
    )
    assert sent["host"] == f"127.0.0.1:{collector.port}"
    assert "content-encoding" not in sent
    assert not own_threads()  # posting from the loop starts no thread


@pytest.mark.parametrize("answer", [chunked, no_content, closing], ids=lambda a: a.__name__)
def test_reads_every_kind_of_answer_and_goes_on(
    endpoint: Callable[..., None], answer: Callable[[web.Request], Any]
) -> None:
    async def run() -> tuple[list[bool], Collector]:
        async with Collector([answer, answer]) as collector:
            endpoint(collector.port)
            exporter = OtlpHttpExporter()
            delivered = [
                await exporter.post(b"one"),
                await exporter.post(b"two"),
                await exporter.post(b"three"),
            ]
            await exporter.aclose()
            return delivered, collector

    delivered, collector = asyncio.run(run())
    assert delivered == [True, True, True]
    assert collector.bodies == [b"one", b"two", b"three"]


def test_retries_what_a_collector_may_recover_from(endpoint: Callable[..., None]) -> None:
    async def run() -> tuple[bool, bool, OtlpHttpExporter, Collector]:
        async with Collector([status(503), ok, status(400)]) as collector:
            endpoint(collector.port)
            exporter = OtlpHttpExporter()
            retried = await exporter.post(b"first")  # 503, then delivered
            refused = await exporter.post(b"second")  # 400: not retried
            await exporter.aclose()
            return retried, refused, exporter, collector

    retried, refused, exporter, collector = asyncio.run(run())
    assert (retried, refused) == (True, False)
    assert collector.bodies == [b"first", b"first", b"second"]
    assert exporter.undelivered == 1


def test_a_missing_collector_is_a_false_and_one_warning(
    endpoint: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = unused_port()
    endpoint(port)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "0.2")  # no time for a retry
    exporter = OtlpHttpExporter()

    async def run() -> list[bool]:
        delivered = [await exporter.post(b"lost"), await exporter.post(b"lost too")]
        await exporter.aclose()
        return delivered

    with caplog.at_level(logging.WARNING, logger="gateway.observe.otlp"):
        assert asyncio.run(run()) == [False, False]
        assert exporter.send(b"lost as well") is False
        exporter.close()
    warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0].getMessage()
    assert exporter.undelivered == 3


def test_the_blocking_way_compresses_and_shares_the_policy(
    endpoint: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")

    async def run() -> tuple[bool, bool, Collector]:
        async with Collector([status(502)]) as collector:
            endpoint(collector.port)
            exporter = OtlpHttpExporter()
            loop = asyncio.get_running_loop()
            sent = await loop.run_in_executor(None, exporter.send, b"blocking")
            posted = await exporter.post(b"on the loop")
            assert len(own_threads()) == 1  # `send` ran on the exporter's own loop
            await loop.run_in_executor(None, exporter.close)  # it waits for that loop
            await exporter.aclose()
            return sent, posted, collector

    sent, posted, collector = asyncio.run(run())
    assert (sent, posted) == (True, True)
    # aiohttp hands the handler the body decompressed; the length says what travelled
    assert collector.bodies == [b"blocking", b"blocking", b"on the loop"]
    assert [int(h["content-length"]) for h in collector.headers] == [
        len(gzip.compress(body)) for body in collector.bodies
    ]
    assert {h["content-encoding"] for h in collector.headers} == {"gzip"}
    assert not own_threads()  # close() stopped it


@pytest.mark.parametrize("headers", ["x-bad=a%0d%0aInjected: yes", "bad name=x"])
def test_a_header_that_cannot_be_sent_is_refused_at_start(
    endpoint: Callable[..., None], monkeypatch: pytest.MonkeyPatch, headers: str
) -> None:
    endpoint(4318)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", headers)
    with pytest.raises(RuntimeError, match="OTEL_EXPORTER_OTLP_HEADERS"):
        OtlpHttpExporter()


@pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")
def test_each_event_loop_gets_its_own_connection(endpoint: Callable[..., None]) -> None:
    with ThreadedCollector() as collector:  # on a thread: it outlives both loops
        endpoint(collector.port)
        exporter = OtlpHttpExporter()
        # The session made on the first loop (left open as it ended) cannot serve
        # the second: it is closed and another made.
        assert asyncio.run(exporter.post(b"first loop")) is True
        assert asyncio.run(exporter.post(b"second loop")) is True
        exporter.close()
    assert collector.bodies == [b"first loop", b"second loop"]
    # A loop that ends with connections open leaves their sockets to the garbage
    # collector (hence aclose): collected here, so that their warnings are this test's.
    gc.collect()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    """A throwaway CA, its certificate and a client's as PEM files."""
    ca, directory = trustme.CA(), tmp_path_factory.mktemp("otlp-pki")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client = ca.issue_cert("gateway@example.org")
    client.private_key_pem.write_to_path(str(directory / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
    return ca, directory


def test_posts_over_tls_with_a_client_certificate(
    endpoint: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    pki: tuple[trustme.CA, Path],
) -> None:
    ca, directory = pki
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    ca.configure_trust(tls)
    tls.verify_mode = ssl.CERT_REQUIRED  # mTLS: no client certificate, no answer
    with ThreadedCollector(tls=tls) as collector:
        endpoint(collector.port, "https")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "0.5")  # the refusals: no retry
        untrusting = OtlpHttpExporter()  # the system's CAs do not know this one
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(directory / "ca.pem"))
        anonymous = OtlpHttpExporter()  # trusts the collector, has no certificate
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(directory / "client.pem"))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(directory / "client.key"))
        exporter = OtlpHttpExporter()

        async def run() -> list[bool]:
            delivered = [
                await exporter.post(b"over tls"),
                await untrusting.post(b"unverified"),
                await anonymous.post(b"no client certificate"),
            ]
            for each in (exporter, untrusting, anonymous):
                await each.aclose()
            return delivered

        assert asyncio.run(run()) == [True, False, False]
        assert exporter.send(b"blocking, over tls") is True
        exporter.close()
    assert collector.bodies == [b"over tls", b"blocking, over tls"]


# -- with the recorder, as OTEL_TRACES_EXPORTER=otlp wires them -------------------------


@pytest.fixture
def exporters(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[OtlpHttpExporter]]:
    """The exporters build_recorder makes, to read their counts."""
    made: list[OtlpHttpExporter] = []

    class Kept(OtlpHttpExporter):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(otlp_export, "OtlpHttpExporter", Kept)
    yield made


def otlp_recorder(monkeypatch: pytest.MonkeyPatch, batch: int, queue: int = 2048) -> Recorder:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", str(batch))
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", str(queue))
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # only full batches go by themselves
    recorder, described = build_recorder("otlp", None, "gw-under-test", "gateway", True, expand)
    assert described.startswith("otlp to http://127.0.0.1:")
    return recorder


def record(*fields: Any) -> tuple[Any, ...]:
    """A span record (span_record.py) from the fields it sets: no error,
    tracestate or links."""
    name, trace_id, span_id, parent_id, kind, start, end, attributes = fields
    return (name, trace_id, span_id, parent_id, False, kind, start, end, attributes, None, "", None)


def request_records(requests: int) -> list[tuple[Any, ...]]:
    """Span records of `requests` answered requests: each a request span and a
    "validate" child."""
    records = []
    for i in range(requests):
        trace_id, span_id, child_id = (
            (i + 1).to_bytes(16, "big"),
            (i + 1).to_bytes(8, "big"),
            (i + 1001).to_bytes(8, "big"),
        )
        start = 1_700_000_000_000_000_000 + i * 1_000_000
        summary = ("tensor", "http", 200, "off", 1, "digits", "digits-cpu", None, f"req-{i}", None)
        records.append(
            record(None, trace_id, span_id, None, KIND_SERVER, start, start + 9000, summary)
        )
        records.append(
            record(
                "validate", trace_id, child_id, span_id, KIND_INTERNAL, start + 10, start + 20, None
            )
        )
    return records


def add(recorder: Recorder, records: list[tuple[Any, ...]]) -> None:
    for each in records:
        recorder.add(each)


def test_spans_arrive_and_decode(
    endpoint: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    exporters: list[OtlpHttpExporter],
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    records = request_records(5)
    with ThreadedCollector() as collector:
        endpoint(collector.port)
        recorder = otlp_recorder(monkeypatch, batch=4)

        async def run() -> None:
            add(recorder, records)  # two full batches go at once
            assert await asyncio.to_thread(collector.wait_for, 2)
            await recorder.flush_async()  # and the rest

        asyncio.run(run())
        recorder.shutdown()
    assert [len(r.resource_spans[0].scope_spans[0].spans) for r in collector.requests()] == [
        4,
        4,
        2,
    ]
    assert {h["content-encoding"] for _, h, _ in collector.received} == {"gzip"}
    first = collector.requests()[0].resource_spans[0]
    assert ("service.name", "gw-under-test") in [
        (a.key, a.value.string_value) for a in first.resource.attributes
    ]
    assert (first.scope_spans[0].scope.name, first.scope_spans[0].scope.version) == (
        "gateway",
        __version__,
    )
    spans = collector.spans()
    assert [(s.name, s.trace_id, s.span_id, s.parent_span_id) for s in spans] == [
        (
            "infer digits" if r[0] is None else r[0],
            r[1],
            r[2],
            r[3] or b"",
        )
        for r in records
    ]
    assert [(s.start_time_unix_nano, s.end_time_unix_nano, s.kind) for s in spans] == [
        (r[6], r[7], r[5]) for r in records
    ]
    request = {a.key: a.value for a in spans[0].attributes}
    assert (
        request["gateway.request_id"].string_value,
        request["gateway.status_code"].int_value,
    ) == (
        "req-0",
        200,
    )
    assert exporters[0].undelivered == 0 and not own_threads()


def test_a_503_then_200_gets_the_batch_retried(
    endpoint: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    exporters: list[OtlpHttpExporter],
) -> None:
    with ThreadedCollector(answers=[503]) as collector:
        endpoint(collector.port)
        recorder = otlp_recorder(monkeypatch, batch=4)

        async def run() -> None:
            add(recorder, request_records(2))
            await recorder.flush_async()

        asyncio.run(run())
        recorder.shutdown()
    assert len(collector.received) == 2
    assert collector.bodies[0] == collector.bodies[1]  # the same batch, again
    assert len(collector.spans()) == 8 and exporters[0].undelivered == 0


def test_a_collector_that_is_down_drops_and_counts_without_holding_up_the_loop(
    endpoint: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    exporters: list[OtlpHttpExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    records = request_records(8)
    # It takes the first post and holds it; then it goes down, hanging up on it.
    collector = ThreadedCollector(answers=[HANG_UP], held=True)
    endpoint(collector.port)
    recorder = otlp_recorder(monkeypatch, batch=4, queue=8)

    async def run() -> None:
        add(recorder, records[:4])  # a full batch: posted at once
        # The loop runs while the batch is in flight (this very wait needs it).
        assert await asyncio.to_thread(collector.wait_for, 1)
        # Requests go on meanwhile: the queue takes 8 spans, the next are dropped.
        add(recorder, records[4:16])
        assert recorder.dropped == 4
        collector.close()  # down: the held post is hung up on, the next refused
        await recorder.flush_async()

    try:
        with caplog.at_level(logging.INFO):
            asyncio.run(run())
    finally:
        collector.close()
    recorder.shutdown()
    # The batch in flight is retried and given up; at the flush the first batch
    # waiting is too, and the one after it dropped without a try.
    assert exporters[0].undelivered == 2
    assert len(collector.received) == 1
    failures = [r for r in caplog.records if r.name == "gateway.observe.otlp"]
    assert [r.levelno for r in failures] == [logging.WARNING]  # once per outage
    assert any("export queue is full" in r.getMessage() for r in caplog.records)
    assert any("1 more batch(es) of spans dropped" in r.getMessage() for r in caplog.records)


def test_shutdown_flushes_what_waits_on_the_loop_and_off_it(
    endpoint: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    exporters: list[OtlpHttpExporter],
) -> None:
    records = request_records(3)
    with ThreadedCollector() as collector:
        endpoint(collector.port)
        recorder = otlp_recorder(monkeypatch, batch=512)

        async def run() -> None:
            add(recorder, records[:4])
            assert not collector.received  # nothing is due for ten minutes
            await recorder.flush_async()  # what a served gateway does as it stops
            assert collector.wait_for(1) and not own_threads()

        asyncio.run(run())
        # Spans ended off any loop (gRPC's thread engine) go at shutdown, blocking,
        # from the exporter's own loop, which then stops.
        add(recorder, records[4:])
        recorder.shutdown()
        assert collector.wait_for(2)
    assert [len(r.resource_spans[0].scope_spans[0].spans) for r in collector.requests()] == [4, 2]
    assert [s.span_id for s in collector.spans()] == [r[2] for r in records]
    assert exporters[0].undelivered == 0 and not own_threads()


def test_a_stop_waits_for_a_collector_that_does_not_answer_at_most_its_timeout(
    endpoint: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    exporters: list[OtlpHttpExporter],
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "0.5")
    collector = ThreadedCollector(held=True)  # takes posts, answers none
    endpoint(collector.port)
    recorder = otlp_recorder(monkeypatch, batch=512)

    async def run() -> None:
        add(recorder, request_records(1))
        await recorder.flush_async()  # returns: the post is given up after the timeout

    try:
        asyncio.run(run())
        recorder.shutdown()
    finally:
        collector.close()
    assert len(collector.received) == 1 and exporters[0].undelivered == 1
