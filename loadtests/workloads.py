"""The models under load: gateway configs and pre-encoded v2 binary requests.

Requests are encoded once, before any timing, so the generator only writes
bytes. Binary tensors follow the KServe v2 binary extension: a JSON header of
`Inference-Header-Content-Length` bytes, then the raw tensor data.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from loadtests.loadgen import http_request
from testkit.gateway_process import ROOT

DIGITS_MODEL = ROOT / "models" / "digits" / "1" / "model.onnx"
DIGITS_PATH = "/v2/models/digits/infer"
EMBEDDER_DIR = ROOT / "models" / "embedder" / "1"
EMBEDDER_MODEL = EMBEDDER_DIR / "model.onnx"
EMBEDDER_TOKENIZER = EMBEDDER_DIR / "tokenizer.json"
EMBEDDER_PATH = "/v2/models/embedder/infer"
EMBEDDER_MAX_LENGTH = 256
HOST = "127.0.0.1"

# One sentence per request, cycled: varied lengths (8-20 words) and topics, so
# batches pad to different lengths as real traffic would.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "How do I reset my password if I no longer have access to my email?",
    "Quarterly revenue grew by twelve percent in the northern region this year.",
    "A man is playing a guitar on stage in front of a large crowd.",
    "The cat sleeps on the warm windowsill all afternoon.",
    "Please send the signed contract back to the legal team before Friday.",
    "Heavy rain is expected across the coast tonight, with strong winds after midnight.",
    "She finished the marathon in under four hours despite the heat.",
    "Our new API lets developers stream embeddings for millions of documents every day.",
    "The museum will stay closed on Monday for maintenance work.",
    "Add two cups of flour, a pinch of salt and stir until the dough is smooth.",
    "Which train goes from the central station to the airport after ten at night?",
    "Scientists discovered a new species of frog in the rainforest of Borneo.",
    (
        "After months of talks, the two companies finally agreed on a merger that will create "
        "the region's largest retailer."
    ),
    "I would like to return these shoes because they are too small for me.",
    "Electric cars are becoming cheaper to buy and to run in most countries.",
    "The children built a sandcastle while their parents read books under the umbrella.",
    (
        "If the package does not arrive within five working days, please contact our support team "
        "and quote your order number."
    ),
    "My laptop battery drains quickly even when the screen brightness is low.",
    "The orchestra performed Beethoven's ninth symphony to a sold-out hall.",
    "Can you recommend a quiet restaurant with vegetarian options near the old town?",
    "The software update fixes a bug that caused the app to crash on startup.",
    "Volunteers planted three hundred trees along the highway last weekend.",
    "Our flight was delayed by two hours because of fog at the destination.",
    "The patient reported mild headaches and trouble sleeping for the past week.",
    "Tomorrow's forecast calls for sunshine in the morning and clouds later on.",
    "The startup raised forty million dollars to expand its logistics network in Europe.",
    "He forgot his umbrella on the bus again.",
    "Students must submit their essays through the online portal by midnight on Sunday.",
    "The bridge will be closed to traffic while engineers inspect its cables.",
    "A good night's sleep improves memory, mood and concentration the next day.",
    "The library offers free coding workshops for teenagers every Saturday afternoon.",
]


def _model(
    name: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], backend: str
) -> dict[str, Any]:
    return {
        name: {
            "signature": {"inputs": inputs, "outputs": outputs},
            "route": {"backends": [backend]},
        }
    }


def digits_config(batching: bool, max_queue: int = 1024) -> dict[str, Any]:
    backend: dict[str, Any] = {
        "type": "onnx",
        "path": str(DIGITS_MODEL),
        "providers": ["cpu"],
        "max_concurrency": 1,
        "intra_op_threads": 1,
        "timeout_ms": 10000,
        "max_queue": max_queue,
    }
    if batching:
        backend["batching"] = {"max_batch_size": 64, "max_queue_delay_us": 500}
    return {
        "backends": {"digits-cpu": backend},
        "models": _model(
            "digits",
            [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
            [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
            "digits-cpu",
        ),
    }


def embedder_config(batching: bool, max_queue: int = 1024) -> dict[str, Any]:
    backend: dict[str, Any] = {
        "type": "onnx",
        "path": str(EMBEDDER_MODEL),
        "providers": ["cpu"],
        "max_concurrency": 1,
        "intra_op_threads": 1,
        "max_queue": max_queue,
        "timeout_ms": 30000,
        "tokenizer": {
            "path": str(EMBEDDER_TOKENIZER),
            "input": "text",
            "max_length": EMBEDDER_MAX_LENGTH,
        },
    }
    if batching:
        backend["batching"] = {"max_batch_size": 64, "max_queue_delay_us": 2000}
    return {
        "backends": {"embedder-cpu": backend},
        "models": _model(
            "embedder",
            [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
            "embedder-cpu",
        ),
    }


def binary_infer(port: int, path: str, tensor: dict[str, Any], raw: bytes, output: str) -> bytes:
    """One HTTP request: v2 binary infer of a single input tensor, binary output asked."""
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    ).encode()
    return http_request(
        HOST, port, path, header + raw, {"Inference-Header-Content-Length": str(len(header))}
    )


def digits_request(port: int) -> bytes:
    from sklearn.datasets import (
        load_digits,  # bundled with scikit-learn: nothing downloaded
    )

    pixels = load_digits().data[:1].astype(np.float32)
    return binary_infer(
        port,
        DIGITS_PATH,
        {"name": "pixels", "datatype": "FP32", "shape": [1, 64]},
        pixels.tobytes(),
        "probabilities",
    )


def embedder_requests(port: int) -> list[bytes]:
    """One request per sentence: a BYTES [1] tensor (4-byte little-endian length + UTF-8)."""
    requests = []
    for sentence in SENTENCES:
        text = sentence.encode()
        raw = struct.pack("<I", len(text)) + text
        requests.append(
            binary_infer(
                port,
                EMBEDDER_PATH,
                {"name": "text", "datatype": "BYTES", "shape": [1]},
                raw,
                "embedding",
            )
        )
    return requests
