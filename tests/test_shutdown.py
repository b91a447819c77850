"""Stopping on SIGTERM (server.shutdown): readiness fails first, the listener keeps
serving through the drain, requests past the grace period get a clean 503, and
the process exits 0, with one process and with `--workers 2`.

Real gateways on loopback, real clients; ordering is asserted on one sequence
of events recorded by the clients, never on wall-clock durations.
"""

from __future__ import annotations

import http.client
import itertools
import json
import signal
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.api.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from testkit.fake_vendor import start_fake_vendor
from tests.api.http_helpers import tensor_json
from tests.conftest import GatewayProcess, digits_config, free_port, start_gateway

CLIENTS = 8
BODY = tensor_json("pixels", "FP32", [1, 64], np.ones(64).tolist()).encode()
KEY_ENV = "SHUTDOWN_TEST_VENDOR_KEY"


@dataclass
class Events:
    """What the clients saw, in one order (a shared counter, not the clock)."""

    order: itertools.count[int] = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)
    log: list[tuple[int, str, str]] = field(default_factory=list)  # (seq, who, what)

    def add(self, who: str, what: str) -> int:
        with self.lock:
            seq = next(self.order)
            self.log.append((seq, who, what))
            return seq

    def of(self, who: str) -> list[tuple[int, str]]:
        with self.lock:
            return [(seq, what) for seq, w, what in self.log if w == who]


