"""The fuzz target (fuzz/fuzz_decoders.py) over its seeds and a few broken inputs,
so that the target itself cannot rot: it must import, decode valid requests of
every kind, and find nothing in what the gateway refuses properly."""

from __future__ import annotations

import importlib.util
import json
import struct
from types import ModuleType

import pytest

from testkit.gateway_process import ROOT


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fuzz_decoders", ROOT / "fuzz" / "fuzz_decoders.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _load()
SEEDS = fuzz.seeds()
# v2_codec ignores it where the gateway runs; pytest resets warning filters per test.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in dot:RuntimeWarning")


def test_the_seeds_cover_both_wires_and_every_model() -> None:
    assert {seed[0] & 1 for seed in SEEDS} == {fuzz.HTTP, fuzz.GRPC}
    assert {(seed[0] >> 1) % len(fuzz.MODELS) for seed in SEEDS} == {0, 1, 2}


@pytest.mark.parametrize("seed", SEEDS, ids=range(len(SEEDS)))
def test_every_seed_runs_without_a_finding(seed: bytes) -> None:
    fuzz.one_input(seed)


def test_valid_seeds_decode() -> None:
    """one_input swallows InvalidInput: check that valid seeds are not refused."""
    d = fuzz.load()
    digits = d.signatures["digits"]
    body = json.dumps(
        {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
    ).encode()
    request, _ = d.http(body, None, "digits", None, digits)
    assert request.inputs["pixels"].shape == (1, 64)
    http_seed = SEEDS[0]
    (length,) = struct.unpack_from("<H", http_seed, 1)
    request, _ = d.http(http_seed[3:], str(length), "digits", None, digits)
    assert request.inputs["pixels"].tolist()[0][:3] == [0.0, 1.0, 2.0]
    message = d.parse(SEEDS[8][1:])
    request, raw = d.grpc(message, digits)
    assert raw and request.inputs["pixels"].shape == (1, 64)


BROKEN = [
    b"",
    b"\x00",
    b"\x00\xff\xff{",
    b"\x00\x05\x00[1,2]extra",
    b"\x00\x00\x00" + b'{"inputs": [{"name": "pixels", "datatype": ["FP32"], "shape": [1]}]}',
    b"\x04\x00\x00" + b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [0], "data": []}]}',
    b"\x04\x00\x00"
    + b'{"inputs": [{"name": "x", "datatype": "FP16", "shape": [1], "data": [1e9]}]}',
    b"\x01\x0a\x02\xff\xfe",
    b"\x05" + bytes(range(256)),
]


@pytest.mark.parametrize("data", BROKEN, ids=range(len(BROKEN)))
def test_broken_inputs_are_refused_as_invalid_input(data: bytes) -> None:
    fuzz.one_input(data)


def test_a_decoder_bug_is_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    d = fuzz.load()

    def broken(*args: object) -> None:
        raise ValueError("maximum supported dimension for an ndarray is currently 64")

    monkeypatch.setattr(d, "http", broken)
    with pytest.raises(ValueError):
        fuzz.one_input(SEEDS[0])
