"""Queues, slots, deadlines, shedding and dynamic batching, observed from outside:
real HTTP against a gateway process, executions counted by its /metrics (as
deltas: the gateway serves the whole module). "At once" is checked by the order
of events (answered while the long execution still holds the slot), never by
a measured duration."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from tests.api.http_helpers import Reply, post
from tests.conftest import DIGITS_MODEL, GatewayProcess, start_gateway
from tests.metrics_reader import value
from tests.onnx_models import rows_lasting, slow_model

WIDTH = 256
LONG_RUN_S = 1.5  # how long the "long batch" holds the only execution slot
SIGNATURE_DIGITS = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
}


def digits_backend(**extra: object) -> dict:
    return {
        "type": "onnx",
        "path": str(DIGITS_MODEL),
        "max_concurrency": 1,
        "intra_op_threads": 1,
        **extra,
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, int]]:
    workdir = tmp_path_factory.mktemp("limits")
    path = slow_model(workdir / "slow.onnx", WIDTH)
    long_rows = rows_lasting(path, WIDTH, LONG_RUN_S)  # calibrated on this machine
    config = {
        "server": {"max_request_bytes": 64 << 20},
        "backends": {
            "slow": {
                "type": "onnx",
                "path": str(path),
                "max_concurrency": 1,
                "max_queue": 1,
                "intra_op_threads": 1,
                "timeout_ms": 60000,
            },
            "budget": {
                "type": "onnx",
                "path": str(path),
                "max_concurrency": 1,
                "max_queue": 8,
                "max_queue_wait_ms": 100,
                "intra_op_threads": 1,
                "timeout_ms": 60000,
            },
            "batch4": digits_backend(
                batching={"max_batch_size": 4, "max_queue_delay_us": 5_000_000}
            ),
            "lone": digits_backend(batching={"max_batch_size": 64, "max_queue_delay_us": 300_000}),
        },
        "models": {
            "slow": {
                "signature": {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, WIDTH]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, WIDTH]}],
                },
                "route": {"backends": ["slow"]},
            },
            "budget": {
                "signature": {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, WIDTH]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, WIDTH]}],
                },
                "route": {"backends": ["budget"]},
            },
            "batch4": {"signature": SIGNATURE_DIGITS, "route": {"backends": ["batch4"]}},
            "lone": {"signature": SIGNATURE_DIGITS, "route": {"backends": ["lone"]}},
        },
    }
    process = start_gateway(config, workdir)
    yield process, long_rows
    process.stop()


def binary_infer(
    port: int, model: str, name: str, array: np.ndarray, headers: dict[str, str] | None = None
) -> Reply:
    raw = array.astype(np.float32).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return post(
        port,
        f"/v2/models/{model}/infer",
        head + raw,
        {"Inference-Header-Content-Length": str(len(head)), **(headers or {})},
    )


def outputs_of(reply: Reply, name: str, width: int) -> np.ndarray:
    doc = json.loads(reply.body)
    return np.array(doc["outputs"][0]["data"], np.float32).reshape(-1, width)


def wait_for(condition, timeout_s: float = 30.0) -> None:
    """Poll a condition over HTTP (each check is a round trip, no sleeping)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"


def executions(port: int, backend: str) -> tuple[float, float]:
    """(batches executed, rows executed) on a backend."""
    return (
        value(port, "gateway_batch_size_count", backend=backend),
        value(port, "gateway_batch_size_sum", backend=backend),
    )


class LongRun:
    """Occupies the slow backend's only slot for about LONG_RUN_S."""

    def __init__(self, port: int, rows: int, model: str = "slow") -> None:
        self.port = port
        self.model = model
        self.reply: Reply | None = None
        self.thread = threading.Thread(
            target=self._run, args=(np.ones((rows, WIDTH), np.float32),), daemon=True
        )

    def _run(self, x: np.ndarray) -> None:
        self.reply = binary_infer(self.port, self.model, "x", x)

    def __enter__(self) -> LongRun:
        self.thread.start()
        wait_for(lambda: value(self.port, "gateway_inflight_requests", backend=self.model) == 1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=120)
        assert self.reply is not None and self.reply.status == 200


def test_batches_form_up_to_the_size_limit_and_match_unbatched_outputs(gateway) -> None:
    process, _ = gateway
    rows = np.random.default_rng(1).integers(0, 17, size=(8, 64)).astype(np.float32)

    def small_batches() -> float:  # executions of at most 2 rows
        return value(process.port, "gateway_batch_size_bucket", backend="batch4", le="2.0")

    before = executions(process.port, "batch4")
    small_before = small_batches()
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(lambda r: binary_infer(process.port, "batch4", "pixels", r[None]), rows)
        )
    assert [r.status for r in replies] == [200] * 8
    batches, executed_rows = (a - b for a, b in zip(executions(process.port, "batch4"), before))
    assert (batches, executed_rows) == (2, 8)  # two full batches of 4, not 8 single runs
    assert small_batches() == small_before
    session = ort.InferenceSession(str(DIGITS_MODEL), providers=["CPUExecutionProvider"])
    for row, reply in zip(rows, replies):
        (alone,) = session.run(["probabilities"], {"pixels": row[None]})
        np.testing.assert_allclose(
            outputs_of(reply, "probabilities", 10), alone, rtol=1e-5, atol=1e-7
        )


