"""LlamaIndex as a client of the gateway's OpenAI API, as teams use it: its
OpenAI-compatible LLM (`OpenAILike`) for chat, whole, streamed and async, and
its OpenAI embedding class, against the same gateway, fake vendors and local
embedder as the openai SDK and LangChain tests (test_openai_surface.py).

Expected values come from the fake vendor's documented rules, never from the
gateway's answers.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from llama_index.core.llms import ChatMessage
from llama_index.embeddings.openai import OpenAIEmbedding
from llama_index.llms.openai_like import OpenAILike

from testkit.fake_vendor import embedding_vector
from tests.api.test_openai_surface import (  # its fixtures too: gateway, vendors, fresh_vendors
    CHAT_MODELS,
    COMPLETION_TOKENS,
    EMBEDDING_DIM,
    PARAPHRASES,
    UNRELATED,
    expected_reply,
    fresh_vendors,
    gateway,
    vendors,
    words,
)
from tests.conftest import GatewayProcess


def llm(gateway: GatewayProcess, model: str) -> OpenAILike:
    # max_retries=0: retries in the client would hide the gateway's status.
    return OpenAILike(
        model=model,
        api_base=f"http://{gateway.url}/v1",
        api_key="unused",
        is_chat_model=True,
        context_window=4096,
        max_retries=0,
    )


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_llamaindex_chat_whole_streamed_and_async(gateway: GatewayProcess, model: str) -> None:
    client = llm(gateway, model)
    question = f"llamaindex asks {model} something"
    messages = [
        ChatMessage(role="system", content="Be terse."),
        ChatMessage(role="user", content=question),
    ]

    answer = client.chat(messages)
    assert answer.message.content == expected_reply(question)
    usage = answer.raw.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        words("Be terse.", question),
        COMPLETION_TOKENS,
    )

    streamed = "".join(chunk.delta or "" for chunk in client.stream_chat(messages))
    assert streamed == answer.message.content

    async def ask() -> str:
        return str((await client.achat(messages)).message.content)

    assert asyncio.run(ask()) == answer.message.content


def test_llamaindex_complete_goes_through_chat(gateway: GatewayProcess) -> None:
    prompt = "complete this for llamaindex"
    assert llm(gateway, "gpt").complete(prompt).text == expected_reply(prompt)


def test_llamaindex_embeddings_from_the_vendor_and_the_local_model(
    gateway: GatewayProcess,
) -> None:
    texts = ["first document here", "second one"]
    vendor = OpenAIEmbedding(
        model_name="vendor-embed",
        api_base=f"http://{gateway.url}/v1",
        api_key="unused",
        max_retries=0,
    )
    np.testing.assert_allclose(
        np.array(vendor.get_text_embedding_batch(texts)),
        [embedding_vector(t, EMBEDDING_DIM) for t in texts],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        vendor.get_query_embedding(texts[0]), embedding_vector(texts[0], EMBEDDING_DIM), atol=1e-6
    )

    local = OpenAIEmbedding(
        model_name="local-embed",
        api_base=f"http://{gateway.url}/v1",
        api_key="unused",
        max_retries=0,
    )
    a, b = PARAPHRASES[0]
    va, vb, vu = np.array(local.get_text_embedding_batch([a, b, UNRELATED]))
    assert va.shape == (EMBEDDING_DIM,)
    assert float(va @ vb) > float(va @ vu) + 0.2
