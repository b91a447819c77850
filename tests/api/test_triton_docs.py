"""Triton's documents (api/triton_docs.py) for models a real gateway process
does not easily have: a route with no ready backend, a backend that is not
ONNX Runtime, a batching backend under a signature without a batch dimension.
In process, with small backends keeping the gateway's protocols."""

from __future__ import annotations

from gateway.admission.batching import BatchPolicy
from gateway.admission.queue import QueuedBackend
from gateway.api.triton_docs import model_config, repository_index
from gateway.core.signature import Signature, TensorSpec
from gateway.pipeline.entry import ModelEntry
from gateway.routing.router import Attempt, Route
from tests.fakes import LocalBackend

UNBATCHED = Signature(
    inputs=(TensorSpec("text", "BYTES", (3,)),),
    outputs=(TensorSpec("flag", "BOOL", (3,)),),
    batched=False,
)


class Down(LocalBackend):
    def __init__(self, name: str) -> None:
        self.name = name

    def ready(self) -> bool:
        return False


def entry(name: str, *backends: object, signature: Signature | None = UNBATCHED) -> ModelEntry:
    return ModelEntry(
        name=name,
        version="3",
        kind="tensor",
        signature=signature,
        route=Route([Attempt(b, 1.0) for b in backends]),
    )


def test_a_model_with_no_ready_backend_is_unavailable_and_says_why() -> None:
    up = LocalBackend()
    models = [entry("up", up), entry("down", Down("a"), Down("b")), entry("half", Down("c"), up)]
    index = repository_index(models, ready_only=False)
    assert index == [
        {"name": "up", "version": "3", "state": "READY", "reason": ""},
        {
            "name": "down",
            "version": "3",
            "state": "UNAVAILABLE",
            "reason": "no backend of its route is ready (a, b)",
        },
        {"name": "half", "version": "3", "state": "READY", "reason": ""},
    ]
    assert [m["name"] for m in repository_index(models, ready_only=True)] == ["up", "half"]


def test_a_model_not_on_onnx_runtime_has_the_gateways_platform() -> None:
    config = model_config(entry("local", LocalBackend()), "inference-gateway")
    assert config["platform"] == "inference-gateway" and config["backend"] == ""
    assert config["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": [3]}]
    assert config["output"] == [{"name": "flag", "data_type": "TYPE_BOOL", "dims": [3]}]


def test_batching_needs_a_batch_dimension_to_show() -> None:
    queued = QueuedBackend(LocalBackend(), 1, 1, BatchPolicy(16, 0.002, (8, 16)))
    config = model_config(entry("flat", queued), "inference-gateway")
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"][0]["dims"] == [3]  # nothing taken off


def test_a_model_without_a_signature_has_no_tensors() -> None:
    config = model_config(entry("chat", LocalBackend(), signature=None), "inference-gateway")
    assert config["input"] == config["output"] == [] and config["max_batch_size"] == 0
