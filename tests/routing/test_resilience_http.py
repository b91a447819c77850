"""Routes that survive outages, observed from outside: a real gateway process,
two fake vendors (A and B) and local ONNX backends, with the failures injected
into the vendors (500s, hangs, refused connections, a killed process) and into
local capacity, never into the gateway.

Circuit breakers, fallback chains and their reasons, no second call for a
non-idempotent request, hedging, sticky weighted picks, shadow traffic and the
kill switch. Nothing sleeps to synchronise: state another process reaches on
its own is polled over HTTP with a deadline. Nothing is asserted about how fast
an answer came: what happened is read from the gateway's metrics, the vendors'
counts and the order of events. Each test that opens a circuit has backends of
its own, so that no breaker carries state from one test to the next.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from testkit.fake_vendor import (
    control_fake_vendor,
    embedding_vector,
    fake_vendor_stats,
    reset_fake_vendor,
    start_fake_vendor,
)
from tests.api.http_helpers import Reply, post, tensor_json
from tests.conftest import DIGITS_MODEL, ROOT, GatewayProcess, start_gateway
from tests.metrics_reader import scrape, value

KEY_ENV = "RESILIENCE_TEST_VENDOR_KEY"
ADMIN_ENV = "RESILIENCE_TEST_ADMIN_KEY"
ADMIN_KEY = "admin-secret-for-tests"
COOLDOWN_MS = 400
A_TIMEOUT_MS = 300  # the a-brk-* backends' own deadline; requests carry a larger one
REQUEST_TIMEOUT_MS = "5000"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
EMBEDDER = ROOT / "models" / "embedder" / "1"
DIGITS_SIGNATURE = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
}
TEXT_TO_VECTOR = {
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
}


# Each case of the circuit-breaker tests gets its own pair a-brk-<case> and
# b-brk-<case> behind its own model breaker-<case>: a breaker a case opened
# (or left counting failures) is never another case's starting point.
FAULT_REASON = {"500": "5xx", "timeout": "timeout", "refused": "connection", "killed": None}
BREAKER_CASES = [*FAULT_REASON, "invalid"]


# -- processes --------------------------------------------------------------------------


class Vendors:
    """Fake vendors A and B; A can be stopped, killed and brought back on its port."""

    def __init__(self) -> None:
        self.a_process = start_fake_vendor()
        self.b_process = start_fake_vendor()
        self.a = self.a_process.url
        self.b = self.b_process.url

    @property
    def a_alive(self) -> bool:
        return self.a_process.process.poll() is None

    def stop_a(self) -> None:
        self.a_process.stop()

    def kill_a(self) -> None:
        self.a_process.process.kill()  # SIGKILL: no goodbye to open connections
        self.a_process.process.wait()

    def restart_a(self) -> None:
        self.a_process = start_fake_vendor(port=self.a_process.port)

    def ready(self) -> None:
        """Both running with their start-up knobs and zeroed stats."""
        if not self.a_alive:
            self.restart_a()
        reset_fake_vendor(self.a)
        reset_fake_vendor(self.b)

    def stop(self) -> None:
        self.a_process.stop()
        self.b_process.stop()


def vendor_backend(url: str, **extra: object) -> dict:
    # No retries and no breaker unless a test asks: one call per request, whatever
    # happened before.
    return {
        "type": "openai",
        "base_url": f"http://{url}/v1",
        "api_key_env": KEY_ENV,
        "model": "fake-chat",
        "retries": {"max": 0},
        "circuit_breaker": {"enabled": False},
        **extra,
    }


def breaker_backend(url: str) -> dict:
    return vendor_backend(
        url,
        timeout_ms=A_TIMEOUT_MS,
        circuit_breaker={
            "consecutive_failures": 3,
            "min_requests": 1000,
            "cooldown_ms": COOLDOWN_MS,
        },
    )


def digits_backend(**extra: object) -> dict:
    return {
        "type": "onnx",
        "path": str(DIGITS_MODEL),
        "providers": ["cpu"],
        "max_concurrency": 1,
        "intra_op_threads": 1,
        **extra,
    }


def chat_model(*backends: str, **route: object) -> dict:
    return {"kind": "chat", "route": {"strategy": "fallback", "backends": list(backends), **route}}


def other_digits_model(path: Path) -> Path:
    """The digits signature (pixels FP32 [n, 64] -> probabilities FP32 [n, 10]) over a
    different linear layer: valid answers that disagree with the digits model's."""
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((64, 10)).astype(np.float32)
    pixels = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 64])
    probabilities = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 10])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["pixels", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "other-digits",
        [pixels],
        [probabilities],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def vendors() -> Iterator[Vendors]:
    started = Vendors()
    yield started
    started.stop()


@pytest.fixture(autouse=True)
def fresh_vendors(vendors: Vendors) -> None:
    vendors.ready()


@pytest.fixture(scope="module")
def gateway(vendors: Vendors, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("resilience")
    other = other_digits_model(workdir / "other-digits.onnx")
    config = {
        "server": {"admin_key_env": ADMIN_ENV, "watch_config_s": 0},
        "backends": {
            **{f"a-brk-{case}": breaker_backend(vendors.a) for case in BREAKER_CASES},
            **{f"b-brk-{case}": vendor_backend(vendors.b) for case in BREAKER_CASES},
            "a-probe": breaker_backend(vendors.a),
            "b-probe": vendor_backend(vendors.b),
            "a-chat": vendor_backend(vendors.a),
            "b-chat": vendor_backend(vendors.b),
            "b-embed": vendor_backend(vendors.b, model="fake-embed"),
            "embedder-local": {
                "type": "onnx",
                "path": str(EMBEDDER / "model.onnx"),
                "providers": ["cpu"],
                "intra_op_threads": 1,
                "max_concurrency": 1,
                "max_queue": 1,
                "tokenizer": {"path": str(EMBEDDER / "tokenizer.json"), "input": "text"},
            },
            "digits-main": digits_backend(),
            "digits-copy": digits_backend(),
            "digits-other": {**digits_backend(), "path": str(other)},
            # Waits up to a second for batch-mates: a shadow that answers late.
            "digits-lazy": digits_backend(
                batching={"max_batch_size": 64, "max_queue_delay_us": 1_000_000}
            ),
        },
        "models": {
            **{
                f"breaker-{case}": chat_model(f"a-brk-{case}", f"b-brk-{case}")
                for case in BREAKER_CASES
            },
            "probe": chat_model("a-probe", "b-probe"),
            "fallback": chat_model("a-chat", "b-chat"),
            "hedged": chat_model("a-chat", "b-chat", hedge={"delay_ms": 50}),
            "sticky": {
                "kind": "chat",
                "route": {
                    "strategy": "weighted",
                    "sticky": {"header": "x-user-id"},
                    "backends": [
                        {"name": "a-chat", "weight": 50},
                        {"name": "b-chat", "weight": 50},
                    ],
                },
            },
            "embed-burst": {
                "kind": "embeddings",
                "signature": TEXT_TO_VECTOR,
                "route": {"backends": ["embedder-local", "b-embed"]},
            },
            "shadow-copy": {
                "signature": DIGITS_SIGNATURE,
                "route": {
                    "backends": ["digits-main"],
                    "shadow": {"backend": "digits-copy", "fraction": 1.0},
                },
            },
            "shadow-other": {
                "signature": DIGITS_SIGNATURE,
                "route": {
                    "backends": ["digits-main"],
                    "shadow": {"backend": "digits-other", "fraction": 1.0},
                },
            },
            "shadow-lazy": {
                "signature": DIGITS_SIGNATURE,
                "route": {
                    "backends": ["digits-main"],
                    "shadow": {"backend": "digits-lazy", "fraction": 1.0},
                },
            },
        },
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, "fake-key")
        patch.setenv(ADMIN_ENV, ADMIN_KEY)
        process = start_gateway(config, workdir)
    yield process
    alive_until_the_end = process.process.poll() is None
    process.stop()
    logs = process.logs()
    assert alive_until_the_end, f"the gateway died during the tests:\n{logs}"
    assert "this is a gateway bug" not in logs and "internal error" not in logs, logs


# -- helpers ------------------------------------------------------------------------------


@dataclass
class Timed:
    reply: Reply
    elapsed_s: float

    @property
    def status(self) -> int:
        return self.reply.status

    @property
    def backend(self) -> str | None:
        return self.reply.headers.get("x-gateway-backend")

    @property
    def attempts(self) -> int:
        return int(self.reply.headers["x-gateway-attempts"])


def chat(
    port: int,
    model: str,
    text: str = "hello there",
    headers: dict[str, str] | None = None,
    **body: object,
) -> Timed:
    payload = json.dumps({"model": model, "messages": [{"role": "user", "content": text}], **body})
    started = time.perf_counter()
    reply = post(
        port,
        CHAT,
        payload,
        {
            "content-type": "application/json",
            "x-request-timeout-ms": REQUEST_TIMEOUT_MS,
            **(headers or {}),
        },
    )
    return Timed(reply, time.perf_counter() - started)


def answer_text(timed: Timed) -> str:
    return json.loads(timed.reply.body)["choices"][0]["message"]["content"]


def admin(port: int, path: str, key: str | None = ADMIN_KEY, method: str = "POST") -> Reply:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        method,
        path,
        b"" if method == "POST" else None,
        {} if key is None else {"authorization": f"Bearer {key}"},
    )
    response = conn.getresponse()
    reply = Reply(
        response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    )
    conn.close()
    return reply


def received(vendor_url: str, path: str = CHAT) -> int:
    return fake_vendor_stats(vendor_url)["routes"].get(path, {}).get("received", 0)


def circuit_open(port: int, backend: str) -> float:
    return value(port, "gateway_circuit_open", backend=backend)


def fallbacks(port: int, model: str, source: str, target: str, reason: str) -> float:
    return value(
        port,
        "gateway_fallbacks_total",
        model=model,
        from_backend=source,
        to_backend=target,
        reason=reason,
    )


def backend_attempts(port: int, model: str, backend: str, outcome: str | None = None) -> float:
    """Calls the gateway made to `backend` for `model` (of one outcome, or all):
    a circuit that skips a backend makes none."""
    return sum(
        sample
        for (name, labels), sample in scrape(port).items()
        if name == "gateway_backend_duration_seconds_count"
        and ("model", model) in labels
        and ("backend", backend) in labels
        and (outcome is None or ("outcome", outcome) in labels)
    )


def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0, what: str = "") -> None:
    """Poll a condition whose every check is an HTTP round trip (no sleeping)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"


class Load:
    """Requests to one model from `threads` threads until stopped; keeps every reply."""

    def __init__(self, port: int, model: str, threads: int = 3) -> None:
        self.port = port
        self.model = model
        self.replies: list[Timed] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            timed = chat(self.port, self.model)
            with self._lock:
                self.replies.append(timed)

    def count(self, predicate: Callable[[Timed], bool] = lambda t: True) -> int:
        with self._lock:
            return sum(1 for t in self.replies if predicate(t))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


# -- 1. circuit breaker over a fallback chain ---------------------------------------------------


@pytest.mark.parametrize("fault", list(FAULT_REASON))
def test_a_failing_primary_opens_its_circuit_and_b_serves_every_request(
    gateway: GatewayProcess, vendors: Vendors, fault: str
) -> None:
    port = gateway.port
    model, a_brk, b_brk = f"breaker-{fault}", f"a-brk-{fault}", f"b-brk-{fault}"
    assert chat(port, model).backend == a_brk  # healthy: A answers
    reason = FAULT_REASON[fault]
    reason_before = fallbacks(port, model, a_brk, b_brk, reason) if reason else 0.0
    skipped_before = fallbacks(port, model, a_brk, b_brk, "circuit_open")
    replies: list[Timed] = []

    def send_until_open() -> bool:
        replies.append(chat(port, model))
        return circuit_open(port, a_brk) == 1

    if fault == "killed":
        control_fake_vendor(vendors.a, latency_ms=20)  # so that calls are in flight when it dies
        with Load(port, model) as load:
            wait_for(lambda: load.count(lambda t: t.backend == a_brk) >= 10, what="A serving")
            vendors.kill_a()
            killed_at = load.count()
            wait_for(lambda: circuit_open(port, a_brk) == 1, what="the circuit to open")
            wait_for(lambda: load.count() >= killed_at + 30, what="requests after the kill")
        replies = load.replies
        # Once the calls in flight at the kill (one per thread) are answered, B serves all.
        assert all(t.backend == b_brk for t in replies[killed_at + 3 :])
    else:
        if fault == "refused":
            vendors.stop_a()
        else:
            control_fake_vendor(vendors.a, error_rate=1.0, error_kind=fault)
        wait_for(send_until_open, what="the circuit to open")
        assert all(t.backend == b_brk for t in replies), [t.backend for t in replies]
        assert len(replies) == 3  # consecutive_failures: 3
        if reason is not None:
            assert fallbacks(port, model, a_brk, b_brk, reason) == reason_before + 3
    assert [t.status for t in replies] == [200] * len(replies)

    # Open: A is skipped at no cost while requests continue.
    a_before = received(vendors.a) if vendors.a_alive else 0
    attempts_before = backend_attempts(port, model, a_brk)
    started = time.monotonic()
    open_replies = [chat(port, model) for _ in range(10)]
    elapsed = time.monotonic() - started
    assert [t.status for t in open_replies] == [200] * 10
    assert all(t.backend == b_brk for t in open_replies)
    # At most one half-open probe per cool-down may have reached A meanwhile.
    probes_allowed = 1 + int(elapsed / (COOLDOWN_MS / 1000))
    tried_a = sum(t.attempts == 2 for t in open_replies)
    assert tried_a <= probes_allowed, (tried_a, elapsed)
    if vendors.a_alive:
        assert received(vendors.a) - a_before == tried_a
    skipped = [t for t in open_replies if t.attempts == 1]
    assert len(skipped) >= 10 - probes_allowed
    # Skipping A costs nothing: the gateway made no call to A for them (one to
    # the hanging A would have waited for its timeout), only the probes.
    assert backend_attempts(port, model, a_brk) - attempts_before == tried_a
    skipped_count = fallbacks(port, model, a_brk, b_brk, "circuit_open") - skipped_before
    assert skipped_count >= len(skipped)

    # A comes back: once the cool-down passes, a probe succeeds and traffic returns to A.
    if vendors.a_alive:
        reset_fake_vendor(vendors.a)
    else:
        vendors.restart_a()
    back: list[Timed] = []
    wait_for(
        lambda: back.append(chat(port, model)) or back[-1].backend == a_brk,
        what="traffic to return to A",
    )
    assert [t.status for t in back] == [200] * len(back)
    assert circuit_open(port, a_brk) == 0
    after = [chat(port, model) for _ in range(5)]
    assert [(t.status, t.backend, t.attempts) for t in after] == [(200, a_brk, 1)] * 5


def test_a_request_with_its_deadline_spent_does_not_wedge_a_half_open_circuit(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    """Past the cool-down, the first request to reach an open circuit takes its one
    half-open probe. If that request's own deadline is already spent, it never calls
    the backend; the probe must be given back (no verdict), or no other request is
    ever let through again and the backend stays cut off although it is healthy."""
    port = gateway.port
    control_fake_vendor(vendors.a, error_rate=1.0, error_kind="500")
    wait_for(
        lambda: chat(port, "probe").status == 200 and circuit_open(port, "a-probe") == 1,
        what="the circuit to open",
    )
    reset_fake_vendor(vendors.a)  # A is healthy again
    opened_at = time.monotonic()
    # Requests whose deadline is spent on arrival, for longer than the cool-down.
    while time.monotonic() - opened_at < 3 * COOLDOWN_MS / 1000:
        spent = chat(port, "probe", headers={"x-request-timeout-ms": "0.001"})
        assert spent.status == 504
    assert received(vendors.a) == 0  # none of them reached A
    deadline = time.monotonic() + 5.0  # a dozen cool-downs
    while (reply := chat(port, "probe")).backend != "a-probe":
        assert reply.status == 200
        if time.monotonic() > deadline:
            state = json.loads(admin(port, "/admin/config", method="GET").body)["backends"]
            pytest.fail(
                f"no request reached the healthy A for 5 s: a-probe is "
                f"{state['a-probe']['state']}, its probe taken by a request that never "
                f"called it (A received {received(vendors.a)})"
            )
    assert circuit_open(port, "a-probe") == 0


# -- 2. overflow from a small local backend to a vendor --------------------------------------


def test_an_overloaded_local_embedder_overflows_to_the_vendor(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    port = gateway.port
    before = fallbacks(port, "embed-burst", "embedder-local", "b-embed", "overloaded")
    texts = [f"burst text number {i}" for i in range(32)]

    def embed(text: str) -> Reply:
        return post(
            port,
            EMBEDDINGS,
            json.dumps({"model": "embed-burst", "input": [text] * 4}),
            {"content-type": "application/json"},
        )

    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(embed, texts))
    failed = [r.body[:200] for r in replies if r.status != 200]
    assert failed == []
    by = [r.headers["x-gateway-backend"] for r in replies]
    assert "embedder-local" in by and "b-embed" in by, by
    overflowed = by.count("b-embed")
    assert (
        fallbacks(port, "embed-burst", "embedder-local", "b-embed", "overloaded")
        == before + overflowed
    )
    assert received(vendors.b, EMBEDDINGS) == overflowed
    for text, reply in zip(texts, replies):
        vectors = np.array([d["embedding"] for d in json.loads(reply.body)["data"]], np.float32)
        assert vectors.shape == (4, 384)
        if reply.headers["x-gateway-backend"] == "b-embed":
            np.testing.assert_allclose(vectors[0], embedding_vector(text, 384), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # Our own full queue says nothing about the embedder's health.
    assert circuit_open(port, "embedder-local") == 0


# -- 3. invalid input never falls back; one call per request --------------------------------


def test_a_request_the_vendor_refuses_as_invalid_is_not_sent_to_b(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    port = gateway.port
    before = fallbacks(port, "fallback", "a-chat", "b-chat", "error")
    refused = chat(port, "fallback", stop=5)  # the vendor wants a string or a list of strings
    assert refused.status == 400, refused.reply.body
    assert "stop" in json.loads(refused.reply.body)["error"]["message"]
    assert (received(vendors.a), received(vendors.b)) == (1, 0)
    assert fallbacks(port, "fallback", "a-chat", "b-chat", "error") == before


def test_a_request_the_gateway_refuses_reaches_no_vendor(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    port = gateway.port
    reply = post(
        port,
        CHAT,
        json.dumps({"model": "fallback", "messages": []}),
        {"content-type": "application/json"},
    )
    assert reply.status == 400
    assert (received(vendors.a), received(vendors.b)) == (0, 0)


def test_invalid_requests_do_not_count_against_the_circuit(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    port = gateway.port
    for _ in range(6):  # twice consecutive_failures
        assert chat(port, "breaker-invalid", stop=5).status == 400
    assert circuit_open(port, "a-brk-invalid") == 0
    assert chat(port, "breaker-invalid").backend == "a-brk-invalid"
    assert received(vendors.b) == 0


@pytest.mark.parametrize("kind", ["500", "429", "garbage", "cut_stream"])
def test_a_failed_call_is_sent_once_to_each_backend(
    gateway: GatewayProcess, vendors: Vendors, kind: str
) -> None:
    port = gateway.port
    control_fake_vendor(vendors.a, error_rate=1.0, error_kind=kind)
    replies = [chat(port, "fallback", f"question {i}") for i in range(4)]
    assert [(t.status, t.backend, t.attempts) for t in replies] == [(200, "b-chat", 2)] * 4
    assert answer_text(replies[0]).startswith("echo: question 0")
    assert (received(vendors.a), received(vendors.b)) == (4, 4)


# -- 4. hedging --------------------------------------------------------------------------------


def test_a_hedged_request_is_answered_by_the_fast_backend(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    port = gateway.port
    control_fake_vendor(vendors.a, latency_ms=400)
    before = value(
        port, "gateway_hedges_total", model="hedged", from_backend="a-chat", to_backend="b-chat"
    )
    a_cancelled = backend_attempts(port, "hedged", "a-chat", "cancelled")
    a_answered = backend_attempts(port, "hedged", "a-chat", "ok")
    hedged = chat(port, "hedged")
    assert hedged.status == 200 and hedged.backend == "b-chat"
    assert (
        value(
            port, "gateway_hedges_total", model="hedged", from_backend="a-chat", to_backend="b-chat"
        )
        == before + 1
    )
    assert received(vendors.b) == 1
    # B's answer did not wait for A's: the call to A was cancelled once B had
    # answered, never answered.
    wait_for(
        lambda: backend_attempts(port, "hedged", "a-chat", "cancelled") == a_cancelled + 1,
        what="the call to A to be cancelled",
    )
    assert backend_attempts(port, "hedged", "a-chat", "ok") == a_answered
    # Without hedging, the same call waits for A.
    plain = chat(port, "fallback")
    assert plain.status == 200 and plain.backend == "a-chat"
    assert plain.elapsed_s >= 0.4
    assert received(vendors.b) == 1


def test_a_fast_answer_is_not_hedged(gateway: GatewayProcess, vendors: Vendors) -> None:
    port = gateway.port
    before = value(
        port, "gateway_hedges_total", model="hedged", from_backend="a-chat", to_backend="b-chat"
    )
    assert [chat(port, "hedged").backend for _ in range(3)] == ["a-chat"] * 3
    assert (
        value(
            port, "gateway_hedges_total", model="hedged", from_backend="a-chat", to_backend="b-chat"
        )
        == before
    )
    assert received(vendors.b) == 0


def test_a_failing_hedge_does_not_fail_the_request(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    port = gateway.port
    control_fake_vendor(vendors.a, latency_ms=300)
    control_fake_vendor(vendors.b, error_rate=1.0, error_kind="500")
    reply = chat(port, "hedged")
    assert (reply.status, reply.backend) == (200, "a-chat")
    assert (received(vendors.a), received(vendors.b)) == (1, 1)


def test_when_both_hedged_calls_fail_neither_backend_is_called_again(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    """A hedged pair that both fail has called each backend once; the route then
    has no backend left to try. Calling B a second time would send a
    non-idempotent request twice (and cost twice)."""
    port = gateway.port
    # A fails after the hedge delay, B fails after A: both calls were made once.
    control_fake_vendor(vendors.a, latency_ms=150, error_rate=1.0, error_kind="500")
    control_fake_vendor(vendors.b, latency_ms=300, error_rate=1.0, error_kind="500")
    reply = chat(port, "hedged")
    assert reply.status == 502, reply.reply.body
    assert (received(vendors.a), received(vendors.b)) == (1, 1)


# -- 5. weighted and sticky ----------------------------------------------------------------


def test_a_sticky_header_keeps_one_caller_on_one_variant(gateway: GatewayProcess) -> None:
    port = gateway.port
    for user in ("user-1", "user-2"):
        seen = {chat(port, "sticky", headers={"x-user-id": user}).backend for _ in range(20)}
        assert len(seen) == 1, (user, seen)
    picks = {}
    for i in range(40):
        reply = chat(port, "sticky", headers={"x-user-id": f"customer-{i}"})
        assert reply.status == 200
        picks[f"customer-{i}"] = reply.backend
    assert set(picks.values()) == {"a-chat", "b-chat"}, picks
    assert 8 <= list(picks.values()).count("a-chat") <= 32  # about half each
    # The same ids again: the same variants.
    again = {user: chat(port, "sticky", headers={"x-user-id": user}).backend for user in picks}
    assert again == picks


# -- 6. shadow traffic ----------------------------------------------------------------------


def digits_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, size=(n, 64)).astype(np.float32)


def infer(port: int, model: str, rows: np.ndarray) -> np.ndarray:
    reply = post(
        port,
        f"/v2/models/{model}/infer",
        tensor_json("pixels", "FP32", list(rows.shape), rows.ravel().tolist()),
        {"content-type": "application/json"},
    )
    assert reply.status == 200, reply.body
    output = json.loads(reply.body)["outputs"][0]
    return np.array(output["data"], np.float32).reshape(output["shape"])


def shadowed(port: int, model: str, backend: str, result: str) -> float:
    return value(port, "gateway_shadow_requests_total", model=model, backend=backend, result=result)


@pytest.fixture(scope="module")
def digits_session() -> ort.InferenceSession:
    return ort.InferenceSession(str(DIGITS_MODEL), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "model, shadow, result",
    [
        ("shadow-copy", "digits-copy", "agree"),
        ("shadow-other", "digits-other", "disagree"),
        ("shadow-lazy", "digits-lazy", "agree"),
    ],
)
def test_shadow_traffic_is_compared_and_never_changes_the_answer(
    gateway: GatewayProcess,
    digits_session: ort.InferenceSession,
    model: str,
    shadow: str,
    result: str,
) -> None:
    port = gateway.port
    results = ("agree", "disagree", "error", "skipped")
    before = {r: shadowed(port, model, shadow, r) for r in results}
    requests = 5
    for i in range(requests):
        rows = digits_rows(2, seed=i)
        served = infer(port, model, rows)
        (expected,) = digits_session.run(["probabilities"], {"pixels": rows})
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-7)  # the primary's
        if shadow == "digits-lazy":
            # The lazy shadow waits up to a second for batch-mates; the caller does
            # not wait for it: its answer came before its shadow's result.
            compared = sum(shadowed(port, model, shadow, r) - before[r] for r in results)
            assert compared <= i, (i, compared)
    wait_for(
        lambda: shadowed(port, model, shadow, result) == before[result] + requests,
        what=f"{requests} '{result}' shadow results",
    )
    for other in {"agree", "disagree", "error", "skipped"} - {result}:
        assert shadowed(port, model, shadow, other) == before[other]


# -- 7. the kill switch ------------------------------------------------------------------


def test_the_kill_switch_moves_traffic_off_a_backend_and_back(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    port = gateway.port
    before = fallbacks(port, "fallback", "a-chat", "b-chat", "disabled")
    disabled = admin(port, "/admin/backends/a-chat/disable")
    assert disabled.status == 200, disabled.body
    try:
        config = json.loads(admin(port, "/admin/config", method="GET").body)
        assert config["backends"]["a-chat"]["enabled"] is False
        replies = [chat(port, "fallback") for _ in range(5)]
        assert [(t.status, t.backend, t.attempts) for t in replies] == [(200, "b-chat", 1)] * 5
        assert received(vendors.a) == 0
        assert fallbacks(port, "fallback", "a-chat", "b-chat", "disabled") == before + 5
    finally:
        enabled = admin(port, "/admin/backends/a-chat/enable")
    assert enabled.status == 200, enabled.body
    assert (
        json.loads(admin(port, "/admin/config", method="GET").body)["backends"]["a-chat"]["enabled"]
        is True
    )
    assert [chat(port, "fallback").backend for _ in range(3)] == ["a-chat"] * 3
    assert received(vendors.b) == 5


def test_the_kill_switch_names_only_configured_backends(gateway: GatewayProcess) -> None:
    for action in ("disable", "enable"):
        reply = admin(gateway.port, f"/admin/backends/no-such-backend/{action}")
        assert reply.status == 404
        assert "no-such-backend" in reply.error and "a-chat" in reply.error


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_admin_endpoints_need_the_admin_key(
    gateway: GatewayProcess, vendors: Vendors, key: str | None
) -> None:
    port = gateway.port
    for method, path in [
        ("GET", "/admin/config"),
        ("POST", "/admin/reload"),
        ("POST", "/admin/rollback"),
        ("POST", "/admin/backends/a-chat/disable"),
        ("POST", "/admin/backends/a-chat/enable"),
    ]:
        reply = admin(port, path, key=key, method=method)
        assert reply.status == 401, (path, reply.status, reply.body)
        assert "admin key" in reply.error
    # Nothing was switched off, and /metrics stays open to scrapers.
    assert chat(port, "fallback").backend == "a-chat"
    assert admin(port, "/metrics", key=None, method="GET").status == 200
