"""How a model is served, as far as a caller may know it: what its route's
backends run on and how the route batches. Triton's model configuration
(api/triton_docs.py) reports these; transports get them here rather than by
reaching into routes, admission or backends themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.admission.queue import QueuedBackend
from gateway.backends.onnx import OnnxBackend
from gateway.backends.tensor_embedder import TensorEmbedder
from gateway.pipeline.entry import ModelEntry


@dataclass(frozen=True, slots=True)
class Batching:
    """The dynamic batching of a route's first backend (admission/batching.py)."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int


@dataclass(frozen=True, slots=True)
class Serving:
    # "onnx" when every backend of the route runs ONNX Runtime, else None
    # (vendor APIs, mixed routes, backend types of other packages).
    runtime: str | None
    batching: Batching | None  # None: the route's first backend does not batch
    backends: tuple[str, ...]  # the route's backends, in configured order


def serving(entry: ModelEntry) -> Serving:
    """What `entry`'s route runs on. The first backend of the route (the one a
    fallback route tries first) stands for the model's batching."""
    backends = entry.route.backends
    first = _queue_of(backends[0])
    policy = first.batching if first is not None else None
    batching = (
        None
        if policy is None
        else Batching(
            policy.max_batch_size,
            policy.preferred_batch_sizes,
            round(policy.max_queue_delay_s * 1e6),
        )
    )
    onnx = all(isinstance(_innermost(b), OnnxBackend) for b in backends)
    return Serving(
        runtime="onnx" if onnx else None,
        batching=batching,
        backends=tuple(b.name for b in backends),
    )


def _queue_of(backend: Any) -> QueuedBackend | None:
    if isinstance(backend, TensorEmbedder):  # an embeddings model on a local tensor backend
        backend = backend.backend
    return backend if isinstance(backend, QueuedBackend) else None


def _innermost(backend: Any) -> Any:
    queued = _queue_of(backend)
    return queued.backend if queued is not None else backend
