"""The OpenAI-compatible surface with the real clients over real HTTP: the `openai`
SDK (sync, async, streaming) and `langchain-openai`, against chat models backed
by an OpenAI-compatible vendor and by Anthropic (two fake vendors), vendor and
local embeddings, and the tokens and cost the gateway accounts for each call.

Expected values come from the fake vendor's documented rules (reply = "echo: "
+ the last user message, padded with "pad" to `completion_tokens` words; a
token is a whitespace-separated word), never from the gateway's answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai
import pytest
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from testkit.fake_vendor import embedding_vector, reset_fake_vendor, start_fake_vendor
from tests.api.http_helpers import post
from tests.conftest import GatewayProcess, start_gateway
from tests.metrics_reader import value

# The variable the gateway reads the vendors' key from (the fake vendor's default key).
KEY_ENV = "OPENAI_SURFACE_TEST_VENDOR_KEY"
VENDOR_KEY = "fake-key"
COMPLETION_TOKENS = 8  # the fake vendor's default reply length
EMBEDDING_DIM = 384  # the fake vendor's default, and the local embedder's

PRICES = {
    "a-gpt": {
        "usd_per_request": 0.0001,
        "usd_per_1k_input_tokens": 0.5,
        "usd_per_1k_output_tokens": 1.5,
    },
    "b-claude": {
        "usd_per_request": 0.0002,
        "usd_per_1k_input_tokens": 3.0,
        "usd_per_1k_output_tokens": 15.0,
    },
    "a-embed": {"usd_per_request": 0.00005, "usd_per_1k_input_tokens": 0.02},
}
BACKEND_OF = {"gpt": "a-gpt", "claude": "b-claude"}
CHAT_MODELS = list(BACKEND_OF)

PARAPHRASES = [
    ("A man is playing a guitar on stage.", "Someone performs music with a guitar at a concert."),
    ("The cat sleeps on the warm windowsill.", "A kitten is napping by the sunny window."),
    ("How do I reset my password?", "What are the steps to change my login password?"),
]
UNRELATED = "Quarterly revenue grew by twelve percent in the northern region."


# -- helpers shared with the other test_openai_* modules ---------------------------


def words(*texts: str) -> int:
    """Tokens as the fake vendor counts them."""
    return sum(len(t.split()) for t in texts)


def expected_reply(
    user_text: str, max_tokens: int | None = None, completion_tokens: int = COMPLETION_TOKENS
) -> str:
    """The fake vendor's reply to a last user message `user_text`."""
    reply = ("echo: " + user_text).split()[:completion_tokens]
    reply += ["pad"] * (completion_tokens - len(reply))
    return " ".join(reply if max_tokens is None else reply[:max_tokens])


# These tests inject one failure at a time and look at what that one call does;
# a circuit breaker remembering earlier tests' failures would change the answer
# (breakers have tests of their own), so it is off here.
_ONE_CALL_AT_A_TIME = {"retries": {"max": 0}, "circuit_breaker": {"enabled": False}}


def openai_backend(vendor_url: str, **extra: object) -> dict:
    return {
        "type": "openai",
        "base_url": f"http://{vendor_url}/v1",
        "api_key_env": KEY_ENV,
        "model": "fake-chat",
        **_ONE_CALL_AT_A_TIME,
        **extra,
    }


def anthropic_backend(vendor_url: str, **extra: object) -> dict:
    return {
        "type": "anthropic",
        "base_url": f"http://{vendor_url}",
        "api_key_env": KEY_ENV,
        "model": "fake-claude",
        **_ONE_CALL_AT_A_TIME,
        **extra,
    }


def chat_model(*backends: str) -> dict:
    return {"kind": "chat", "route": {"strategy": "fallback", "backends": list(backends)}}


@dataclass(frozen=True)
class Vendors:
    a: str  # host:port of fake vendor A
    b: str  # host:port of fake vendor B

    def reset(self) -> None:
        reset_fake_vendor(self.a)
        reset_fake_vendor(self.b)


@contextmanager
def running_vendors() -> Iterator[Vendors]:
    a = start_fake_vendor()
    try:
        b = start_fake_vendor()
        try:
            yield Vendors(a.url, b.url)
        finally:
            b.stop()
    finally:
        a.stop()


