"""The parts of loadtests/locust/ that need no locust: which users run, the
inputs, the answer checks, and that importing them leaves gevent out."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from loadtests.locust import checks, data
from loadtests.locust.options import WEIGHT_OPTIONS, Settings, grpc_host_for
from loadtests.locust.selection import select_users
from loadtests.locust.verdict import Limits
from testkit.gateway_process import ROOT

TAGS = {
    "V2JsonUser": frozenset({"v2-json"}),
    "GrpcUser": frozenset({"grpc"}),
    "ChatUser": frozenset({"chat"}),
    "ChatStreamUser": frozenset({"chat", "chat-stream"}),
}
ONES = dict.fromkeys(TAGS, 1)


def test_the_pure_modules_do_not_import_locust_or_gevent() -> None:
    code = (
        "import sys\n"
        "import loadtests.locust.checks, loadtests.locust.data, loadtests.locust.entries\n"
        "import loadtests.locust.options, loadtests.locust.plans, loadtests.locust.selection\n"
        "import loadtests.locust.verdict\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, cwd=ROOT)
    assert done.stdout.decode().strip() == "[]"


@pytest.mark.parametrize(
    ("weights", "tags", "exclude", "chosen"),
    [
        (ONES, None, None, ONES),
        ({**ONES, "GrpcUser": 0}, None, None, {**ONES, "GrpcUser": 0}),
        ({**ONES, "V2JsonUser": 3}, ["v2-json", "grpc"], None, {"V2JsonUser": 3, "GrpcUser": 1}),
        (ONES, ["chat"], None, {"ChatUser": 1, "ChatStreamUser": 1}),
        (ONES, ["chat"], ["chat-stream"], {"ChatUser": 1}),
        (ONES, None, ["chat"], {"V2JsonUser": 1, "GrpcUser": 1}),
        ({**ONES, "GrpcUser": 0}, ["grpc"], None, {}),
    ],
)
def test_weights_and_tags_choose_the_user_classes(
    weights: dict[str, int],
    tags: list[str] | None,
    exclude: list[str] | None,
    chosen: dict[str, int],
) -> None:
    expected = {name: weight for name, weight in chosen.items() if weight > 0}
    assert select_users(TAGS, weights, tags, exclude) == expected


def test_a_class_without_a_weight_option_keeps_weight_one() -> None:
    assert select_users({"Other": frozenset({"x"})}, {}) == {"Other": 1}


def test_the_inputs_are_the_digits_and_the_sentences() -> None:
    images = data.digit_images()
    assert images.shape == (1797, 64) and images.dtype == np.float32
    assert images.min() == 0 and images.max() == 16
    sentences = data.sentences()
    assert len(sentences) >= 100 and len(set(sentences)) == len(sentences)
    assert not any(s.startswith("#") for s in sentences)


def test_batches_cover_every_item_and_wrap_round() -> None:
    batches = data.batch_indices(5, 2)
    assert [b.tolist() for b in batches] == [[0, 1], [2, 3], [4, 0]]
    assert len(data.pixel_batches(8)) == 225  # ceil(1797 / 8)
    assert all(len(b) == 8 for b in data.pixel_batches(8))


def test_a_binary_request_is_a_json_header_then_the_raw_tensor() -> None:
    pixels = data.digit_images()[:3]
    request = data.v2_binary_request(pixels)
    size = int(request.headers[data.BINARY_HEADER])
    header = json.loads(request.body[:size])
    assert header["inputs"][0]["shape"] == [3, 64]
    assert header["inputs"][0]["parameters"]["binary_data_size"] == 3 * 64 * 4
    raw = np.frombuffer(request.body[size:], dtype="<f4").reshape(3, 64)
    assert np.array_equal(raw, pixels)
    assert header["outputs"] == [{"name": "probabilities", "parameters": {"binary_data": True}}]


def _binary_answer(values: np.ndarray, shape: list[int]) -> tuple[bytes, str]:
    raw = values.astype("<f4").tobytes()
    header = json.dumps(
        {
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return header + raw, str(len(header))


def test_binary_answers_are_checked_for_shape_and_probabilities() -> None:
    good = np.full((2, 10), 0.1, dtype=np.float32)
    assert checks.v2_binary(*_binary_answer(good, [2, 10]), "probabilities", 2) is None
    assert checks.v2_binary(*_binary_answer(good[:1], [1, 10]), "probabilities", 2) == (
        "probabilities: expected 80 bytes, got 40"
    )
    assert checks.v2_binary(*_binary_answer(good * 20, [2, 10]), "probabilities", 2) == (
        "probabilities: values outside 0..1"
    )
    body, _ = _binary_answer(good, [2, 10])
    assert checks.v2_binary(body, None, "probabilities", 2) == (
        "binary answer without inference-header-content-length"
    )


def test_json_answers_are_checked_for_shape_and_sums() -> None:
    def answer(rows: list[list[float]]) -> bytes:
        tensor = {
            "name": "probabilities",
            "shape": [len(rows), 10],
            "data": [x for r in rows for x in r],
        }
        return json.dumps({"outputs": [tensor]}).encode()

    assert checks.v2_json(answer([[0.1] * 10]), "probabilities", 1) is None
    assert checks.v2_json(answer([[0.2] * 10]), "probabilities", 1) == (
        "probabilities: a row does not sum to 1"
    )
    assert "expected shape [2, 10]" in str(checks.v2_json(answer([[0.1] * 10]), "probabilities", 2))
    assert (
        checks.v2_json(b"{}", "probabilities", 1) == "v2 JSON answer without output 'probabilities'"
    )


def test_error_answers_give_the_gateways_message() -> None:
    kserve = json.dumps({"error": "model 'x' not found"}).encode()
    openai = json.dumps({"error": {"message": "rate limited", "type": "rate_limit"}}).encode()
    assert checks.http_failure(404, kserve) == "HTTP 404: model 'x' not found"
    assert checks.http_failure(429, openai) == "HTTP 429: rate limited"
    assert checks.http_failure(502, b"<html>bad gateway") == "HTTP 502: <html>bad gateway"
    assert checks.http_failure(0, None, ConnectionRefusedError(111, "refused")) == (
        "no answer: ConnectionRefusedError(111, 'refused')"
    )
    assert checks.http_failure(200, b"") is None


def test_embeddings_answers_hold_one_vector_per_input() -> None:
    def answer(*vectors: list[float]) -> bytes:
        return json.dumps(
            {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}
        ).encode()

    assert checks.embeddings(answer([0.5] * 4, [0.1] * 4), 2, 4) is None
    assert checks.embeddings(answer([0.5] * 4), 2, 4) == "expected 2 embeddings, got 1"
    assert checks.embeddings(answer([0.5] * 3), 1, 4) == "expected vectors of 4 floats, got 3"


def test_a_stream_split_anywhere_gives_the_same_events() -> None:
    stream = b'data: {"a": 1}\n\ndata: {"b": 2}\r\n\r\n: comment\n\ndata: [DONE]\n\n'
    for cut in range(1, len(stream)):
        lines = checks.SseLines()
        events = lines.feed(stream[:cut]) + lines.feed(stream[cut:])
        assert events == ['{"a": 1}', '{"b": 2}', "[DONE]"]


def test_streamed_chunks_give_their_text_or_what_is_wrong() -> None:
    delta = {"choices": [{"index": 0, "delta": {"content": " world"}}]}
    assert checks.chat_chunk(json.dumps(delta)) == (None, " world")
    assert checks.chat_chunk(json.dumps({"choices": [], "usage": {}})) == (None, "")
    error = {"error": {"message": "upstream failed", "type": "server_error"}}
    assert checks.chat_chunk(json.dumps(error)) == ("stream error: upstream failed", "")
    assert checks.chat_chunk("{not json") == ("stream event that is not JSON", "")


def test_a_chat_answer_needs_a_reply() -> None:
    def answer(content: object, finish: str | None = "stop") -> bytes:
        choice = {"message": {"content": content}, "finish_reason": finish}
        return json.dumps({"choices": [choice]}).encode()

    assert checks.chat(answer("hello")) is None
    assert checks.chat(answer("")) == "chat answer with an empty reply"
    assert checks.chat(answer("hi", None)) == "chat answer without finish_reason"
    assert checks.chat(b"{}") == "chat answer without choices[0].message.content"


def _options(**changes: object) -> SimpleNamespace:
    """locust's parsed options as the locustfile's defaults leave them."""
    defaults: dict[str, object] = {
        "grpc_host": "",
        "digits_model": "digits",
        "embeddings_model": "embeddings",
        "chat_model": "chat",
        "api_key": "",
        "digits_batch": 1,
        "embeddings_batch": 1,
        "embedding_dim": 384,
        "chat_max_tokens": 16,
        "request_timeout": 10.0,
        "slo_source": "gateway",
        "slo_p50_ms": None,
        "slo_p99_ms": None,
        "max_failure_ratio": None,
        "slo_ttft_p50_ms": None,
        "slo_ttft_p99_ms": None,
        "slo_inter_chunk_p50_ms": None,
        "slo_inter_chunk_p99_ms": None,
        **dict.fromkeys(WEIGHT_OPTIONS.values(), 1),
    }
    return SimpleNamespace(**{**defaults, **changes})


def test_settings_come_from_the_options() -> None:
    settings = Settings.of(_options(api_key="k", weight_grpc=3), "http://gw.internal:9000/")
    assert settings.host == "http://gw.internal:9000"
    assert settings.grpc_host == "gw.internal:8001"
    assert settings.auth_headers() == {"Authorization": "Bearer k"}
    assert settings.weights["GrpcUser"] == 3
    assert Settings.of(_options(), None).host == "http://127.0.0.1:8000"
    assert Settings.of(_options(grpc_host="10.0.0.2:50051"), None).grpc_host == "10.0.0.2:50051"
    assert grpc_host_for("http://[::1]:8000") == "[::1]:8001"


def test_thresholds_typed_into_the_web_ui_are_numbers() -> None:
    # The web UI's form hands back options without a default as text.
    settings = Settings.of(_options(slo_p99_ms="50", slo_p50_ms="", max_failure_ratio="0.01"), None)
    assert settings.thresholds.requests == Limits(p50_ms=None, p99_ms=50.0, max_failure_ratio=0.01)
