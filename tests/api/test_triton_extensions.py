"""Triton's protocol extensions against a real `gateway serve` process, read by
tritonclient.http and tritonclient.grpc exactly as they read Triton's: model
configuration, inference statistics and the repository index, with the same
contents over HTTP and gRPC (on both gRPC engines)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from tests.api.http_helpers import post
from tests.conftest import GatewayProcess, digits_config, free_port, start_gateway

PREFERRED = [4, 8]
MAX_BATCH = 8
DELAY_US = 500


class Served:
    def __init__(self, process: GatewayProcess, grpc_port: int) -> None:
        self.process = process
        self.http = httpclient.InferenceServerClient(process.url)
        self.grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")


@pytest.fixture(scope="module", params=["threads", "aio"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    config = digits_config(grpc={"engine": request.param})
    batching = dict(config["backends"]["digits-cpu"])
    batching["batching"] = {
        "max_batch_size": MAX_BATCH,
        "max_queue_delay_us": DELAY_US,
        "preferred_batch_sizes": PREFERRED,
    }
    config["backends"]["digits-batching"] = batching
    config["models"]["batched"] = {
        **config["models"]["digits"],
        "route": {"backends": ["digits-batching"]},
    }
    grpc_port = free_port()
    workdir = tmp_path_factory.mktemp(f"triton-{request.param}")
    process = start_gateway(config, workdir, "--grpc-port", str(grpc_port))
    served = Served(process, grpc_port)
    yield served
    served.http.close()
    served.grpc.close()
    alive = process.process.poll() is None
    process.stop()
    assert alive, f"the gateway died during the tests:\n{process.logs()}"


def pixels(rows: int) -> np.ndarray:
    return np.random.default_rng(rows).integers(0, 17, size=(rows, 64)).astype(np.float32)


def infer_http(served: Served, model: str, data: np.ndarray) -> None:
    tensor = httpclient.InferInput("pixels", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data, binary_data=True)
    served.http.infer(model, [tensor])


def infer_grpc(served: Served, model: str, data: np.ndarray) -> None:
    tensor = grpcclient.InferInput("pixels", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    served.grpc.infer(model, [tensor])


def as_config(doc: dict[str, Any]) -> model_config_pb2.ModelConfig:
    """An HTTP (or gRPC as_json) configuration in Triton's own message."""
    return json_format.ParseDict(doc, model_config_pb2.ModelConfig())


def as_stats(doc: dict[str, Any]) -> service_pb2.ModelStatisticsResponse:
    return json_format.ParseDict(doc, service_pb2.ModelStatisticsResponse())


def stats_of(served: Served, model: str) -> dict[str, Any]:
    (stats,) = served.http.get_inference_statistics(model)["model_stats"]
    return stats


def delta(after: dict[str, Any], before: dict[str, Any], *path: str) -> int:
    a, b = after, before
    for key in path:
        a, b = a[key], b[key]
    assert isinstance(a, int) and isinstance(b, int), (a, b)
    return a - b


def refused(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


# -- model configuration ---------------------------------------------------------------


def test_configuration_of_a_model_that_does_not_batch(served) -> None:
    config = served.http.get_model_config("digits")
    assert config == served.http.get_model_config("digits", "1")
    assert config["name"] == "digits"
    assert config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    # Without batching the batch dimension stays in the dims.
    assert config["input"] == [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [-1, 64]}]
    assert config["output"] == [
        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [-1, 10]}
    ]
    message = served.grpc.get_model_config("digits").config
    assert message == as_config(config)
    assert message.WhichOneof("scheduling_choice") is None
    assert message.input[0].data_type == model_config_pb2.TYPE_FP32
    assert as_config(served.grpc.get_model_config("digits", "1", as_json=True)["config"]) == message


def test_configuration_of_a_model_whose_route_batches(served) -> None:
    config = served.http.get_model_config("batched")
    assert config["max_batch_size"] == MAX_BATCH
    assert config["dynamic_batching"] == {
        "preferred_batch_size": PREFERRED,
        "max_queue_delay_microseconds": DELAY_US,
    }
    assert config["input"] == [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [64]}]
    assert config["output"][0]["dims"] == [10]
    message = served.grpc.get_model_config("batched").config
    assert message == as_config(config)
    assert message.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(message.dynamic_batching.preferred_batch_size) == PREFERRED
    assert message.dynamic_batching.max_queue_delay_microseconds == DELAY_US
    assert list(message.input[0].dims) == [64]


def test_unknown_models_and_versions_are_not_found(served) -> None:
    for method, args in (
        ("get_model_config", ("nope",)),
        ("get_inference_statistics", ("nope",)),
        ("get_model_config", ("digits", "2")),
        ("get_inference_statistics", ("digits", "2")),
    ):
        http = refused(lambda: getattr(served.http, method)(*args))  # noqa: B023 - called at once
        grpc = refused(lambda: getattr(served.grpc, method)(*args))  # noqa: B023 - called at once
        assert http.status() == "404" and grpc.status() == "StatusCode.NOT_FOUND"
        assert http.message() == grpc.message()
        assert "'nope'" in http.message() or "no version '2'" in http.message()


