"""The response cache's keys and values: request digests (xxh3-128 over a
prefix and length-framed parts) and the codecs that turn answers into bytes
for Redis (no pickle: a shared Redis must not be able to make a replica run
code). routing/cache.py stores what these produce."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import orjson
import xxhash

from gateway.core.datatypes import NUMPY_DTYPES, datatype_of

if TYPE_CHECKING:
    from gateway.core.llm import ChatResult, EmbeddingResult

V = TypeVar("V")


@dataclass(frozen=True)
class Codec(Generic[V]):
    encode: Callable[[V], bytes]
    decode: Callable[[bytes], V]
    size: Callable[[V], int]


# -- keys ------------------------------------------------------------------------


def digest(prefix: bytes, parts: list[bytes]) -> bytes:
    hasher = xxhash.xxh3_128(prefix)
    for part in parts:
        hasher.update(struct.pack("<Q", len(part)))  # lengths: no two splits hash alike
        hasher.update(part)
    return hasher.digest()


def tensor_key(prefix: bytes, inputs: dict[str, np.ndarray], outputs: list[str]) -> bytes:
    parts: list[bytes] = [",".join(outputs).encode()]
    for name in sorted(inputs):
        array = inputs[name]
        parts.append(f"{name}:{datatype_of(array)}:{array.shape}".encode())
        parts.append(_tensor_bytes(array))
    return digest(prefix, parts)


def json_key(prefix: bytes, document: Any) -> bytes:
    return digest(prefix, [orjson.dumps(document, option=orjson.OPT_SORT_KEYS)])


def _tensor_bytes(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OSU":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        return b"".join(struct.pack("<I", len(v)) + v for v in items)
    return np.ascontiguousarray(array).tobytes()


# -- codecs (bytes for Redis) -------------------------------------------------------


def _encode_tensors(outputs: dict[str, np.ndarray]) -> bytes:
    head: list[dict[str, Any]] = [
        {"n": name, "d": datatype_of(a), "s": list(a.shape)} for name, a in outputs.items()
    ]
    blobs = [_tensor_bytes(a) for a in outputs.values()]
    for entry, blob in zip(head, blobs):
        entry["l"] = len(blob)
    header = orjson.dumps(head)
    return struct.pack("<I", len(header)) + header + b"".join(blobs)


def _decode_tensors(data: bytes) -> dict[str, np.ndarray]:
    (length,) = struct.unpack_from("<I", data)
    head = orjson.loads(data[4 : 4 + length])
    offset = 4 + length
    outputs = {}
    for entry in head:
        blob = data[offset : offset + entry["l"]]
        offset += entry["l"]
        shape = tuple(entry["s"])
        if entry["d"] == "BYTES":
            items, pos = [], 0
            while pos < len(blob):
                (size,) = struct.unpack_from("<I", blob, pos)
                items.append(blob[pos + 4 : pos + 4 + size])
                pos += 4 + size
            array = np.empty(len(items), dtype=object)
            array[:] = items
            outputs[entry["n"]] = array.reshape(shape)
        else:
            outputs[entry["n"]] = np.frombuffer(blob, dtype=NUMPY_DTYPES[entry["d"]]).reshape(shape)
    return outputs


def _tensors_size(outputs: dict[str, np.ndarray]) -> int:
    return sum(
        a.nbytes if a.dtype.kind not in "OSU" else sum(len(v) for v in a.reshape(-1))
        for a in outputs.values()
    )


TENSORS: Codec[dict[str, np.ndarray]] = Codec(_encode_tensors, _decode_tensors, _tensors_size)


def _encode_chat(result: ChatResult) -> bytes:
    usage = result.usage
    return orjson.dumps(
        {
            "body": result.body,
            "usage": None if usage is None else [usage.prompt_tokens, usage.completion_tokens],
        }
    )


def _decode_chat(data: bytes) -> ChatResult:
    from gateway.core.llm import ChatResult, Usage

    doc = orjson.loads(data)
    usage = doc.get("usage")
    return ChatResult(doc["body"], None if usage is None else Usage(*usage))


def _encode_embeddings(result: EmbeddingResult) -> bytes:
    vectors = np.ascontiguousarray(result.vectors, dtype="<f4")
    usage = result.usage
    header = orjson.dumps(
        {
            "shape": list(vectors.shape),
            "usage": None if usage is None else [usage.prompt_tokens, usage.completion_tokens],
        }
    )
    return struct.pack("<I", len(header)) + header + vectors.tobytes()


def _decode_embeddings(data: bytes) -> EmbeddingResult:
    from gateway.core.llm import EmbeddingResult, Usage

    (length,) = struct.unpack_from("<I", data)
    doc = orjson.loads(data[4 : 4 + length])
    vectors = np.frombuffer(data[4 + length :], dtype="<f4").reshape(doc["shape"])
    usage = doc.get("usage")
    return EmbeddingResult(vectors, None if usage is None else Usage(*usage))


CHAT: Codec[ChatResult] = Codec(_encode_chat, _decode_chat, lambda r: len(_encode_chat(r)))
EMBEDDINGS: Codec[EmbeddingResult] = Codec(
    _encode_embeddings, _decode_embeddings, lambda r: int(r.vectors.nbytes) + 64
)