def test_a_request_alone_is_released_after_the_queue_delay(gateway) -> None:
    process, _ = gateway
    before = executions(process.port, "lone")
    started = time.monotonic()
    reply = binary_infer(process.port, "lone", "pixels", np.ones((1, 64)))
    elapsed = time.monotonic() - started
    assert reply.status == 200
    assert elapsed >= 0.3  # it waited for batch-mates up to max_queue_delay_us...
    after = executions(process.port, "lone")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)  # ...then ran alone


def test_a_full_queue_sheds_at_once_with_retry_after(gateway) -> None:
    process, rows = gateway
    shed_before = value(process.port, "gateway_shed_total", backend="slow", reason="queue_full")
    with LongRun(process.port, rows) as run:
        queued: list[Reply] = []
        waiter = threading.Thread(
            target=lambda: queued.append(
                binary_infer(process.port, "slow", "x", np.ones((1, WIDTH)))
            )
        )
        waiter.start()
        wait_for(lambda: value(process.port, "gateway_queued_requests", backend="slow") == 1)
        refused = binary_infer(process.port, "slow", "x", np.ones((1, WIDTH)))
        assert run.reply is None  # the long execution is still running
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        assert "max_queue 1" in refused.error and "'slow'" in refused.error
        waiter.join(timeout=120)
    assert queued[0].status == 200  # the one that fitted in the queue was served
    assert (
        value(process.port, "gateway_shed_total", backend="slow", reason="queue_full")
        == shed_before + 1
    )


def test_a_queued_request_whose_deadline_passes_gets_504_at_its_deadline_and_never_runs(
    gateway,
) -> None:
    process, rows = gateway
    shed_before = value(process.port, "gateway_shed_total", backend="slow", reason="deadline")
    with LongRun(process.port, rows) as run:
        batches_before, rows_before = executions(process.port, "slow")
        started = time.monotonic()
        reply = binary_infer(
            process.port, "slow", "x", np.ones((3, WIDTH)), {"x-request-timeout-ms": "200"}
        )
        elapsed = time.monotonic() - started
        assert reply.status == 504
        assert "not executed" in reply.error
        assert run.reply is None  # answered while the long execution still runs...
        assert elapsed >= 0.2  # ...and not before its deadline
    batches_after, rows_after = executions(process.port, "slow")
    # Only the long run executed after the expired request was queued: it never ran.
    assert (batches_after - batches_before, rows_after - rows_before) == (0, 0)
    assert (
        value(process.port, "gateway_shed_total", backend="slow", reason="deadline")
        == shed_before + 1
    )
    assert value(process.port, "gateway_queued_requests", backend="slow") == 0


def test_a_disconnected_callers_queued_work_is_dropped(gateway) -> None:
    process, rows = gateway
    cancelled_before = value(process.port, "gateway_shed_total", backend="slow", reason="cancelled")
    with LongRun(process.port, rows):
        batches_before, rows_before = executions(process.port, "slow")
        raw = np.ones((5, WIDTH), np.float32).tobytes()
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [5, WIDTH],
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ]
            }
        ).encode()
        request = (
            (
                f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {len(head) + len(raw)}\r\n"
                f"Inference-Header-Content-Length: {len(head)}\r\n\r\n"
            ).encode()
            + head
            + raw
        )
        with socket.create_connection(("127.0.0.1", process.port)) as sock:
            sock.sendall(request)
            wait_for(lambda: value(process.port, "gateway_queued_requests", backend="slow") == 1)
        # The socket is closed: the gateway notices and drops the queued work.
        wait_for(
            lambda: (
                value(process.port, "gateway_shed_total", backend="slow", reason="cancelled")
                == cancelled_before + 1
            )
        )
    batches_after, rows_after = executions(process.port, "slow")
    assert (batches_after - batches_before, rows_after - rows_before) == (0, 0)


def test_a_request_that_would_wait_past_max_queue_wait_ms_is_shed_at_once(gateway) -> None:
    process, rows = gateway

    def shed(reason: str) -> float:
        return value(process.port, "gateway_shed_total", backend="budget", reason=reason)

    # The first long run teaches the backend how long one execution takes.
    with LongRun(process.port, rows, "budget"):
        pass
    before = {reason: shed(reason) for reason in ("queue_wait", "deadline", "queue_full")}
    with LongRun(process.port, rows, "budget") as run:
        refused = binary_infer(process.port, "budget", "x", np.ones((1, WIDTH)))
        assert run.reply is None  # refused while the long execution still runs...
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        assert "max_queue_wait_ms 100" in refused.error and "'budget'" in refused.error
        # ...at once, on the estimate of its wait: not after waiting in the queue
        # (that would be shed as "deadline") nor for a full queue.
        assert {reason: shed(reason) - before[reason] for reason in before} == {
            "queue_wait": 1,
            "deadline": 0,
            "queue_full": 0,
        }
    # Nothing queued behind the long run: the next request starts at once and is served.
    assert binary_infer(process.port, "budget", "x", np.ones((1, WIDTH))).status == 200
    assert shed("queue_wait") == before["queue_wait"] + 1
    assert value(process.port, "gateway_queued_requests", backend="budget") == 0