def test_server_metadata_names_the_extensions(served) -> None:
    extensions = served.http.get_server_metadata()["extensions"]
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(extensions)
    assert list(served.grpc.get_server_metadata().extensions) == extensions


# -- statistics -------------------------------------------------------------------------


def test_statistics_count_each_request_once(served) -> None:
    started_ms = int(time.time() * 1000)
    before = stats_of(served, "digits")
    infer_http(served, "digits", pixels(1))
    infer_http(served, "digits", pixels(5))
    infer_grpc(served, "digits", pixels(2))
    # A request for a model nobody serves is nobody's.
    refused(lambda: infer_http(served, "nope", pixels(1)))
    after = stats_of(served, "digits")
    assert delta(after, before, "inference_stats", "success", "count") == 3
    assert delta(after, before, "inference_stats", "fail", "count") == 0
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert delta(after, before, "inference_stats", stage, "count") == 3, stage
    # Without batching an inference is a request, and each runs on its own.
    assert delta(after, before, "inference_count") == 3
    assert delta(after, before, "execution_count") == 3
    success_ns = delta(after, before, "inference_stats", "success", "ns")
    queue_ns = delta(after, before, "inference_stats", "queue", "ns")
    compute_ns = delta(after, before, "inference_stats", "compute_infer", "ns")
    assert compute_ns > 0 and queue_ns >= 0
    assert queue_ns + compute_ns <= success_ns  # parts of the requests' own time
    assert after["last_inference"] >= started_ms
    assert after["name"] == "digits" and after["version"] == "1"


def test_a_refused_request_counts_as_a_failure(served) -> None:
    before = stats_of(served, "digits")
    wrong = refused(lambda: infer_http(served, "digits", np.zeros((1, 63), np.float32)))
    assert wrong.status() == "400"
    refused(lambda: infer_grpc(served, "digits", np.zeros((1, 63), np.float32)))
    after = stats_of(served, "digits")
    assert delta(after, before, "inference_stats", "fail", "count") == 2
    assert delta(after, before, "inference_stats", "fail", "ns") > 0
    for stage in ("success", "queue", "compute_infer"):
        assert delta(after, before, "inference_stats", stage, "count") == 0, stage
    assert delta(after, before, "inference_count") == 0
    assert delta(after, before, "execution_count") == 0


def test_a_batching_model_counts_rows_as_inferences(served) -> None:
    before = stats_of(served, "batched")
    # One after another: each request is the only one in its execution.
    for rows in (3, 2, 1):
        infer_http(served, "batched", pixels(rows))
    after = stats_of(served, "batched")
    assert delta(after, before, "inference_stats", "success", "count") == 3
    assert delta(after, before, "inference_count") == 6
    assert delta(after, before, "execution_count") == 3
    # Each waited for batch-mates up to the queue delay.
    assert delta(after, before, "inference_stats", "queue", "ns") >= 3 * DELAY_US * 1000 * 0.9


def test_statistics_are_the_same_over_http_and_grpc(served) -> None:
    infer_grpc(served, "batched", pixels(1))  # something to show
    for args in ((), ("digits",), ("digits", "1"), ("batched",)):
        http = served.http.get_inference_statistics(*args)
        message = served.grpc.get_inference_statistics(*args)
        assert as_stats(http) == message, args
        assert as_stats(served.grpc.get_inference_statistics(*args, as_json=True)) == message
    everything = served.http.get_inference_statistics()["model_stats"]
    assert [s["name"] for s in everything] == ["digits", "batched"]
    assert all(s["inference_stats"]["success"]["count"] > 0 for s in everything)


# -- repository index ---------------------------------------------------------------------


def test_the_repository_index_lists_every_model(served) -> None:
    expected = [
        {"name": name, "version": "1", "state": "READY", "reason": ""}
        for name in ("digits", "batched")
    ]
    assert served.http.get_model_repository_index() == expected
    port = served.process.port
    assert post(port, "/v2/repository/index", '{"ready": true}').json() == expected
    assert post(port, "/v2/repository/index", '{"ready": false}').json() == expected
    message = served.grpc.get_model_repository_index()
    assert message == json_format.ParseDict(
        {"models": expected}, service_pb2.RepositoryIndexResponse()
    )
    assert served.grpc.get_model_repository_index(as_json=True)["models"] == [
        {k: v for k, v in model.items() if v}
        for model in expected  # proto JSON leaves out ""
    ]


def test_a_malformed_index_request_is_invalid_input(served) -> None:
    for body in ("{", '{"ready": "yes"}', "[true]"):
        reply = post(served.process.port, "/v2/repository/index", body)
        assert reply.status == 400, body
        assert reply.error.startswith("request body:"), reply.error
