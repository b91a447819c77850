"""Fuzz target: the tensor decoders, with arbitrary bytes (issue 14).

    .venv/bin/python fuzz/fuzz_decoders.py -max_total_time=120 [corpus dir ...]

Each input is one request for one decoder: its first byte chooses the wire
(bit 0: the KServe v2 HTTP body with the binary tensor extension, or the gRPC
ModelInferRequest with raw or typed contents) and the model whose signature
the decoder checks against (digits FP32 [-1,64], the embedder BYTES [-1], or
none); for HTTP the next two bytes are the inference-header-content-length
(little-endian; 0: no such header, a JSON body). The rest is the body, or the
message's bytes (parsed as the gRPC server does). A decoded request then goes
through the signature's validation, as the pipeline does.

Anything but the gateway's InvalidInput is a finding (an answer of 500 or
INTERNAL); so is a run past libFuzzer's -rss_limit_mb (2 GB by default): a
tensor allocated from a declared shape rather than from the bytes that came.
Without a corpus directory, a temporary one is seeded with SEEDS (valid and
broken requests of every kind). `one_input` is what tests/edge/test_fuzz_target.py
runs over SEEDS.
"""

from __future__ import annotations

import json
import struct
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HTTP, GRPC = 0, 1
MODELS = ("digits", "embedder", None)

_decoders: Any = None


def load() -> Any:
    """The gateway's decoders (imported here, so that main() can instrument them)."""
    global _decoders
    if _decoders is None:
        from gateway.api import v2_codec, v2_grpc_codec
        from gateway.api.v2_grpc import MalformedRequest, parse_infer_request
        from gateway.core.errors import InvalidInput
        from gateway.core.signature import Signature, TensorSpec

        signatures = {
            "digits": Signature(
                inputs=(TensorSpec("pixels", "FP32", (-1, 64)),),
                outputs=(TensorSpec("probabilities", "FP32", (-1, 10)),),
                batched=True,
            ),
            "embedder": Signature(
                inputs=(TensorSpec("text", "BYTES", (-1,)),),
                outputs=(TensorSpec("embedding", "FP32", (-1, 384)),),
                batched=True,
            ),
        }
        _decoders = SimpleNamespace(
            http=v2_codec.decode_infer_request,
            grpc=v2_grpc_codec.decode_infer_request,
            parse=parse_infer_request,
            Malformed=MalformedRequest,
            InvalidInput=InvalidInput,
            signatures=signatures,
        )
    return _decoders


def one_input(data: bytes) -> None:
    """Decode one fuzzer input; raises on a finding."""
    if not data:
        return
    d = load()
    selector = data[0]
    wire = selector & 1
    model = MODELS[(selector >> 1) % len(MODELS)]
    signature = d.signatures.get(model) if model else None
    try:
        if wire == HTTP:
            if len(data) < 3:
                return
            (length,) = struct.unpack_from("<H", data, 1)
            header = str(length) if length else None
            request, _ = d.http(data[3:], header, model or "m", None, signature)
        else:
            message = d.parse(data[1:])
            if isinstance(message, d.Malformed):
                return  # the servicer answers INVALID_ARGUMENT
            request, _ = d.grpc(message, signature)
        if signature is not None:
            signature.validate_inputs(request.inputs)
    except d.InvalidInput:
        return


# -- seeds: valid and broken requests of every kind -----------------------------------------


def _http(model_index: int, body: bytes, header_length: int | None) -> bytes:
    return bytes([HTTP | model_index << 1]) + struct.pack("<H", header_length or 0) + body


def _grpc(model_index: int, message: bytes) -> bytes:
    return bytes([GRPC | model_index << 1]) + message


def _binary(inputs: list[dict[str, Any]], *blobs: bytes) -> tuple[bytes, int]:
    head = json.dumps({"inputs": inputs}).encode()
    return head + b"".join(blobs), len(head)


def _strings(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in items)


