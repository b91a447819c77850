"""Inputs from real data, encoded once per process before any request is timed.

Images: scikit-learn's bundled digits (1,797 8×8 images as 64 intensities
0..16; nothing is downloaded), the data set the `digits` model was trained
on. Text: sentences.txt beside this file, one sentence a line, of varied
topics and lengths so that batches pad to different lengths as real traffic
does. Each request takes the next batch, cycling.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

SENTENCES_FILE = Path(__file__).with_name("sentences.txt")
DIGITS_INPUT = "pixels"
DIGITS_OUTPUT = "probabilities"
BINARY_HEADER = "Inference-Header-Content-Length"

T = TypeVar("T")


@functools.cache
def digit_images() -> np.ndarray:
    """The 1,797 images, FP32 [n, 64]."""
    from sklearn.datasets import load_digits  # bundled: read from the package, offline

    return np.ascontiguousarray(load_digits().data, dtype=np.float32)


@functools.cache
def sentences() -> tuple[str, ...]:
    lines = SENTENCES_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def batch_indices(count: int, size: int) -> list[np.ndarray]:
    """Indices of consecutive batches of `size` items out of `count`, the last
    one wrapping round to the start: every item is sent."""
    return [np.arange(start, start + size) % count for start in range(0, count, size)]


@dataclass(frozen=True)
class TensorRequest:
    """A pre-encoded v2 infer request: its body, headers and the rows it holds."""

    body: bytes
    headers: dict[str, str]
    rows: int


def v2_json_request(pixels: np.ndarray) -> TensorRequest:
    doc = {
        "inputs": [
            {
                "name": DIGITS_INPUT,
                "datatype": "FP32",
                "shape": list(pixels.shape),
                "data": pixels.ravel().tolist(),
            }
        ],
        "outputs": [{"name": DIGITS_OUTPUT}],
    }
    return TensorRequest(
        json.dumps(doc, separators=(",", ":")).encode(),
        {"Content-Type": "application/json"},
        len(pixels),
    )


def v2_binary_request(pixels: np.ndarray) -> TensorRequest:
    """The binary tensor extension (docs/api.md#binary-tensors): a JSON header,
    then the raw little-endian FP32 input; the output asked for as binary too."""
    raw = pixels.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": DIGITS_INPUT,
                    "datatype": "FP32",
                    "shape": list(pixels.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": DIGITS_OUTPUT, "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    return TensorRequest(
        header + raw,
        {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(header))},
        len(pixels),
    )


@functools.cache
def v2_requests(binary: bool, batch: int) -> tuple[TensorRequest, ...]:
    encode = v2_binary_request if binary else v2_json_request
    return tuple(encode(pixels) for pixels in pixel_batches(batch))


@functools.cache
def pixel_batches(batch: int) -> tuple[np.ndarray, ...]:
    images = digit_images()
    return tuple(images[rows] for rows in batch_indices(len(images), batch))


@functools.cache
def sentence_batches(batch: int) -> tuple[tuple[str, ...], ...]:
    texts = sentences()
    return tuple(tuple(texts[i] for i in rows) for rows in batch_indices(len(texts), batch))


def cycle_from(items: tuple[T, ...], offset: int) -> Iterator[T]:
    """Endless iteration over `items`, starting at `offset` (each user its own),
    so that concurrent users do not all send the same request at once."""
    start = offset % len(items)
    return itertools.cycle(items[start:] + items[:start])