def wait_for(condition, timeout_s: float, what: str, gateway: GatewayProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{gateway.logs()}"
        time.sleep(0.01)


def start(config: dict, tmp_path, workers: int, *args: str, env=None) -> GatewayProcess:
    extra = ("--workers", str(workers)) if workers > 1 else ()
    gateway = start_gateway(config, tmp_path, *extra, *args, env=env)
    if workers > 1:
        wait_for(
            lambda: gateway.logs().count("gateway ready (worker") >= workers,
            60,
            "every worker",
            gateway,
        )
    return gateway


def infer_client(port: int, events: Events, name: str, stop: threading.Event) -> None:
    """Keeps sending on a kept-alive connection, reconnecting when the gateway says
    `connection: close`, until a connection is refused (the listener is closed)."""
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        fresh = conn is None
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/v2/models/digits/infer", BODY)
            response = conn.getresponse()
            response.read()
        except ConnectionRefusedError:
            events.add(name, "refused")
            return
        except (OSError, http.client.HTTPException) as exc:
            # A new connection reset before any answer: its handshake raced the
            # listener's close and the kernel reset it from the accept queue, so
            # the gateway never read the request. Clients and balancers retry
            # those (the request is idempotent); the test checks when they happen.
            reset = isinstance(exc, (ConnectionResetError, http.client.RemoteDisconnected))
            events.add(name, "reset before any answer" if fresh and reset else f"error {exc!r}")
            conn.close()
            conn = None
            continue
        closing = (response.getheader("connection") or "").lower() == "close"
        events.add(name, f"{response.status}{' close' if closing else ''}")
        if closing:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def probe(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return str(response.status)
    except ConnectionRefusedError:
        return "refused"
    except (OSError, http.client.HTTPException) as exc:
        return f"error {type(exc).__name__}"
    finally:
        conn.close()


def prober(port: int, events: Events, stop: threading.Event) -> None:
    """Readiness and liveness, over and over, until the listener is closed."""
    while not stop.is_set():
        ready = probe(port, "/v2/health/ready")
        events.add("ready", ready)
        live = probe(port, "/v2/health/live")
        events.add("live", live)
        if "refused" in (ready, live):
            return
        time.sleep(0.01)  # pacing only: a probe every 10 ms is plenty


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_drains_without_losing_a_request(tmp_path, workers: int) -> None:
    config = digits_config(shutdown={"drain_s": 2.0, "grace_s": 10.0})
    gateway = start(config, tmp_path, workers)
    events, stop = Events(), threading.Event()
    clients = [
        threading.Thread(
            target=infer_client, args=(gateway.port, events, f"c{i}", stop), daemon=True
        )
        for i in range(CLIENTS)
    ]
    probes = threading.Thread(target=prober, args=(gateway.port, events, stop), daemon=True)
    try:
        for thread in [*clients, probes]:
            thread.start()
        # Steady load first: every client has been answered a few times.
        wait_for(
            lambda: all(len(events.of(f"c{i}")) >= 20 for i in range(CLIENTS)),
            60,
            "steady load",
            gateway,
        )
        sigterm = events.add("test", "SIGTERM")
        gateway.process.send_signal(signal.SIGTERM)
        for thread in [*clients, probes]:
            thread.join(timeout=120)
            assert not thread.is_alive(), gateway.logs()
        assert gateway.process.wait(timeout=60) == 0, gateway.logs()
    finally:
        stop.set()
        gateway.stop()

    answers = [(seq, what) for i in range(CLIENTS) for seq, what in events.of(f"c{i}")]
    # Every request sent got its answer: nothing failed, the clients only ever
    # stopped on a refused connection (the listener closed after the drain).
    retried = [seq for seq, what in answers if what == "reset before any answer"]
    failed = [
        what
        for _, what in answers
        if not (what.startswith("200") or what in ("refused", "reset before any answer"))
    ]
    assert failed == [], (failed, gateway.logs())
    during_drain = [seq for seq, what in answers if seq > sigterm and what.startswith("200")]
    first_refusal = min(seq for seq, what in answers if what == "refused")
    # Readiness failed first: a 503 before any connection was refused.
    ready = events.of("ready")
    first_not_ready = min(seq for seq, what in ready if seq > sigterm and what == "503")
    assert first_not_ready < first_refusal
    # Resets of new connections happen only at the listener's close, after the
    # drain: never while the gateway serves (a reset then is a lost request).
    assert all(seq > first_not_ready for seq in retried), (retried, first_not_ready)
    assert all(what == "200" for seq, what in ready if seq < sigterm)
    assert all(what in ("503", "refused") for seq, what in ready if seq > first_not_ready)
    # Liveness stayed OK until the listener closed.
    assert all(what in ("200", "refused") for _, what in events.of("live"))
    # The listener kept serving: answers after readiness failed, saying
    # `connection: close` so that kept-alive clients reconnect.
    assert any(seq > first_not_ready for seq in during_drain)
    assert any(what == "200 close" for seq, what in answers if seq > first_not_ready)
    logs = gateway.logs()
    assert "stopping: not ready" in logs and "stopped" in logs
    print(
        f"\nworkers={workers}: {len(during_drain)} requests answered after SIGTERM, "
        f"{len(failed)} failed, {len(retried)} new connections reset at the close, exit 0"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_grpc_readiness_fails_during_the_drain(tmp_path, workers: int) -> None:
    grpc_port = free_port()
    config = digits_config(shutdown={"drain_s": 30.0, "grace_s": 5.0})
    gateway = start(config, tmp_path, workers, "--grpc-port", str(grpc_port))
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    inference = pb_grpc.GRPCInferenceServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    try:
        assert inference.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
        gateway.process.send_signal(signal.SIGTERM)
        # New connections land on any worker: ask until each answer is "not ready".
        wait_for(
            lambda: all(
                not pb_grpc.GRPCInferenceServiceStub(
                    grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
                )
                .ServerReady(pb.ServerReadyRequest(), timeout=10)
                .ready
                for _ in range(4)
            ),
            60,
            "ServerReady false",
            gateway,
        )
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status != serving
        assert inference.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        # Inference still works during the drain.
        request = pb.ModelInferRequest(model_name="digits")
        tensor = request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
        tensor.contents.fp32_contents.extend([1.0] * 64)
        assert len(inference.ModelInfer(request, timeout=10).outputs) == 1
        # A second signal cuts the drain short.
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=60) == 0, gateway.logs()
    finally:
        channel.close()
        gateway.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_requests_past_the_grace_period_are_answered_503(tmp_path, workers: int) -> None:
    vendor = start_fake_vendor(latency_ms=600_000)  # answers long after the grace period
    config = {
        "server": {"shutdown": {"drain_s": 0, "grace_s": 1.0}},
        "backends": {
            "slow": {
                "type": "openai",
                "base_url": f"http://{vendor.url}/v1",
                "api_key_env": KEY_ENV,
                "model": "fake",
                "timeout_ms": 600_000,
                "circuit_breaker": {"enabled": False},
            }
        },
        "models": {"chat": {"kind": "chat", "route": {"backends": ["slow"]}}},
    }
    gateway = start(config, tmp_path, workers, env={KEY_ENV: "fake-key"})
    replies: list[tuple[int, dict]] = []

    def ask() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=120)
        body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        response = conn.getresponse()
        replies.append((response.status, json.loads(response.read())))
        conn.close()

    caller = threading.Thread(target=ask, daemon=True)
    try:
        caller.start()
        wait_for(lambda: vendor_saw_a_request(vendor), 60, "the vendor call", gateway)
        gateway.process.send_signal(signal.SIGTERM)
        caller.join(timeout=120)
        assert not caller.is_alive(), gateway.logs()
        assert gateway.process.wait(timeout=60) == 0, gateway.logs()
    finally:
        gateway.stop()
        vendor.stop()
    [(status, doc)] = replies
    assert status == 503, (doc, gateway.logs())
    assert doc["error"]["type"] == "server_error" and doc["error"]["code"] == "overloaded"
    assert "server.shutdown.grace_s" in doc["error"]["message"]
    assert "cancelling 1 request(s)" in gateway.logs()


def vendor_saw_a_request(vendor: GatewayProcess) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", vendor.port, timeout=10)
    conn.request("GET", "/_stats")
    stats = json.loads(conn.getresponse().read())
    conn.close()
    return "/v1/chat/completions" in json.dumps(stats)
