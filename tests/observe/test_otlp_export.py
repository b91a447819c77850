"""The OTLP/HTTP exporter against a real HTTP server on loopback: what it
sends, how it reads the answers a collector may give (content length,
chunked, no body, closed connection), what it retries, and that a missing
collector costs a False, not an exception. Both ways of posting are checked:
`post` on the event loop and the blocking `send`."""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from gateway.observe.otlp_export import OtlpHttpExporter
from tests.observe.collector import ThreadedCollector


class Collector:
    """An OTLP/HTTP collector whose answers a test scripts, one per request."""

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
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    for name in ("ENDPOINT", "HEADERS", "COMPRESSION", "TIMEOUT", "PROTOCOL"):
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{name}", raising=False)
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_TRACES_{name}", raising=False)

    def point_at(port: int) -> None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")

    return point_at


def test_posts_from_the_loop_over_one_kept_alive_connection(
    endpoint: Callable[[int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=gw%20test,Authorization=Basic abc")

    async def run() -> tuple[list[bool], Collector]:
        async with Collector() as collector:
            endpoint(collector.port)
            exporter = OtlpHttpExporter()
            delivered = [await exporter.post(b"batch-%d" % i) for i in range(3)]
            exporter.close()
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


@pytest.mark.parametrize("answer", [chunked, no_content, closing], ids=lambda a: a.__name__)
def test_reads_every_kind_of_answer_and_goes_on(
    endpoint: Callable[[int], None], answer: Callable[[web.Request], Any]
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
            exporter.close()
            return delivered, collector

    delivered, collector = asyncio.run(run())
    assert delivered == [True, True, True]
    assert collector.bodies == [b"one", b"two", b"three"]


def test_retries_what_a_collector_may_recover_from(endpoint: Callable[[int], None]) -> None:
    async def run() -> tuple[bool, bool, Collector]:
        async with Collector([status(503), ok, status(400)]) as collector:
            endpoint(collector.port)
            exporter = OtlpHttpExporter()
            retried = await exporter.post(b"first")  # 503, then delivered
            refused = await exporter.post(b"second")  # 400: not retried
            exporter.close()
            return retried, refused, collector

    retried, refused, collector = asyncio.run(run())
    assert (retried, refused) == (True, False)
    assert collector.bodies == [b"first", b"first", b"second"]


def test_a_missing_collector_is_a_false_and_one_warning(
    endpoint: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there once closed
    endpoint(port)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "0.2")  # no time for a retry
    exporter = OtlpHttpExporter()

    async def run() -> list[bool]:
        return [await exporter.post(b"lost"), await exporter.post(b"lost too")]

    with caplog.at_level(logging.WARNING, logger="gateway.observe.otlp"):
        assert asyncio.run(run()) == [False, False]
        assert exporter.send(b"lost as well") is False
    warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0].getMessage()


def test_the_blocking_way_compresses_and_shares_the_policy(
    endpoint: Callable[[int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")

    async def run() -> tuple[bool, bool, Collector]:
        async with Collector([status(502)]) as collector:
            endpoint(collector.port)
            exporter = OtlpHttpExporter()
            loop = asyncio.get_running_loop()
            sent = await loop.run_in_executor(None, exporter.send, b"blocking")
            posted = await exporter.post(b"on the loop")
            exporter.close()
            return sent, posted, collector

    sent, posted, collector = asyncio.run(run())
    assert (sent, posted) == (True, True)
    # aiohttp hands the handler the body decompressed; the length says what travelled
    assert collector.bodies == [b"blocking", b"blocking", b"on the loop"]
    assert [int(h["content-length"]) for h in collector.headers] == [
        len(gzip.compress(body)) for body in collector.bodies
    ]
    assert {h["content-encoding"] for h in collector.headers} == {"gzip"}


@pytest.mark.parametrize("headers", ["x-bad=a%0d%0aInjected: yes", "bad name=x"])
def test_a_header_that_cannot_be_sent_is_refused_at_start(
    endpoint: Callable[[int], None], monkeypatch: pytest.MonkeyPatch, headers: str
) -> None:
    endpoint(4318)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", headers)
    with pytest.raises(RuntimeError, match="OTEL_EXPORTER_OTLP_HEADERS"):
        OtlpHttpExporter()


def test_each_event_loop_gets_its_own_connection(endpoint: Callable[[int], None]) -> None:
    with ThreadedCollector() as collector:  # on a thread: it outlives both loops
        endpoint(collector.port)
        exporter = OtlpHttpExporter()
        # The connection opened on the first loop cannot serve the second.
        assert asyncio.run(exporter.post(b"first loop")) is True
        assert asyncio.run(exporter.post(b"second loop")) is True
        exporter.close()
    assert collector.bodies == [b"first loop", b"second loop"]
