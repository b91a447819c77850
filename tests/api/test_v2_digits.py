"""The digits model through the KServe v2 HTTP surface, with tritonclient.http."""

from __future__ import annotations

import http.client
import json

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from tests.conftest import DIGITS_MODEL, GatewayProcess


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    # The split model.yaml records: 20% stratified, random_state 0.
    data = load_digits()
    _, x_test, _, y_test = train_test_split(
        data.data, data.target, test_size=0.2, stratify=data.target, random_state=0
    )
    return x_test.astype(np.float32), y_test


@pytest.fixture(scope="module")
def direct_session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(DIGITS_MODEL), options, providers=["CPUExecutionProvider"])


@pytest.fixture()
def client(digits_gateway: GatewayProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(digits_gateway.url)


def get(gateway: GatewayProcess, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def infer(client: httpclient.InferenceServerClient, pixels: np.ndarray, binary: bool, **kw):
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    return client.infer("digits", [tensor], outputs=outputs, **kw)


def test_health_and_metadata_show_the_signature(digits_gateway, client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "2")
    meta = client.get_model_metadata("digits")
    assert meta["name"] == "digits" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert get(digits_gateway, "/v2/models/digits/versions/1") == (200, meta)
    status, server = get(digits_gateway, "/v2")
    assert status == 200 and "binary_tensor_data" in server["extensions"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_held_out_digits_are_classified_like_a_direct_onnxruntime_run(
    client, held_out, direct_session, binary
) -> None:
    x_test, y_test = held_out
    result = infer(client, x_test, binary)
    probabilities = result.as_numpy("probabilities")
    (expected,) = direct_session.run(["probabilities"], {"pixels": x_test})
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(x_test), 10)
    np.testing.assert_array_equal(probabilities, expected)
    accuracy = float((probabilities.argmax(axis=1) == y_test).mean())
    assert accuracy >= 0.90, accuracy


def test_single_samples_and_versioned_requests_agree(client, held_out, direct_session) -> None:
    x_test, _ = held_out
    for row in x_test[:5]:
        sample = row.reshape(1, 64)
        unversioned = infer(client, sample, True).as_numpy("probabilities")
        versioned = infer(client, sample, False, model_version="1").as_numpy("probabilities")
        (expected,) = direct_session.run(["probabilities"], {"pixels": sample})
        np.testing.assert_array_equal(unversioned, expected)
        np.testing.assert_allclose(versioned, expected, rtol=1e-6)


def test_request_id_is_echoed_and_gateway_headers_are_set(digits_gateway, held_out) -> None:
    body = json.dumps(
        {
            "id": "req-42",
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "FP32",
                    "shape": [1, 64],
                    "data": held_out[0][0].tolist(),
                }
            ],
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", digits_gateway.port, timeout=10)
    conn.request("POST", "/v2/models/digits/infer", body, {"x-request-id": "trace-me"})
    response = conn.getresponse()
    doc = json.loads(response.read())
    assert response.status == 200
    assert doc["id"] == "req-42" and doc["model_name"] == "digits" and doc["model_version"] == "1"
    assert doc["outputs"][0]["shape"] == [1, 10]
    assert abs(sum(doc["outputs"][0]["data"]) - 1.0) < 1e-4
    assert response.getheader("x-request-id") == "trace-me"
    assert response.getheader("x-gateway-backend") == "digits-cpu"
    assert response.getheader("x-gateway-attempts") == "1"
    assert float(response.getheader("x-gateway-overhead-ms")) >= 0.0
