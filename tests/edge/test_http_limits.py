"""The HTTP edge holds against hostile clients (server.http, api/http_limits.py):
oversized heads, slow heads (slowloris), stalled bodies, connection floods and
request floods, against real `gateway serve` processes over raw sockets.

No test sleeps to synchronise: each blocks on a socket read with a timeout
larger than the limit under test and checks when the server answered or
closed. Trickling clients pace their bytes with the same reads.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.fd_budget import AUTO_CONNECTIONS_CEILING, connection_budget
from tests.api.http_helpers import tensor_json
from tests.conftest import GatewayProcess, digits_config, start_gateway

SLACK_S = 2.0  # how much later than its limit the server may act


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Starts a gateway with the given `server.http` limits; stops it after the test."""
    started: list[GatewayProcess] = []

    def start(**http: object) -> GatewayProcess:
        config = digits_config(http=http) if http else digits_config()  # defaults: no key
        process = start_gateway(config, tmp_path / str(len(started)))
        started.append(process)
        return process

    yield start
    for process in started:
        alive = process.process.poll() is None
        process.stop()
        assert alive, f"the gateway died during the test:\n{process.logs()}"


def connect(port: int, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it
    keeps it open `timeout_s` (the socket's timeout) after the last byte."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open {timeout_s} s (read so far: {data[:200]!r})"
            ) from None
        if not chunk:
            return data
        data += chunk


def read_response(
    sock: socket.socket, timeout_s: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a content-length, read off a raw socket."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed before the whole body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split()[1])


def error_of(data: bytes) -> str:
    return str(json.loads(data.partition(b"\r\n\r\n")[2])["error"])


GET = b"GET /v2/health/live HTTP/1.1\r\nhost: gateway\r\n\r\n"


def infer_request(head_extra: bytes = b"") -> tuple[bytes, bytes]:
    """(head, body) of a digits infer request."""
    body = tensor_json("pixels", "FP32", [1, 64], np.ones(64).tolist()).encode()
    head = (
        b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: gateway\r\n"
        b"content-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + head_extra
        + b"\r\n"
    )
    return head, body


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


# -- the size of a request head -----------------------------------------------------------


def test_a_head_over_the_limit_is_answered_431_and_closed(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(max_header_bytes=8192)
    # Within the limit: served, on a connection that stays open for the next request.
    sock = connect(gateway.port)
    head, body = infer_request(b"x-padding: " + b"p" * 6000 + b"\r\n")
    sock.sendall(head + body)
    status, _, _ = read_response(sock)
    assert status == 200
    # Past it, on the same kept-alive connection: 431, and the connection closes.
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nx-big: " + b"b" * 9000 + b"\r\n\r\n")
    reply = read_until_closed(sock, timeout_s=10)
    assert status_of(reply) == 431
    assert b"connection: close" in reply.lower()
    assert "server.http.max_header_bytes" in error_of(reply)
    # A long request line counts too.
    sock = connect(gateway.port)
    sock.sendall(b"GET /v2/health/live?" + b"q" * 9000 + b" HTTP/1.1\r\n\r\n")
    assert status_of(read_until_closed(sock, timeout_s=10)) == 431


def test_a_64_mb_header_line_is_refused_without_taking_the_memory(
    serve: Callable[..., GatewayProcess],
) -> None:
    """With the default limits: the connection is closed once the limit is read,
    and the process's memory does not grow with what the client sends."""
    gateway = serve()
    pid = gateway.pid
    warm = connect(gateway.port)
    warm.sendall(GET)
    assert read_response(warm)[0] == 200
    before = memory_kb(pid, "VmRSS")
    try:  # VmHWM (the peak RSS) starts again from the current RSS
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        peak_field = "VmHWM"
    except OSError:  # not allowed here: the RSS after is what can be checked
        peak_field = "VmRSS"
    sock = connect(gateway.port)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: gateway\r\nx-big: ")
    chunk = b"a" * (1 << 20)
    sent = 0
    try:
        while sent < 64 << 20:
            sock.sendall(chunk)
            sent += len(chunk)
        sock.sendall(b"\r\n\r\n")
        reply = read_until_closed(sock, timeout_s=30)
    except (BrokenPipeError, ConnectionResetError):
        reply = b""  # closed before it was all sent: what the server wrote may be lost
    # The server stopped reading long before the end (what was sent fits in socket buffers).
    assert sent < 32 << 20, f"the server read all {sent} bytes and answered {reply[:100]!r}"
    assert not reply or status_of(reply) == 431
    peak = memory_kb(pid, peak_field)
    after = memory_kb(pid, "VmRSS")
    assert peak - before < 16 * 1024, f"RSS peaked {peak - before} KB above {before} KB"
    assert after - before < 16 * 1024, f"RSS grew {after - before} KB from {before} KB"
    assert gateway.process.poll() is None
    warm.sendall(GET)
    assert read_response(warm)[0] == 200


# -- slow heads (slowloris) ---------------------------------------------------------------


def trickle_until_closed(socks: list[socket.socket], every_s: float, limit_s: float) -> list[float]:
    """Send each connection one more header byte every `every_s` until the server
    closes it; how long each stayed open. Fails past `limit_s`."""
    opened = {sock: time.monotonic() for sock in socks}
    lasted: dict[socket.socket, float] = {}
    sent = dict.fromkeys(socks, 0)
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    try:
        while len(lasted) < len(socks):
            for key, _ in selector.select(timeout=every_s):  # the pace: reads, not sleeps
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    assert status_of(data) == 408, data[:200]
                    continue
                lasted[sock] = time.monotonic() - opened[sock]
                selector.unregister(sock)
            for sock in socks:
                if sock in lasted:
                    continue
                if time.monotonic() - opened[sock] > limit_s:
                    raise AssertionError(
                        f"a connection trickling its head was still open after {limit_s} s "
                        f"({sent[sock]} bytes trickled)"
                    )
                try:
                    sock.send(b"x")
                    sent[sock] += 1
                except (BrokenPipeError, ConnectionResetError):
                    pass  # closed: the read above sees it next
    finally:
        selector.close()
    assert all(count >= 2 for count in sent.values()), sent  # they did trickle
    return [lasted[sock] for sock in socks]


def test_connections_trickling_their_heads_are_closed_within_the_header_timeout(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(header_timeout_s=1.0)
    socks = [connect(gateway.port) for _ in range(5)]
    for sock in socks:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nx-slow: ")
    lasted = trickle_until_closed(socks, every_s=0.2, limit_s=1.0 + SLACK_S)
    assert min(lasted) >= 0.9, lasted  # not before the timeout either
    # The gateway goes on serving.
    sock = connect(gateway.port)
    sock.sendall(GET)
    assert read_response(sock)[0] == 200


def test_a_kept_alive_connection_trickling_its_next_head_is_closed_too(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(header_timeout_s=1.0)
    sock = connect(gateway.port)
    sock.sendall(GET)
    assert read_response(sock)[0] == 200
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nx-slow: ")  # the next head's time starts
    (lasted,) = trickle_until_closed([sock], every_s=0.2, limit_s=1.0 + SLACK_S)
    assert lasted >= 0.9


def test_a_connection_that_sends_nothing_is_closed_silently_within_the_header_timeout(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(header_timeout_s=1.0)
    sock = connect(gateway.port)
    started = time.monotonic()
    assert read_until_closed(sock, timeout_s=1.0 + SLACK_S) == b""
    assert time.monotonic() - started >= 0.9


# -- stalled bodies -----------------------------------------------------------------------


def test_a_stalled_body_is_answered_408_within_the_body_timeout(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(body_timeout_s=1.0)
    head, body = infer_request()
    sock = connect(gateway.port)
    sock.sendall(head + body[:10])
    started = time.monotonic()
    reply = read_until_closed(sock, timeout_s=1.0 + SLACK_S)
    assert time.monotonic() - started >= 0.9
    assert status_of(reply) == 408
    assert "server.http.body_timeout_s" in error_of(reply)


def test_a_slow_body_that_keeps_coming_is_not_cut(serve: Callable[..., GatewayProcess]) -> None:
    """The timeout is for a body that stops, not for one that takes long in all."""
    gateway = serve(body_timeout_s=1.0)
    head, body = infer_request()
    sock = connect(gateway.port)
    sock.sendall(head)
    pieces = [body[i : i + len(body) // 5 + 1] for i in range(0, len(body), len(body) // 5 + 1)]
    started = time.monotonic()
    sock.settimeout(0.4)
    for piece in pieces:
        with pytest.raises(TimeoutError):  # the pace: a read that must find nothing
            sock.recv(1)
        sock.sendall(piece)
    assert time.monotonic() - started > 1.5  # longer than the timeout in all
    status, _, reply = read_response(sock)
    assert status == 200, reply


# -- connection and request floods ---------------------------------------------------------


def test_connections_past_the_cap_are_refused_and_the_others_go_on(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(max_connections=8, header_timeout_s=1.5)
    working = connect(gateway.port)
    working.sendall(GET)
    assert read_response(working)[0] == 200
    idle = [connect(gateway.port) for _ in range(7)]  # the cap is reached
    opened = time.monotonic()
    extra = [connect(gateway.port) for _ in range(4)]
    for sock in extra:  # refused at once: 503 and closed
        reply = read_until_closed(sock, timeout_s=SLACK_S)
        assert status_of(reply) == 503
        assert "server.http.max_connections" in error_of(reply)
    # The connections it has go on.
    working.sendall(GET)
    assert read_response(working)[0] == 200
    # Idle ones that never send a request are closed by the header timeout...
    for sock in idle:
        assert read_until_closed(sock, timeout_s=1.5 + SLACK_S) == b""
    assert time.monotonic() - opened < 1.5 + SLACK_S
    # ...and new connections are served again.
    for _ in range(5):
        sock = connect(gateway.port)
        sock.sendall(GET)
        assert read_response(sock)[0] == 200
        sock.close()
    working.sendall(GET)
    assert read_response(working)[0] == 200


def test_requests_past_the_concurrency_cap_are_answered_503(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(max_concurrent_requests=2)
    head, body = infer_request()
    # Two requests in progress: their bodies are still coming.
    busy = [connect(gateway.port) for _ in range(2)]
    for sock in busy:
        sock.sendall(head + body[:10])
    deadline = time.monotonic() + 10
    while True:  # until the server has both: then the next request is refused
        sock = connect(gateway.port)
        sock.sendall(GET)
        status, headers, reply = read_response(sock)
        sock.close()
        if status == 503:
            break
        assert status == 200
        assert time.monotonic() < deadline, "the two requests in progress were never counted"
    assert "server.http.max_concurrent_requests" in json.loads(reply)["error"]
    assert headers["retry-after"] == "1"
    # Those in progress finish, and requests are served again.
    for sock in busy:
        sock.sendall(body[10:])
        assert read_response(sock)[0] == 200
    sock = connect(gateway.port)
    sock.sendall(GET)
    assert read_response(sock)[0] == 200


def test_the_automatic_connection_caps_leave_file_descriptors_for_the_rest() -> None:
    """Unset, `max_connections` comes from the open-files limit: HTTP and gRPC
    together stay below it by a reserve, whatever the limit."""
    for nofile in (256, 1024, 20_000, 1 << 20):
        http, grpc = connection_budget(grpc=True, nofile=nofile)
        assert http + grpc + min(128, nofile // 2) <= nofile
        assert 0 < grpc <= http <= AUTO_CONNECTIONS_CEILING
        assert connection_budget(grpc=False, nofile=nofile)[0] >= http
    assert connection_budget(grpc=True, nofile=20_000) == (13125, 4375)
    assert connection_budget(grpc=True, nofile=1 << 20) == (65536, 65536)


# -- workers ----------------------------------------------------------------------------


def test_every_worker_enforces_the_limits(tmp_path: Path) -> None:
    """With --workers N each worker process sets the limits from the config."""
    config = digits_config(http={"max_header_bytes": 4096, "header_timeout_s": 1.0})
    gateway = start_gateway(config, tmp_path, "--workers", "2")
    try:
        deadline = time.monotonic() + 60
        while gateway.logs().count("gateway ready (worker") < 2:  # both workers started
            assert time.monotonic() < deadline, gateway.logs()
            time.sleep(0.01)
        # New connections, spread over both workers: past 4096 bytes (and under the
        # default 32 KB) every one is refused.
        for _ in range(10):
            sock = connect(gateway.port)
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nx-big: " + b"b" * 5000 + b"\r\n\r\n")
            assert status_of(read_until_closed(sock, timeout_s=10)) == 431
        socks = [connect(gateway.port) for _ in range(6)]
        for sock in socks:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nx-slow: ")
        trickle_until_closed(socks, every_s=0.2, limit_s=1.0 + SLACK_S)
        sock = connect(gateway.port)
        sock.sendall(GET)
        assert read_response(sock)[0] == 200
    finally:
        gateway.stop()
