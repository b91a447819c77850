"""What a text may cost a tokenizing backend (issue 14): texts cut before they are
tokenized, tokenized a group at a time, graph runs of at most max_execution_rows
rows (with the answer of a single run), a per-request text limit checked before
queueing, and /v1/embeddings sent to the backend in parts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.backends.onnx import OnnxBackend, OnnxBackendConfig
from gateway.backends.preprocess import BYTES_PER_TOKEN, TOKENIZE_GROUP, TextTokenizer
from gateway.backends.tensor_embedder import TensorEmbedder
from gateway.config.schema import BatchingConfig, TokenizerConfig
from gateway.core.errors import DeadlineExceeded, InvalidInput
from testkit.gateway_process import ROOT

EMBEDDER = ROOT / "models" / "embedder" / "1"
TOKENIZER = TokenizerConfig(path=str(EMBEDDER / "tokenizer.json"), max_length=256, max_texts=16)
# Texts of every length from 1 to over 256 tokens (so padding differs between groups).
TEXTS = [
    " ".join(f"w{j}" for j in range(1 + (i * 37) % 300)) for i in range(2 * TOKENIZE_GROUP + 5)
]


def texts_array(texts: list[str]) -> np.ndarray:
    array = np.empty(len(texts), dtype=object)
    array[:] = [t.encode() for t in texts]
    return array


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(TOKENIZER, Path(TOKENIZER.path))


def test_texts_tokenized_in_groups_are_padded_as_one_batch(tokenizer: TextTokenizer) -> None:
    grouped = tokenizer(texts_array(TEXTS))
    whole = tokenizer._tokenizer.encode_batch(TEXTS)
    np.testing.assert_array_equal(grouped["input_ids"], [e.ids for e in whole])
    np.testing.assert_array_equal(grouped["attention_mask"], [e.attention_mask for e in whole])


class EncodeSpy:
    """Stands in for the `tokenizers.Tokenizer`: records what it is asked to encode."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.texts: list[str] = []

    def encode_batch(self, texts: list[str]) -> Any:
        self.texts.extend(texts)
        return self.tokenizer.encode_batch(texts)


def test_a_text_is_cut_before_it_is_tokenized(
    tokenizer: TextTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut = TOKENIZER.max_length * BYTES_PER_TOKEN
    assert tokenizer.max_text_bytes == cut
    # What lies past the cut is not read at all (here: the only word).
    ids = tokenizer(texts_array([" " * cut + "hello"]))["input_ids"]
    assert ids.shape == (1, 2)  # [CLS] [SEP]
    # A text of megabytes reaches the tokenizer cut to `cut` bytes: encoding it
    # whole first would cost seconds and hundreds of megabytes.
    spy = EncodeSpy(tokenizer._tokenizer)
    monkeypatch.setattr(tokenizer, "_tokenizer", spy)
    text = "lorem ipsum " * 300_000  # 3.6 MB
    long = tokenizer(texts_array([text]))["input_ids"]
    assert spy.texts == [text[:cut]]
    assert long.shape == (1, TOKENIZER.max_length)


def backend(rows: int | None) -> OnnxBackend:
    config = OnnxBackendConfig(
        type="onnx",
        path=str(EMBEDDER / "model.onnx"),
        max_concurrency=1,
        tokenizer=TOKENIZER,
        batching=None if rows is None else BatchingConfig(max_batch_size=rows),
    )
    return OnnxBackend(
        "embedder", config, Path(config.path), TextTokenizer(TOKENIZER, Path(TOKENIZER.path))
    )


class RunSpy:
    """Stands in for the session: records the rows of each run."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.rows: list[int] = []

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> Any:
        self.rows.append(len(next(iter(feeds.values()))))
        return self.session.run(outputs, feeds)


def test_runs_take_at_most_max_batch_size_texts_and_answer_as_one_run() -> None:
    chunked, whole = backend(4), backend(64)
    texts = texts_array(TEXTS[:10])
    spy = RunSpy(chunked.session)
    chunked.session = spy
    assert chunked.max_execution_rows == 4 and whole.max_execution_rows == 16  # max_texts
    vectors = chunked._run({"text": texts}, ["embedding"])["embedding"]
    assert spy.rows == [4, 4, 2]
    np.testing.assert_allclose(
        vectors, whole._run({"text": texts}, ["embedding"])["embedding"], atol=2e-5
    )
    assert backend(None).max_execution_rows == 16  # without batching: 32, within max_texts


def test_no_text_is_no_run() -> None:
    empty = backend(4)
    spy = RunSpy(empty.session)
    empty.session = spy
    answer = empty._run({"text": texts_array([])}, ["embedding"])
    assert answer["embedding"].shape == (0, 384) and spy.rows == []


def test_more_texts_than_max_texts_are_refused_before_they_are_queued() -> None:
    refusing = backend(4)
    refusing.check_request({"text": texts_array(["a"] * 16)})
    with pytest.raises(InvalidInput) as refused:
        refusing.check_request({"text": texts_array(["a"] * 17)})
    assert refused.value.message == (
        "input 'text': 17 texts, at most 16 per request (backend 'embedder': tokenizer.max_texts)"
    )


class PartsBackend:
    """A local backend that answers one vector per text and records each call;
    `outlast_deadline`: each call answers only once its deadline has passed."""

    name = "parts"
    max_execution_rows = 3

    def __init__(self, outlast_deadline: bool = False) -> None:
        self.calls: list[int] = []
        self.outlast_deadline = outlast_deadline

    def ready(self) -> bool:
        return True

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        self.calls.append(len(inputs["text"]))
        if self.outlast_deadline:
            assert deadline is not None
            while time.monotonic() <= deadline:
                await asyncio.sleep(deadline - time.monotonic() + 0.001)
        return {"embedding": np.array([[len(t), 0.0] for t in inputs["text"]], np.float32)}


def test_embeddings_are_sent_in_parts_each_queued_on_its_own() -> None:
    parts = PartsBackend()
    embedder = TensorEmbedder(parts, "text", "embedding")  # type: ignore[arg-type]
    result = asyncio.run(embedder.embed([f"{'x' * i}" for i in range(7)], time.monotonic() + 5.0))
    assert parts.calls == [3, 3, 1]
    assert result.vectors[:, 0].tolist() == list(range(7))


def test_parts_stop_once_the_deadline_has_passed() -> None:
    # The first part is answered after the deadline (whatever this machine's
    # speed): the next parts are never sent.
    parts = PartsBackend(outlast_deadline=True)
    embedder = TensorEmbedder(parts, "text", "embedding")  # type: ignore[arg-type]

    async def embed() -> object:
        return await embedder.embed(["x"] * 9, time.monotonic() + 0.05)

    with pytest.raises(DeadlineExceeded, match="3 done, in parts of 3"):
        asyncio.run(embed())
    assert parts.calls == [3]