@contextmanager
def serving(
    config: dict, workdir: Path, env: dict[str, str] | None = None
) -> Iterator[GatewayProcess]:
    """A gateway for `config` whose vendor keys (and `env`) are in its environment;
    on the way out, checks it stayed alive and never hit an internal error."""
    with pytest.MonkeyPatch.context() as patch:
        for name, secret in {KEY_ENV: VENDOR_KEY, **(env or {})}.items():
            patch.setenv(name, secret)
        gateway = start_gateway(config, workdir)
    try:
        yield gateway
    finally:
        alive_until_the_end = gateway.process.poll() is None
        gateway.stop()
    logs = gateway.logs()
    assert alive_until_the_end, f"the gateway died during the tests:\n{logs}"
    assert "this is a gateway bug" not in logs and "internal error" not in logs, logs


def sdk(gateway: GatewayProcess, api_key: str = "unused") -> openai.OpenAI:
    # max_retries=0: the SDK's own retries would hide the gateway's status and
    # double what the fake vendors count.
    return openai.OpenAI(base_url=f"http://{gateway.url}/v1", api_key=api_key, max_retries=0)


def async_sdk(gateway: GatewayProcess, api_key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://{gateway.url}/v1", api_key=api_key, max_retries=0)


def cost_of(backend: str, prompt_tokens: int, completion_tokens: int) -> float:
    price = PRICES[backend]
    return (
        price.get("usd_per_request", 0.0)
        + prompt_tokens * price.get("usd_per_1k_input_tokens", 0.0) / 1000.0
        + completion_tokens * price.get("usd_per_1k_output_tokens", 0.0) / 1000.0
    )


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vendors() -> Iterator[Vendors]:
    with running_vendors() as started:
        yield started


@pytest.fixture(autouse=True)
def fresh_vendors(vendors: Vendors) -> None:
    vendors.reset()


@pytest.fixture(scope="module")
def gateway(vendors: Vendors, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    embedder = "models/embedder/1"
    text_to_vector = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, EMBEDDING_DIM]}],
    }
    config = {
        "backends": {
            "a-gpt": openai_backend(vendors.a, cost=PRICES["a-gpt"]),
            "b-claude": anthropic_backend(vendors.b, cost=PRICES["b-claude"]),
            "a-embed": openai_backend(vendors.a, model="fake-embed", cost=PRICES["a-embed"]),
            "embedder-cpu": {
                "type": "onnx",
                "path": f"{embedder}/model.onnx",
                "providers": ["cpu"],
                "intra_op_threads": 1,
                "max_concurrency": 1,
                "tokenizer": {
                    "path": f"{embedder}/tokenizer.json",
                    "input": "text",
                    "max_length": 256,
                },
            },
        },
        "models": {
            "gpt": chat_model("a-gpt"),
            "claude": chat_model("b-claude"),
            "vendor-embed": {"kind": "embeddings", "route": {"backends": ["a-embed"]}},
            "local-embed": {
                "kind": "embeddings",
                "signature": text_to_vector,
                "route": {"backends": ["embedder-cpu"]},
            },
            "embedder": {"signature": text_to_vector, "route": {"backends": ["embedder-cpu"]}},
        },
    }
    with serving(config, tmp_path_factory.mktemp("openai-surface")) as started:
        yield started


# -- the openai SDK: whole answers ----------------------------------------------------


def conversation(question: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": question},
    ]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_sync_completion_has_the_vendors_text_usage_and_the_gateway_model_name(
    gateway: GatewayProcess, model: str
) -> None:
    question = f"what is the capital of France, asks {model}"
    messages = conversation(question)
    raw = sdk(gateway).chat.completions.with_raw_response.create(model=model, messages=messages)
    answer = raw.parse()

    assert raw.headers["x-gateway-backend"] == BACKEND_OF[model]
    assert answer.model == model
    assert answer.object == "chat.completion"
    assert len(answer.choices) == 1
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_reply(question)
    assert choice.finish_reason == "stop"
    prompt = words(*(m["content"] for m in messages))
    assert (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
        answer.usage.total_tokens,
    ) == (prompt, COMPLETION_TOKENS, prompt + COMPLETION_TOKENS)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    gateway: GatewayProcess, model: str
) -> None:
    question = "one two three four five six seven"
    answer = sdk(gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=3
    )
    assert answer.choices[0].message.content == expected_reply(question, max_tokens=3)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 3


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_async_client_gets_the_same_answer_whole_and_streamed(
    gateway: GatewayProcess, model: str
) -> None:
    question = f"async question for {model}"
    messages = [{"role": "user", "content": question}]

    async def both() -> tuple[openai.types.chat.ChatCompletion, list]:
        async with async_sdk(gateway) as client:
            whole = await client.chat.completions.create(model=model, messages=messages)
            stream = await client.chat.completions.create(
                model=model, messages=messages, stream=True, stream_options={"include_usage": True}
            )
            return whole, [chunk async for chunk in stream]

    whole, chunks = asyncio.run(both())
    assert whole.model == model
    assert whole.choices[0].message.content == expected_reply(question)
    assert whole.usage.prompt_tokens == words(question)
    assert streamed_text(chunks) == whole.choices[0].message.content
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