def seeds() -> list[bytes]:
    from gateway.api.proto import grpc_predict_v2_pb2 as pb

    floats = struct.pack("<64f", *range(64))
    pixels = {"name": "pixels", "datatype": "FP32", "shape": [1, 64]}
    text = {"name": "text", "datatype": "BYTES", "shape": [2]}
    found = []
    for model_index in range(len(MODELS)):
        body, length = _binary([{**pixels, "parameters": {"binary_data_size": 256}}], floats)
        found.append(_http(model_index, body, length))
        body, length = _binary(
            [{**text, "parameters": {"binary_data_size": 13}}], _strings(b"hi", b"there")
        )
        found.append(_http(model_index, body, length))
        found.append(
            _http(
                model_index, json.dumps({"inputs": [{**pixels, "data": [0.5] * 64}]}).encode(), None
            )
        )
        found.append(
            _http(
                model_index, json.dumps({"inputs": [{**text, "data": ["a", "b"]}]}).encode(), None
            )
        )
        # Broken: a shape the bytes cannot hold, 65 dimensions, a huge zero-size shape.
        body, length = _binary(
            [{**text, "shape": [50_000_000], "parameters": {"binary_data_size": 4}}], b"\0" * 4
        )
        found.append(_http(model_index, body, length))
        body, length = _binary(
            [{**pixels, "shape": [1] * 65, "parameters": {"binary_data_size": 4}}], b"\0" * 4
        )
        found.append(_http(model_index, body, length))
        found.append(
            _http(
                model_index,
                json.dumps({"inputs": [{**pixels, "shape": [0, 2**63 - 1], "data": []}]}).encode(),
                None,
            )
        )
        found.append(
            _http(
                model_index,
                json.dumps({"inputs": [{**pixels, "data": [1e300] * 64}]}).encode(),
                None,
            )
        )

        raw = pb.ModelInferRequest(model_name="m")
        raw.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
        raw.raw_input_contents.append(floats)
        found.append(_grpc(model_index, raw.SerializeToString()))
        typed = pb.ModelInferRequest(model_name="m")
        typed.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
            [b"a", b"b"]
        )
        found.append(_grpc(model_index, typed.SerializeToString()))
        huge = pb.ModelInferRequest(model_name="m")
        huge.inputs.add(name="text", datatype="BYTES", shape=[2**31 - 1])
        huge.raw_input_contents.append(_strings(b"a"))
        found.append(_grpc(model_index, huge.SerializeToString()))
        found.append(_grpc(model_index, b"\xff\xff\xff"))
    return found


# Tokens of the wire formats, for libFuzzer's mutations (-dict).
DICTIONARY = [
    *('"inputs"', '"outputs"', '"name"', '"datatype"', '"shape"', '"data"', '"parameters"'),
    *('"binary_data_size"', '"binary_data_output"', '"binary_data"', '"id"', '"classification"'),
    *(f'"{dt}"' for dt in ("BOOL", "INT8", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64")),
    *('"BYTES"', '"pixels"', '"text"', "[", "]", "{", "}", ":", ",", "null", "true", "1e300"),
    *("-1", "0", "2147483647", "9223372036854775807", "18446744073709551615", "65520"),
]


def main(argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["gateway"]):
        load()
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-decoders-"))
    if not any(arg.startswith("-dict=") for arg in argv[1:]):
        tokens = workdir / "decoders.dict"
        tokens.write_text("".join(json.dumps(t) + "\n" for t in DICTIONARY))
        argv = [*argv, f"-dict={tokens}"]
    if not any(not arg.startswith("-") for arg in argv[1:]):
        corpus = workdir / "corpus"
        corpus.mkdir()
        for i, seed in enumerate(seeds()):
            (corpus / f"seed-{i:03d}").write_bytes(seed)
        argv = [*argv, str(corpus)]
        print(f"corpus: {corpus} (seeded with {len(seeds())} requests)", file=sys.stderr)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
