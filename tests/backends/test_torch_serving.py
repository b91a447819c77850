"""End to end: `gateway serve` with a config whose models are served by torch
backends (a TorchScript artifact, alone and behind dynamic batching), called
over KServe v2 HTTP with JSON and binary tensors; answers compared with the
eager module's. (torch.export artifacts, which load the same way, are served
through the runtime in test_torch_backend.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.api.http_helpers import post
from tests.conftest import GatewayProcess, start_gateway
from tests.torch_support import (
    AFFINE_INPUTS,
    AFFINE_OUTPUTS,
    affine,
    require_torch,
    save_torchscript,
)

torch = require_torch()

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

SIGNATURE = {"inputs": AFFINE_INPUTS, "outputs": AFFINE_OUTPUTS}


def torch_backend(path: Path, **keys: Any) -> dict[str, Any]:
    return {
        "type": "torch",
        "path": str(path),
        "inputs": AFFINE_INPUTS,
        "outputs": AFFINE_OUTPUTS,
        "max_concurrency": 1,
        "intra_op_threads": 1,
        "timeout_ms": 5000,
        **keys,
    }


@pytest.fixture(scope="module")
def eager() -> Any:
    return affine(torch)


@pytest.fixture(scope="module")
def gateway(eager: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    where = tmp_path_factory.mktemp("torch-serving")
    scripted = save_torchscript(torch, eager, where / "affine.pt")
    config = {
        "backends": {
            "affine-script": torch_backend(scripted),
            "affine-batching": torch_backend(
                scripted, batching={"max_batch_size": 8, "max_queue_delay_us": 0}
            ),
        },
        "models": {
            "affine": {"signature": SIGNATURE, "route": {"backends": ["affine-script"]}},
            "affine-batched": {"signature": SIGNATURE, "route": {"backends": ["affine-batching"]}},
        },
    }
    served = start_gateway(config, where)
    yield served
    alive_until_the_end = served.process.poll() is None
    served.stop()
    assert alive_until_the_end, f"the gateway died during the tests:\n{served.logs()}"


def inputs(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((rows, 4)).astype(np.float32),
        "shift": rng.standard_normal((rows, 3)).astype(np.float32),
    }


def eager_answer(eager: Any, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        y, label = eager(torch.from_numpy(tensors["x"]), torch.from_numpy(tensors["shift"]))
    return {"y": y.numpy(), "label": label.numpy()}


def infer_binary(gateway: GatewayProcess, model: str, tensors: dict[str, np.ndarray]) -> Any:
    client = httpclient.InferenceServerClient(gateway.url)
    sent = []
    for name, value in tensors.items():
        tensor = httpclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value, binary_data=True)
        sent.append(tensor)
    wanted = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("y", "label")]
    result = client.infer(model, sent, outputs=wanted)
    client.close()
    return {name: result.as_numpy(name) for name in ("y", "label")}


def test_metadata_shows_the_signature(gateway: GatewayProcess) -> None:
    client = httpclient.InferenceServerClient(gateway.url)
    assert client.is_model_ready("affine")
    meta = client.get_model_metadata("affine")
    assert meta["inputs"] == AFFINE_INPUTS and meta["outputs"] == AFFINE_OUTPUTS


def test_json_tensors_answer_as_the_eager_module(gateway: GatewayProcess, eager: Any) -> None:
    tensors = inputs(3, seed=1)
    body = {
        "inputs": [
            {"name": name, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
            for name, v in tensors.items()
        ]
    }
    reply = post(gateway.port, "/v2/models/affine/infer", json.dumps(body))
    assert reply.status == 200, reply.body
    assert reply.headers["x-gateway-backend"] == "affine-script"
    expected = eager_answer(eager, tensors)
    outputs = {o["name"]: o for o in json.loads(reply.body)["outputs"]}
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [3]
    np.testing.assert_array_equal(outputs["label"]["data"], expected["label"])
    assert outputs["y"]["datatype"] == "FP32" and outputs["y"]["shape"] == [3, 3]
    np.testing.assert_allclose(
        np.array(outputs["y"]["data"], np.float32).reshape(3, 3), expected["y"], rtol=1e-6
    )


@pytest.mark.parametrize("model", ["affine", "affine-batched"])
def test_binary_tensors_answer_as_the_eager_module(
    gateway: GatewayProcess, eager: Any, model: str
) -> None:
    tensors = inputs(5, seed=2)
    answer = infer_binary(gateway, model, tensors)
    expected = eager_answer(eager, tensors)
    np.testing.assert_array_equal(answer["label"], expected["label"])
    np.testing.assert_allclose(answer["y"], expected["y"], rtol=1e-6, atol=1e-6)


def test_concurrent_callers_of_a_batching_model_each_get_their_own_rows(
    gateway: GatewayProcess, eager: Any
) -> None:
    requests = [inputs(rows, seed) for seed, rows in enumerate((1, 2, 3, 1, 2, 1))]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda t: infer_binary(gateway, "affine-batched", t), requests))
    for tensors, answer in zip(requests, answers):
        expected = eager_answer(eager, tensors)
        np.testing.assert_array_equal(answer["label"], expected["label"])
        np.testing.assert_allclose(answer["y"], expected["y"], rtol=1e-6, atol=1e-6)


def test_a_request_outside_the_signature_is_refused_before_torch(gateway: GatewayProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [0.0] * 5}]}
    reply = post(gateway.port, "/v2/models/affine/infer", json.dumps(body))
    assert reply.status == 400
    assert "input 'x': expected FP32 [-1,4], got FP32 [1,5]" in reply.error