# -- the openai SDK: streams ------------------------------------------------------------


def streamed_text(chunks: list) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_stream_concatenates_to_the_whole_answer_without_a_usage_chunk(
    gateway: GatewayProcess, model: str
) -> None:
    question = f"tell me a story about {model} streams"
    messages = [{"role": "user", "content": question}]
    client = sdk(gateway)
    whole = client.chat.completions.create(model=model, messages=messages)
    chunks = list(client.chat.completions.create(model=model, messages=messages, stream=True))

    assert streamed_text(chunks) == whole.choices[0].message.content == expected_reply(question)
    assert all(c.model == model for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    # No usage was asked for: none is shown, and every chunk has its choice.
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_stream_with_include_usage_ends_with_a_usage_chunk(
    gateway: GatewayProcess, model: str
) -> None:
    question = f"count the words of {model}"
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": question}]
    chunks = list(
        sdk(gateway).chat.completions.create(
            model=model,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=5,
        )
    )

    *content, last = chunks
    assert streamed_text(content) == expected_reply(question, max_tokens=5)
    assert [c.choices[0].finish_reason for c in content if c.choices[0].finish_reason] == ["length"]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        words("Be terse.", question),
        5,
        words("Be terse.", question) + 5,
    )
    assert all(c.choices for c in content)


# -- langchain-openai --------------------------------------------------------------------


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_langchain_chat_invoke_and_stream(gateway: GatewayProcess, model: str) -> None:
    chat = ChatOpenAI(
        base_url=f"http://{gateway.url}/v1", api_key="unused", model=model, max_retries=0
    )
    question = f"langchain asks {model} something"
    message = chat.invoke(question)
    assert message.content == expected_reply(question)
    assert message.usage_metadata["input_tokens"] == words(question)
    assert message.usage_metadata["output_tokens"] == COMPLETION_TOKENS
    assert "".join(chunk.content for chunk in chat.stream(question)) == message.content


def test_langchain_embeddings_from_the_vendor_and_the_local_model(gateway: GatewayProcess) -> None:
    texts = ["first document here", "second one"]
    vendor = OpenAIEmbeddings(
        base_url=f"http://{gateway.url}/v1",
        api_key="unused",
        model="vendor-embed",
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    vectors = np.array(vendor.embed_documents(texts))
    np.testing.assert_allclose(
        vectors, [embedding_vector(t, EMBEDDING_DIM) for t in texts], atol=1e-6
    )

    local = OpenAIEmbeddings(
        base_url=f"http://{gateway.url}/v1",
        api_key="unused",
        model="local-embed",
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    a, b = PARAPHRASES[0]
    va, vb, vu = np.array(local.embed_documents([a, b, UNRELATED]))
    assert va.shape == (EMBEDDING_DIM,)
    assert float(va @ vb) > float(va @ vu) + 0.2


# -- cost and tokens ------------------------------------------------------------------------


def accounting(gateway: GatewayProcess, model: str, backend: str) -> tuple[float, float, float]:
    """(input tokens, output tokens, cost) counted so far for `model` on `backend`."""
    return (
        value(
            gateway.port, "gateway_tokens_total", model=model, backend=backend, direction="input"
        ),
        value(
            gateway.port, "gateway_tokens_total", model=model, backend=backend, direction="output"
        ),
        value(gateway.port, "gateway_cost_usd_total", model=model, backend=backend, tenant=""),
    )


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_cost_header_and_metrics_follow_the_usage_and_the_prices(
    gateway: GatewayProcess, model: str
) -> None:
    backend = BACKEND_OF[model]
    messages = conversation("how much does this cost")
    before = accounting(gateway, model, backend)
    raw = sdk(gateway).chat.completions.with_raw_response.create(model=model, messages=messages)
    usage = raw.parse().usage
    after = accounting(gateway, model, backend)

    prompt = words(*(m["content"] for m in messages))
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, COMPLETION_TOKENS)
    cost = cost_of(backend, usage.prompt_tokens, usage.completion_tokens)
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(cost, abs=1e-8)
    assert after[0] - before[0] == usage.prompt_tokens
    assert after[1] - before[1] == usage.completion_tokens
    assert after[2] - before[2] == pytest.approx(cost, rel=1e-9)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_a_stream_is_accounted_even_when_the_caller_did_not_ask_for_usage(
    gateway: GatewayProcess, model: str
) -> None:
    backend = BACKEND_OF[model]
    question = "stream me something costly please"
    before = accounting(gateway, model, backend)
    chunks = list(
        sdk(gateway).chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], stream=True
        )
    )
    after = accounting(gateway, model, backend)

    assert streamed_text(chunks) == expected_reply(question)
    assert after[0] - before[0] == words(question)
    assert after[1] - before[1] == COMPLETION_TOKENS
    assert after[2] - before[2] == pytest.approx(
        cost_of(backend, words(question), COMPLETION_TOKENS), rel=1e-9
    )


