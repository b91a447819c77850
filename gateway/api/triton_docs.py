"""Triton's protocol extensions, as documents both transports answer with:
model configuration, inference statistics and the repository index.

Each is built once here, in the JSON shape Triton's HTTP server answers
(its field names, "TYPE_FP32" enum names, numbers as numbers); gRPC parses
the same document into the matching message of our proto (whose field numbers
are Triton's), so both carry the same contents. None of them is on a hot path.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.core.signature import TensorSpec
from gateway.observe.model_stats import ModelStats
from gateway.pipeline.entry import ModelEntry
from gateway.pipeline.serving import serving

# ONNX Runtime as Triton names it: its platform string for ONNX models, and its backend.
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"

# v2 datatypes -> Triton's model configuration DataType names.
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
    "BF16": "TYPE_BF16",
}

M = TypeVar("M", bound=Message)

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"


def model_config(entry: ModelEntry, gateway_platform: str) -> dict[str, Any]:
    """The model's configuration. Its platform is ONNX Runtime's when every backend
    of its route runs ONNX Runtime, else `gateway_platform` (the metadata's).
    It batches (max_batch_size > 0, dims without the batch dimension, and
    dynamic_batching) when its route's first backend batches and its signature
    has a batch dimension."""
    facts = serving(entry)
    signature = entry.signature
    batching = facts.batching if signature is not None and signature.batched else None

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        dims = spec.shape[1:] if batching is not None else spec.shape
        return {"name": spec.name, "data_type": TRITON_TYPES[spec.datatype], "dims": list(dims)}

    onnx = facts.runtime == "onnx"
    doc: dict[str, Any] = {
        "name": entry.name,
        "platform": ONNX_PLATFORM if onnx else gateway_platform,
        "backend": ONNX_BACKEND if onnx else "",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": batching.max_batch_size if batching is not None else 0,
        "input": [tensor(s) for s in signature.inputs] if signature else [],
        "output": [tensor(s) for s in signature.outputs] if signature else [],
    }
    if batching is not None:
        doc["dynamic_batching"] = {
            "preferred_batch_size": list(batching.preferred_batch_sizes),
            "max_queue_delay_microseconds": batching.max_queue_delay_us,
        }
    return doc


def _duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": round(seconds * 1e9)}


def model_statistics(entry: ModelEntry, stats: ModelStats) -> dict[str, Any]:
    """One model's statistics (observe/model_stats.py says what is counted).

    compute_input and compute_output count what compute_infer counts, in no
    time: backends take the decoded arrays as they are, and decoding and
    encoding are in the request's own time (success, fail)."""
    computed = stats.compute_count
    return {
        "name": entry.name,
        "version": entry.version,
        "last_inference": stats.last_inference_ms(),
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success_count, stats.success_s),
            "fail": _duration(stats.fail_count, stats.fail_s),
            "queue": _duration(stats.queue_count, stats.queue_s),
            "compute_input": _duration(computed, 0.0),
            "compute_infer": _duration(computed, stats.compute_s),
            "compute_output": _duration(computed, 0.0),
            "cache_hit": _duration(stats.cache_hit_count, stats.cache_hit_s),
            # A miss's lookup is not timed apart from the rest of its request.
            "cache_miss": _duration(stats.cache_miss_count, 0.0),
        },
    }


def statistics(rows: list[tuple[ModelEntry, ModelStats]]) -> dict[str, Any]:
    return {"model_stats": [model_statistics(entry, stats) for entry, stats in rows]}


def repository_index(entries: list[ModelEntry], ready_only: bool) -> list[dict[str, str]]:
    """Every configured model (with `ready_only`, those that are ready): its served
    version, READY when a backend of its route is ready, else UNAVAILABLE and why."""
    index = []
    for entry in entries:
        if entry.ready():  # as /v2/models/{m}/ready and ModelReady answer
            state, reason = READY, ""
        else:
            state = UNAVAILABLE
            reason = f"no backend of its route is ready ({', '.join(serving(entry).backends)})"
        if ready_only and state != READY:
            continue
        index.append(
            {"name": entry.name, "version": entry.version, "state": state, "reason": reason}
        )
    return index


def to_message(doc: dict[str, Any], message: M) -> M:
    """`doc` into `message` (a message of our proto with Triton's field names)."""
    json_format.ParseDict(doc, message)
    return message
