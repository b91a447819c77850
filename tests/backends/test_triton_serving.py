"""Gateway -> Triton end to end: real gateway processes in front of a real
Triton server (PyTriton), called with JSON, tritonclient.http (binary tensors)
and tritonclient.grpc; Triton killed under load; a caller's deadline reaching
Triton's queue."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.datasets import load_digits

from testkit.gateway_process import GatewayProcess, free_port, start_gateway
from testkit.triton_process import TritonProcess, start_triton
from tests.api.http_helpers import post, tensor_json
from tests.conftest import DIGITS_MODEL
from tests.metrics_reader import value
from tests.triton_configs import (
    DIGITS_SIGNATURE,
    SLOW_SIGNATURE,
    gateway_config,
    local_digits,
    triton_backend,
)

PIXELS = load_digits().data.astype(np.float32)
LABELS = load_digits().target


def _local_answer(pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(DIGITS_MODEL), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probabilities"], {"pixels": pixels})[0])


@pytest.fixture(scope="module")
def gateway(
    triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, int]]:
    config = gateway_config({"t-digits": triton_backend(triton.grpc_url)}, route=["t-digits"])
    config["backends"]["t-slow-grpc"] = triton_backend(triton.grpc_url, model="slow")
    config["backends"]["t-slow-http"] = triton_backend(
        triton.http_url, model="slow", protocol="http"
    )
    for protocol in ("grpc", "http"):
        config["models"][f"slow-{protocol}"] = {
            "signature": SLOW_SIGNATURE,
            "route": {"backends": [f"t-slow-{protocol}"]},
        }
    grpc_port = free_port()
    server = start_gateway(
        config, tmp_path_factory.mktemp("gateway-triton"), "--grpc-port", str(grpc_port)
    )
    yield server, grpc_port
    server.stop()


def test_json_binary_and_grpc_callers_get_tritons_answers(
    gateway: tuple[GatewayProcess, int],
) -> None:
    server, grpc_port = gateway
    pixels = PIXELS[:8]
    expected = _local_answer(pixels)
    before = value(
        server.port,
        "gateway_backend_duration_seconds_count",
        model="digits",
        backend="t-digits",
        outcome="ok",
    )

    reply = post(
        server.port,
        "/v2/models/digits/infer",
        tensor_json("pixels", "FP32", [8, 64], pixels.ravel().tolist()),
        {"content-type": "application/json"},
    )
    assert reply.status == 200, reply.body
    (output,) = json.loads(reply.body)["outputs"]
    from_json = np.asarray(output["data"], np.float32).reshape(output["shape"])

    http = httpclient.InferenceServerClient(server.url)
    tensor = httpclient.InferInput("pixels", [8, 64], "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
    from_binary = http.infer("digits", [tensor], outputs=wanted).as_numpy("probabilities")
    http.close()

    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    tensor = grpcclient.InferInput("pixels", [8, 64], "FP32")
    tensor.set_data_from_numpy(pixels)
    from_grpc = grpc.infer("digits", [tensor]).as_numpy("probabilities")
    grpc.close()

    for answer in (from_json, from_binary, from_grpc):
        np.testing.assert_allclose(answer, expected, rtol=1e-6, atol=1e-7)
        assert list(answer.argmax(axis=1)) == list(LABELS[:8])
    after = value(
        server.port,
        "gateway_backend_duration_seconds_count",
        model="digits",
        backend="t-digits",
        outcome="ok",
    )
    assert after - before == 3


def _history(triton: TritonProcess) -> list[float]:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    ask = grpcclient.InferInput("ask", [1], "FP32")
    ask.set_data_from_numpy(np.zeros(1, np.float32))
    markers = client.infer("history", [ask]).as_numpy("markers")
    client.close()
    return [float(m) for m in markers]


def _slow_inputs(seconds: float, marker: float) -> list[grpcclient.InferInput]:
    inputs = []
    for name, number in (("seconds", seconds), ("marker", marker)):
        tensor = grpcclient.InferInput(name, [1, 1], "FP32")
        tensor.set_data_from_numpy(np.full((1, 1), number, np.float32))
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_callers_deadline_reaches_tritons_queue(
    gateway: tuple[GatewayProcess, int], triton: TritonProcess, protocol: str
) -> None:
    """`slow` holds a request in its batcher's queue for up to 1.5 s. B comes
    through the gateway with a 300 ms deadline: the gateway answers 504 at the
    deadline, and Triton must drop B rather than run it 1.2 s later. Only the
    request's timeout does that (a gRPC deadline alone leaves B to run), so B
    missing from what Triton ran shows the deadline reached it."""
    server, _ = gateway
    b, c = (102.0, 103.0) if protocol == "grpc" else (202.0, 203.0)
    body = {
        "inputs": [
            {"name": "seconds", "datatype": "FP32", "shape": [1, 1], "data": [0.0]},
            {"name": "marker", "datatype": "FP32", "shape": [1, 1], "data": [b]},
        ]
    }
    started = time.monotonic()
    reply = post(
        server.port,
        f"/v2/models/slow-{protocol}/infer",
        json.dumps(body),
        {"content-type": "application/json", "x-request-timeout-ms": "300"},
    )
    assert reply.status == 504, reply.body
    assert time.monotonic() - started < 1.2  # at its deadline, not when Triton's queue let go

    # C goes straight to Triton after B; it runs when the queue lets go of B.
    direct = grpcclient.InferenceServerClient(triton.grpc_url)
    assert direct.infer("slow", _slow_inputs(0.0, c)).as_numpy("marker")[0, 0] == c
    direct.close()
    history = _history(triton)
    assert c in history
    assert b not in history, f"B ({b}) ran in Triton after its caller's deadline: {history}"


def test_triton_killed_under_load_falls_back_to_the_local_model_without_a_failure(
    tmp_path: Path,
) -> None:
    triton = start_triton()
    config = gateway_config(
        {"triton-digits": triton_backend(triton.grpc_url), "digits-cpu": local_digits()},
        route=["triton-digits", "digits-cpu"],
        signature=DIGITS_SIGNATURE,
    )
    server = start_gateway(config, tmp_path)
    try:
        statuses, wrong = asyncio.run(_load_while_killing(server.port, triton))
        served = {
            backend: value(
                server.port,
                "gateway_backend_duration_seconds_count",
                model="digits",
                backend=backend,
                outcome="ok",
            )
            for backend in ("triton-digits", "digits-cpu")
        }
        fallbacks = value(
            server.port,
            "gateway_fallbacks_total",
            model="digits",
            from_backend="triton-digits",
            to_backend="digits-cpu",
            reason="connection",
        )
    finally:
        server.stop()
        triton.stop()
    assert statuses == {200: sum(statuses.values())}, statuses
    assert wrong == 0
    assert served["triton-digits"] >= 100 and served["digits-cpu"] >= 200, served
    assert fallbacks >= 1


async def _load_while_killing(port: int, triton: TritonProcess) -> tuple[dict[int, int], int]:
    """Eight callers in a loop; Triton is killed after 100 answers; the load goes
    on until 300 more answers came after the kill."""
    statuses: dict[int, int] = {}
    wrong = 0
    answered = 0
    killed_at: int | None = None
    url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
    expected = _local_answer(PIXELS).argmax(axis=1)
    loop = asyncio.get_running_loop()

    async def caller(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal answered, wrong, killed_at
        i = offset
        while killed_at is None or answered < killed_at + 300:
            row = i % len(PIXELS)
            body = {
                "inputs": [
                    {
                        "name": "pixels",
                        "datatype": "FP32",
                        "shape": [1, 64],
                        "data": PIXELS[row].tolist(),
                    }
                ]
            }
            async with session.post(url, json=body) as response:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200:
                    data = (await response.json())["outputs"][0]["data"]
                    wrong += int(np.argmax(data)) != expected[row]
            answered += 1
            i += 8
            if answered == 100 and killed_at is None:
                killed_at = answered
                await loop.run_in_executor(None, triton.kill)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(caller(session, k) for k in range(8)))
    return statuses, wrong
