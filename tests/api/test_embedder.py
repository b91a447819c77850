"""The embedder: text in (BYTES), L2-normalised sentence embeddings out, tokenized
inside the gateway, batched across callers."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import ROOT, GatewayProcess, start_gateway

MODEL_DIR = ROOT / "models" / "embedder" / "1"
PARAPHRASES = [
    ("A man is playing a guitar on stage.", "Someone performs music with a guitar at a concert."),
    ("The cat sleeps on the warm windowsill.", "A kitten is napping by the sunny window."),
    ("How do I reset my password?", "What are the steps to change my login password?"),
]
UNRELATED = "Quarterly revenue grew by twelve percent in the northern region."


@pytest.fixture(scope="module")
def embedder_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "backends": {
            "embedder-cpu": {
                "type": "onnx",
                "path": str(MODEL_DIR / "model.onnx"),
                "max_concurrency": 1,
                "tokenizer": {"path": str(MODEL_DIR / "tokenizer.json"), "max_length": 256},
                "batching": {"max_batch_size": 16, "max_queue_delay_us": 20000},
            }
        },
        "models": {
            "embedder": {
                "signature": {
                    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                    "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
                },
                "route": {"backends": ["embedder-cpu"]},
            }
        },
    }
    gateway = start_gateway(config, tmp_path_factory.mktemp("embedder"))
    yield gateway
    gateway.stop()


def embed(gateway: GatewayProcess, texts: list[str], binary: bool = True) -> np.ndarray:
    client = httpclient.InferenceServerClient(gateway.url)
    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(
        np.array([t.encode() for t in texts], dtype=object), binary_data=binary
    )
    result = client.infer(
        "embedder",
        [tensor],
        outputs=[httpclient.InferRequestedOutput("embedding", binary_data=binary)],
    )
    return result.as_numpy("embedding")


def test_paraphrases_are_closer_than_unrelated_sentences(embedder_gateway) -> None:
    for a, b in PARAPHRASES:
        va, vb, vu = embed(embedder_gateway, [a, b, UNRELATED])
        assert va.shape == (384,)
        np.testing.assert_allclose(np.linalg.norm([va, vb, vu], axis=1), 1.0, atol=1e-4)
        assert float(va @ vb) > float(va @ vu) + 0.2, (a, b)


def test_json_and_binary_agree_and_batching_does_not_change_embeddings(embedder_gateway) -> None:
    texts = [t for pair in PARAPHRASES for t in pair] + [UNRELATED, "short", "x " * 300]
    together = embed(embedder_gateway, texts, binary=False)
    with ThreadPoolExecutor(len(texts)) as pool:  # concurrent callers share batches
        alone = list(pool.map(lambda t: embed(embedder_gateway, [t])[0], texts))
    np.testing.assert_allclose(np.stack(alone), together, atol=1e-4)
