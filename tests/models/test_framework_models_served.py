"""The framework models of test_framework_parity.MODELS are served by
config/gateway.yaml (what `make run` serves) under the signature their build
wrote, and answer over v2 as their framework did.

One real gateway process serves the default config as it is; requests are v2
JSON (http.client) and v2 binary tensors (tritonclient, as callers use it).
The expected answers are the framework's, recorded by the build in parity.npz.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from gateway.core.datatypes import NUMPY_DTYPES
from tests.conftest import ROOT, GatewayProcess, start_gateway
from tests.models.test_framework_parity import FLOAT_DATATYPES, MODELS, manifest, recorded

DEFAULT_CONFIG = ROOT / "config" / "gateway.yaml"
IDS = [f"{n}-{v}" for n, v in MODELS]


@pytest.fixture(scope="module")
def default_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    gateway = start_gateway(config, tmp_path_factory.mktemp("default-gateway"))
    yield gateway
    alive_until_the_end = gateway.process.poll() is None
    gateway.stop()
    assert alive_until_the_end, f"the gateway died during the tests:\n{gateway.logs()}"


def request(
    gateway: GatewayProcess, method: str, path: str, body: Any = None
) -> tuple[int, Any, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body)
        conn.request(method, path, payload, {"content-type": "application/json"})
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, json.loads(response.read()), headers
    finally:
        conn.close()


def assert_answers_as_recorded(name: str, version: int, answers: dict[str, np.ndarray]) -> None:
    """The gateway's outputs against the framework's, within model.yaml's bounds."""
    meta = manifest(name, version)
    parity, arrays = meta["parity"], recorded(name, version)
    for spec in meta["signature"]["outputs"]:
        output = spec["name"]
        if output not in arrays:
            continue
        got, expected = answers[output], arrays[output]
        assert got.shape == expected.shape, output
        if spec["datatype"] in FLOAT_DATATYPES:
            assert np.abs(got.astype(np.float64) - expected).max() <= parity["tolerance"], output
        else:
            assert (got == expected).mean() >= parity["min_label_agreement"], output


@pytest.mark.parametrize(("name", "version"), MODELS, ids=IDS)
def test_the_default_config_declares_the_signature_the_build_wrote(name: str, version: int) -> None:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    model = config["models"][name]
    assert model["version"] == version
    assert model["signature"] == manifest(name, version)["signature"]
    assert model.get("description")
    # Every backend it routes to serves this version's file.
    for backend in model["route"]["backends"]:
        assert config["backends"][backend]["path"] == f"models/{name}/{version}/model.onnx"


@pytest.mark.parametrize(("name", "version"), MODELS, ids=IDS)
def test_metadata_shows_the_signature(
    default_gateway: GatewayProcess, name: str, version: int
) -> None:
    status, metadata, _ = request(default_gateway, "GET", f"/v2/models/{name}")
    assert status == 200, metadata
    signature = manifest(name, version)["signature"]
    assert metadata["name"] == name
    assert metadata["versions"] == [str(version)]
    assert {"inputs": metadata["inputs"], "outputs": metadata["outputs"]} == signature


@pytest.mark.parametrize(("name", "version"), MODELS, ids=IDS)
def test_v2_json_infer_answers_as_the_framework_did(
    default_gateway: GatewayProcess, name: str, version: int
) -> None:
    signature, arrays = manifest(name, version)["signature"], recorded(name, version)
    inputs = [
        {
            "name": spec["name"],
            "datatype": spec["datatype"],
            "shape": list(arrays[spec["name"]].shape),
            "data": arrays[spec["name"]].ravel().tolist(),
        }
        for spec in signature["inputs"]
    ]
    status, reply, headers = request(
        default_gateway, "POST", f"/v2/models/{name}/infer", {"id": name, "inputs": inputs}
    )
    assert status == 200, reply
    assert reply["model_name"] == name and reply["model_version"] == str(version)
    assert headers["x-gateway-backend"] in yaml.safe_load(DEFAULT_CONFIG.read_text())["backends"]
    datatypes = {spec["name"]: spec["datatype"] for spec in signature["outputs"]}
    answers = {}
    for output in reply["outputs"]:
        assert output["datatype"] == datatypes[output["name"]]
        answers[output["name"]] = np.array(output["data"]).reshape(output["shape"])
    assert set(answers) == set(datatypes)  # all outputs when none is asked for
    assert_answers_as_recorded(name, version, answers)


@pytest.mark.parametrize(("name", "version"), MODELS, ids=IDS)
def test_v2_binary_infer_answers_as_the_framework_did(
    default_gateway: GatewayProcess, name: str, version: int
) -> None:
    signature, arrays = manifest(name, version)["signature"], recorded(name, version)
    tensors = []
    for spec in signature["inputs"]:
        array = arrays[spec["name"]]
        tensor = httpclient.InferInput(spec["name"], list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array, binary_data=True)
        tensors.append(tensor)
    wanted = [
        httpclient.InferRequestedOutput(s["name"], binary_data=True) for s in signature["outputs"]
    ]
    with httpclient.InferenceServerClient(default_gateway.url) as client:
        result = client.infer(name, tensors, outputs=wanted)
    answers = {s["name"]: result.as_numpy(s["name"]) for s in signature["outputs"]}
    for spec in signature["outputs"]:
        assert answers[spec["name"]].dtype == NUMPY_DTYPES[spec["datatype"]], spec["name"]
    assert_answers_as_recorded(name, version, answers)
