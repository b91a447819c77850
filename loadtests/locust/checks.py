"""Is an answer right? Each check returns None, or the reason it is not.

Reasons become locust's failure messages, which locust groups by text: they
name what was wrong without quoting anything that varies per request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

CLASSES = 10  # digits: 10 class probabilities per image
_SUM_TOLERANCE = 1e-3  # softmax is inside the graph: each row sums to 1 within float error


def http_failure(status: int, body: bytes | None, error: object = None) -> str | None:
    """The reason an HTTP answer failed, or None for a 200."""
    if status == 200:
        return None
    if status == 0:  # no answer at all: a connection error or a timeout
        return f"no answer: {error!r}" if error is not None else "no answer"
    return f"HTTP {status}: {_error_message(body)}"


def _error_message(body: bytes | None) -> str:
    """The gateway's error message (KServe's {"error": "..."} or OpenAI's
    {"error": {"message": ...}}), else the start of the body."""
    text = (body or b"").decode(errors="replace")
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text[:120]
    if isinstance(error, dict):
        error = error.get("message")
    return str(error)[:200]


def probabilities(values: np.ndarray, rows: int) -> str | None:
    """`rows` rows of 10 class probabilities, each summing to 1."""
    if values.shape != (rows, CLASSES):
        return f"probabilities: expected shape [{rows}, {CLASSES}], got {list(values.shape)}"
    if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
        return "probabilities: values outside 0..1"
    if np.abs(values.sum(axis=1) - 1.0).max() > _SUM_TOLERANCE:
        return "probabilities: a row does not sum to 1"
    return None


def v2_json(body: bytes, output: str, rows: int) -> str | None:
    """A KServe v2 JSON answer holding `output` as [rows, 10] probabilities."""
    try:
        doc = json.loads(body)
        tensor = next(o for o in doc["outputs"] if o["name"] == output)
        shape = tensor["shape"]
        values = np.asarray(tensor["data"], dtype=np.float32)
    except (ValueError, KeyError, TypeError, StopIteration):
        return f"v2 JSON answer without output {output!r}"
    if list(shape) != [rows, CLASSES]:
        return f"{output}: expected shape [{rows}, {CLASSES}], got {shape}"
    return probabilities(values.reshape(-1, CLASSES) if values.size else values, rows)


def v2_binary(body: bytes, header_length: str | None, output: str, rows: int) -> str | None:
    """A KServe v2 binary answer: a JSON header of `header_length` bytes, then
    `output` as raw little-endian FP32."""
    if header_length is None:
        return "binary answer without inference-header-content-length"
    try:
        size = int(header_length)
        doc = json.loads(body[:size])
        tensor = next(o for o in doc["outputs"] if o["name"] == output)
        nbytes = tensor["parameters"]["binary_data_size"]
        shape = tensor["shape"]
    except (ValueError, KeyError, TypeError, StopIteration):
        return f"binary answer without binary output {output!r}"
    raw = body[size : size + nbytes]
    if len(raw) != nbytes or nbytes != rows * CLASSES * 4:
        return f"{output}: expected {rows * CLASSES * 4} bytes, got {len(raw)}"
    if list(shape) != [rows, CLASSES]:
        return f"{output}: expected shape [{rows}, {CLASSES}], got {shape}"
    return probabilities(np.frombuffer(raw, dtype="<f4").reshape(rows, CLASSES), rows)


def embeddings(body: bytes, count: int, dim: int) -> str | None:
    """An OpenAI embeddings answer: `count` finite vectors of `dim` floats."""
    try:
        data = json.loads(body)["data"]
        vectors = [item["embedding"] for item in sorted(data, key=lambda i: i["index"])]
    except (ValueError, KeyError, TypeError):
        return "embeddings answer without data[].embedding"
    if len(vectors) != count:
        return f"expected {count} embeddings, got {len(vectors)}"
    for vector in vectors:
        if len(vector) != dim:
            return f"expected vectors of {dim} floats, got {len(vector)}"
        if not all(isinstance(x, float | int) and math.isfinite(x) for x in vector):
            return "an embedding holds a value that is not a finite number"
    return None


def chat(body: bytes) -> str | None:
    """An OpenAI chat completion with a non-empty reply."""
    try:
        choice = json.loads(body)["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, TypeError, IndexError):
        return "chat answer without choices[0].message.content"
    if not isinstance(content, str) or not content:
        return "chat answer with an empty reply"
    if not choice.get("finish_reason"):
        return "chat answer without finish_reason"
    return None


def chat_chunk(data: str) -> tuple[str | None, str]:
    """(reason, content) of one streamed event's data: the reason it is wrong,
    or None and the text it adds (empty for role, finish and usage chunks)."""
    try:
        chunk: Any = json.loads(data)
    except ValueError:
        return "stream event that is not JSON", ""
    if not isinstance(chunk, dict):
        return "stream event that is not a JSON object", ""
    if "error" in chunk:  # a stream that broke after it started
        return f"stream error: {_error_message(data.encode())}", ""
    choices: Sequence[Any] = chunk.get("choices") or []
    if not choices:
        return None, ""  # the usage chunk
    content = (choices[0].get("delta") or {}).get("content")
    return None, content if isinstance(content, str) else ""


class SseLines:
    """Splits a server-sent event stream, fed as it arrives, into data payloads."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [
            line[5:].strip().decode(errors="replace") for line in lines if line.startswith(b"data:")
        ]