def test_embeddings_are_accounted_by_input_tokens(gateway: GatewayProcess) -> None:
    texts = ["three little words", "and two"]
    before = accounting(gateway, "vendor-embed", "a-embed")
    raw = sdk(gateway).embeddings.with_raw_response.create(model="vendor-embed", input=texts)
    after = accounting(gateway, "vendor-embed", "a-embed")

    assert raw.parse().usage.prompt_tokens == words(*texts)
    cost = cost_of("a-embed", words(*texts), 0)
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(cost, abs=1e-8)
    assert (after[0] - before[0], after[1] - before[1]) == (words(*texts), 0)
    assert after[2] - before[2] == pytest.approx(cost, rel=1e-9)


# -- embeddings --------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
def test_vendor_embeddings_reach_the_caller_unchanged(
    gateway: GatewayProcess, encoding: str | None
) -> None:
    texts = ["the quick brown fox", "jumps over", "the lazy dog"]
    options = {} if encoding is None else {"encoding_format": encoding}
    result = sdk(gateway).embeddings.create(model="vendor-embed", input=texts, **options)

    assert result.model == "vendor-embed"
    assert [d.index for d in result.data] == [0, 1, 2]
    if encoding == "base64":  # asked for explicitly, the SDK hands the string over
        vectors = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in result.data]
    else:  # by default the SDK asks for base64 and decodes it itself
        vectors = [d.embedding for d in result.data]
    np.testing.assert_allclose(
        np.array(vectors), [embedding_vector(t, EMBEDDING_DIM) for t in texts], atol=1e-6
    )
    assert result.usage.prompt_tokens == result.usage.total_tokens == words(*texts)


def test_a_single_string_input_gives_one_embedding(gateway: GatewayProcess) -> None:
    result = sdk(gateway).embeddings.create(
        model="vendor-embed", input="just one text", encoding_format="float"
    )
    assert len(result.data) == 1
    np.testing.assert_allclose(
        result.data[0].embedding, embedding_vector("just one text", EMBEDDING_DIM), atol=1e-6
    )


def v2_embeddings(gateway: GatewayProcess, texts: list[str]) -> np.ndarray:
    body = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    )
    reply = post(gateway.port, "/v2/models/embedder/infer", body)
    assert reply.status == 200, reply.body
    output = json.loads(reply.body)["outputs"][0]
    assert output["shape"] == [len(texts), EMBEDDING_DIM]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_local_embedder_serves_the_sdk_with_the_same_vectors_as_v2_infer(
    gateway: GatewayProcess, encoding: str
) -> None:
    texts = [t for pair in PARAPHRASES for t in pair] + [UNRELATED]
    raw = sdk(gateway).embeddings.with_raw_response.create(
        model="local-embed", input=texts, encoding_format=encoding
    )
    result = raw.parse()
    assert raw.headers["x-gateway-backend"] == "embedder-cpu"
    assert result.model == "local-embed"
    if encoding == "base64":
        vectors = np.stack(
            [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in result.data]
        )
    else:
        vectors = np.array([d.embedding for d in result.data], dtype=np.float32)

    assert vectors.shape == (len(texts), EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    unrelated = vectors[-1]
    for i in range(len(PARAPHRASES)):
        a, b = vectors[2 * i], vectors[2 * i + 1]
        assert float(a @ b) > float(a @ unrelated) + 0.2, PARAPHRASES[i]
    np.testing.assert_allclose(vectors, v2_embeddings(gateway, texts), atol=1e-5)


# -- models --------------------------------------------------------------------------------------


def test_models_lists_the_chat_and_embeddings_models_only(gateway: GatewayProcess) -> None:
    listed = sorted(m.id for m in sdk(gateway).models.list())
    assert listed == ["claude", "gpt", "local-embed", "vendor-embed"]
