"""The fake vendor, driven over real HTTP by the real openai and anthropic SDKs."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import numpy as np
import openai
import pytest

from testkit.fake_vendor import (
    MODELS,
    compose_reply,
    control_fake_vendor,
    embedding_vector,
    fake_vendor_stats,
    reset_fake_vendor,
    start_fake_vendor,
)
from testkit.gateway_process import GatewayProcess

KEY = "fake-key"
USER = [{"role": "user", "content": "hello there"}]
# "echo: hello there" padded to the default 8 words.
HELLO_REPLY = "echo: hello there pad pad pad pad pad"


@pytest.fixture(scope="module")
def vendor() -> Iterator[GatewayProcess]:
    server = start_fake_vendor()
    yield server
    alive_until_the_end = server.process.poll() is None
    server.stop()
    assert alive_until_the_end, f"the fake vendor died during the tests:\n{server.logs()}"
    # Faults are on purpose: none of them may show up as an error in the server itself.
    assert server.logs().splitlines()[1:] == [], server.logs()


@pytest.fixture(autouse=True)
def fresh(vendor: GatewayProcess) -> None:
    reset_fake_vendor(vendor.url)


@pytest.fixture()
def oai(vendor: GatewayProcess) -> Iterator[openai.OpenAI]:
    # A short timeout turns a server that forgot to answer into a failure, not a hang.
    with openai.OpenAI(
        base_url=f"http://{vendor.url}/v1", api_key=KEY, max_retries=0, timeout=10
    ) as client:
        yield client


@pytest.fixture()
def claude(vendor: GatewayProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=f"http://{vendor.url}", api_key=KEY, max_retries=0, timeout=10
    ) as client:
        yield client


def raw_post(
    vendor: GatewayProcess, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", vendor.port, timeout=5)
    try:
        conn.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def route_stats(vendor: GatewayProcess, path: str) -> dict[str, int]:
    return fake_vendor_stats(vendor.url)["routes"].get(path, {})


# -- content and usage ----------------------------------------------------------------


def test_reply_rule() -> None:
    assert compose_reply("a b c d e f g h i", 4, None).words == ["echo:", "a", "b", "c"]
    assert compose_reply("", 3, None).words == ["echo:", "pad", "pad"]
    capped = compose_reply("a b", 8, 2)
    assert (capped.words, capped.truncated) == (["echo:", "a"], True)
    stopped = compose_reply("one two three", 8, None, ("two",))
    assert (stopped.text, stopped.stop_sequence, stopped.truncated) == ("echo: one", "two", False)


def test_openai_chat_text_usage_and_finish(oai: openai.OpenAI) -> None:
    answer = oai.chat.completions.create(
        model="fake-chat",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
    )
    assert answer.model == "fake-chat"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == HELLO_REPLY
    assert answer.choices[0].finish_reason == "stop"
    usage = answer.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 8, 12)


def test_openai_chat_content_parts_and_max_tokens(oai: openai.OpenAI) -> None:
    messages: Any = [
        {"role": "user", "content": "first question here"},
        {"role": "assistant", "content": "an answer"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "the"}, {"type": "text", "text": "last one"}],
        },
    ]
    answer = oai.chat.completions.create(model="m", messages=messages, max_completion_tokens=3)
    assert answer.choices[0].message.content == "echo: the last"
    assert answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (8, 3)
    legacy = oai.chat.completions.create(model="m", messages=messages, max_tokens=2)
    assert legacy.choices[0].message.content == "echo: the"


def test_openai_stream_one_word_per_delta_then_usage(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert deltas == ["echo:"] + [" " + word for word in HELLO_REPLY.split()[1:]]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 8)
    assert len({c.id for c in chunks}) == 1


def test_openai_stream_without_usage_stops_at_length(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="m", messages=USER, stream=True, max_tokens=2))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: hello"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


def test_openai_async_client(vendor: GatewayProcess) -> None:
    async def talk() -> tuple[str, str]:
        async with openai.AsyncOpenAI(
            base_url=f"http://{vendor.url}/v1", api_key=KEY, max_retries=0
        ) as client:
            plain = await client.chat.completions.create(model="m", messages=USER)
            stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
            return plain.choices[0].message.content or "", streamed

    assert asyncio.run(talk()) == (HELLO_REPLY, HELLO_REPLY)


def test_embeddings_base64_default_and_float(oai: openai.OpenAI) -> None:
    texts = ["hello world", "good bye now"]
    default = oai.embeddings.create(model="fake-embed", input=texts)  # the SDK asks for base64
    floats = oai.embeddings.create(model="fake-embed", input=texts, encoding_format="float")
    assert (default.usage.prompt_tokens, default.usage.total_tokens) == (5, 5)
    assert [d.index for d in default.data] == [0, 1]
    for text, b64_item, float_item in zip(texts, default.data, floats.data):
        from_b64 = np.asarray(b64_item.embedding, dtype=np.float32)
        from_json = np.asarray(float_item.embedding, dtype=np.float32)
        assert from_b64.shape == (384,)
        np.testing.assert_array_equal(from_b64, from_json)
        np.testing.assert_array_equal(from_b64, embedding_vector(text, 384))
        assert abs(float(np.linalg.norm(from_b64)) - 1.0) < 1e-5
    assert not np.allclose(default.data[0].embedding, default.data[1].embedding)


def test_embeddings_single_string_dimensions_and_raw_base64(
    vendor: GatewayProcess, oai: openai.OpenAI
) -> None:
    one = oai.embeddings.create(model="m", input="just one", dimensions=16, encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 16
    status, body = raw_post(
        vendor,
        "/v1/embeddings",
        json.dumps({"model": "m", "input": "x", "encoding_format": "base64"}).encode(),
        {"Authorization": f"Bearer {KEY}"},
    )
    assert status == 200
    raw = base64.b64decode(body["data"][0]["embedding"])
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), embedding_vector("x", 384))


def test_models_in_both_shapes(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    assert [m.id for m in oai.models.list()] == list(MODELS)
    assert [m.id for m in claude.models.list()] == list(MODELS)


# -- Anthropic ------------------------------------------------------------------------


def test_anthropic_create(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="fake-claude",
        max_tokens=100,
        system="you are terse",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    )
    assert (message.type, message.role, message.model) == ("message", "assistant", "fake-claude")
    assert [block.text for block in message.content] == [HELLO_REPLY]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 8)


def test_anthropic_max_tokens_and_stop_sequences(claude: anthropic.Anthropic) -> None:
    capped = claude.messages.create(model="m", max_tokens=3, messages=USER)
    assert (capped.content[0].text, capped.stop_reason, capped.usage.output_tokens) == (
        "echo: hello there",
        "max_tokens",
        3,
    )
    stopped = claude.messages.create(
        model="m", max_tokens=50, messages=USER, stop_sequences=["there"]
    )
    assert (stopped.content[0].text, stopped.stop_reason, stopped.stop_sequence) == (
        "echo: hello",
        "stop_sequence",
        "there",
    )
    assert stopped.usage.output_tokens == 2


def test_anthropic_stream_helper(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="m", max_tokens=4, system=[{"type": "text", "text": "short"}], messages=USER
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["echo:", " hello", " there", " pad"]
    assert final.content[0].text == "echo: hello there pad"
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)


def test_anthropic_raw_event_order(vendor: GatewayProcess, claude: anthropic.Anthropic) -> None:
    control_fake_vendor(vendor.url, completion_tokens=2)
    events = list(claude.messages.create(model="m", max_tokens=10, messages=USER, stream=True))
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK drops the ping
    assert events[0].message.usage.input_tokens == 2
    assert (events[-2].delta.stop_reason, events[-2].usage.output_tokens) == ("end_turn", 2)


# -- auth and bad requests --------------------------------------------------------------


def test_openai_wrong_and_missing_key(vendor: GatewayProcess) -> None:
    with (
        openai.OpenAI(base_url=f"http://{vendor.url}/v1", api_key="wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    status, body = raw_post(vendor, "/v1/chat/completions", b"{}", {})
    assert status == 401
    assert set(body["error"]) >= {"message", "type", "code"}
    assert route_stats(vendor, "/v1/chat/completions") == {"received": 2, "401": 2}


def test_openai_bad_bodies(vendor: GatewayProcess, oai: openai.OpenAI) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    for body, needle in [
        (b"{not json", "not valid JSON"),
        (b'{"model": "m"}', "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "content"),
    ]:
        status, answer = raw_post(vendor, "/v1/chat/completions", body, auth)
        assert status == 400, body
        assert answer["error"]["type"] == "invalid_request_error"
        assert needle in answer["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="m", input=[])


def test_anthropic_auth_and_bad_requests(vendor: GatewayProcess) -> None:
    with (
        anthropic.Anthropic(
            base_url=f"http://{vendor.url}", api_key="wrong", max_retries=0
        ) as client,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        client.messages.create(model="m", max_tokens=10, messages=USER)
    assert caught.value.body["error"]["type"] == "authentication_error"
    good = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    status, body = raw_post(vendor, "/v1/messages", b"{}", {**good, "x-api-key": "wrong"})
    assert (status, body["error"]["type"]) == (401, "authentication_error")
    status, body = raw_post(
        vendor,
        "/v1/messages",
        b'{"model": "m", "max_tokens": 5, "temperature": 0.5, '
        b'"messages": [{"role": "user", "content": "hi"}]}',
        good,
    )
    assert (status, body["content"][0]["text"], body["stop_reason"]) == (
        200,
        "echo: hi pad pad pad",
        "max_tokens",
    )
    for headers, payload, expected in [
        (
            {"x-api-key": KEY},
            {"model": "m", "max_tokens": 5, "messages": USER},
            "anthropic-version",
        ),
        (good, {"model": "m", "messages": USER}, "max_tokens"),
        (good, {"model": "m", "max_tokens": 5}, "messages"),
        (
            good,
            {"model": "m", "max_tokens": 5, "messages": USER, "temperature": "hot"},
            "temperature",
        ),
    ]:
        status, body = raw_post(vendor, "/v1/messages", json.dumps(payload).encode(), headers)
        assert status == 400
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert expected in body["error"]["message"]


# -- injected faults -----------------------------------------------------------------


def test_429_carries_retry_after(
    vendor: GatewayProcess, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    control_fake_vendor(vendor.url, error_kind="429", error_rate=1.0, retry_after_s=7)
    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(model="m", messages=USER)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as anthropic_caught:
        claude.messages.create(model="m", max_tokens=5, messages=USER)
    assert anthropic_caught.value.body["error"]["type"] == "rate_limit_error"


def test_500_in_both_shapes(
    vendor: GatewayProcess, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    control_fake_vendor(vendor.url, error_kind="500", error_rate=1.0)
    with pytest.raises(openai.InternalServerError):
        oai.embeddings.create(model="m", input="x")
    with pytest.raises(anthropic.InternalServerError) as caught:
        claude.messages.create(model="m", max_tokens=5, messages=USER)
    assert caught.value.body["error"]["type"] == "api_error"
    # Models listing is never failed on purpose: a health probe must not eat fail_first_n.
    assert [m.id for m in oai.models.list()] == list(MODELS)


def test_fail_first_n_then_the_sdk_retry_succeeds(vendor: GatewayProcess) -> None:
    # A tiny Retry-After makes the SDK's retry wait short instead of its 0.5 s backoff.
    control_fake_vendor(vendor.url, error_kind="429", fail_first_n=2, retry_after_s=0.01)
    with openai.OpenAI(base_url=f"http://{vendor.url}/v1", api_key=KEY, max_retries=2) as client:
        answer = client.chat.completions.create(model="m", messages=USER)
    assert answer.choices[0].message.content == HELLO_REPLY
    assert route_stats(vendor, "/v1/chat/completions") == {"received": 3, "429": 2, "ok": 1}


def test_fail_first_n_with_anthropic_retry(vendor: GatewayProcess) -> None:
    control_fake_vendor(vendor.url, error_kind="500", fail_first_n=1)
    with anthropic.Anthropic(base_url=f"http://{vendor.url}", api_key=KEY, max_retries=1) as client:
        message = client.messages.create(model="m", max_tokens=8, messages=USER)
    assert message.content[0].text == HELLO_REPLY
    assert route_stats(vendor, "/v1/messages") == {"received": 2, "500": 1, "ok": 1}


def test_error_rate_is_reproducible(vendor: GatewayProcess, oai: openai.OpenAI) -> None:
    def pattern() -> list[bool]:
        control_fake_vendor(vendor.url, error_rate=0.5, seed=7)  # restarts the fault RNG
        failed = []
        for _ in range(24):
            try:
                oai.chat.completions.create(model="m", messages=USER)
                failed.append(False)
            except openai.InternalServerError:
                failed.append(True)
        return failed

    first, second = pattern(), pattern()
    assert first == second
    assert 0 < sum(first) < len(first)
    assert fake_vendor_stats(vendor.url)["outcomes"] == {
        "500": 2 * sum(first),
        "ok": 2 * (24 - sum(first)),
    }


def test_timeout_holds_until_the_client_leaves(vendor: GatewayProcess, oai: openai.OpenAI) -> None:
    control_fake_vendor(vendor.url, error_kind="timeout", fail_first_n=1)
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        oai.chat.completions.create(model="m", messages=USER, timeout=0.3)
    assert time.perf_counter() - started >= 0.3
    assert route_stats(vendor, "/v1/chat/completions") == {"received": 1, "timeout": 1}
    # The held request does not block the next one.
    assert (
        oai.chat.completions.create(model="m", messages=USER).choices[0].message.content
        == HELLO_REPLY
    )


def test_garbage_is_not_json(
    vendor: GatewayProcess, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    control_fake_vendor(vendor.url, error_kind="garbage", error_rate=1.0)
    with pytest.raises(json.JSONDecodeError):
        oai.chat.completions.create(model="m", messages=USER)
    with pytest.raises(json.JSONDecodeError):
        list(oai.chat.completions.create(model="m", messages=USER, stream=True))
    with pytest.raises(json.JSONDecodeError):
        claude.messages.create(model="m", max_tokens=5, messages=USER)
    assert fake_vendor_stats(vendor.url)["outcomes"] == {"garbage": 3}


def test_cut_stream_fails_the_client(
    vendor: GatewayProcess, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    control_fake_vendor(vendor.url, error_kind="cut_stream", error_rate=1.0)
    received: list[Any] = []
    # openai 2.x lets httpx's error through from a cut stream; 3.x wraps it.
    with pytest.raises((openai.APIConnectionError, httpx.RemoteProtocolError)):
        for chunk in oai.chat.completions.create(model="m", messages=USER, stream=True):
            received.append(chunk)
    assert received, "the cut should come after some chunks"
    assert all(c.choices[0].finish_reason is None for c in received)
    pieces: list[str] = []
    with (
        pytest.raises(anthropic.APIConnectionError),
        claude.messages.stream(model="m", max_tokens=50, messages=USER) as stream,
    ):
        pieces.extend(stream.text_stream)
    assert pieces and "".join(pieces) != HELLO_REPLY
    # A JSON answer is cut midway through its declared length.
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="m", messages=USER)


# -- knobs, control and stats --------------------------------------------------------------


def test_latency_and_chunk_interval(vendor: GatewayProcess, oai: openai.OpenAI) -> None:
    control_fake_vendor(vendor.url, latency_ms=150)
    started = time.perf_counter()
    oai.chat.completions.create(model="m", messages=USER)
    assert time.perf_counter() - started >= 0.15
    control_fake_vendor(vendor.url, latency_ms=0, chunk_interval_ms=40, completion_tokens=3)
    stream = oai.chat.completions.create(model="m", messages=USER, stream=True)
    stamps = [time.perf_counter() for _ in stream]
    # role, 3 words, finish: four gaps of 40 ms between the first chunk and the last.
    assert len(stamps) == 5
    assert stamps[-1] - stamps[0] >= 0.15


def test_control_validates_and_reset_restores(vendor: GatewayProcess, oai: openai.OpenAI) -> None:
    knobs = control_fake_vendor(vendor.url, completion_tokens=2, error_kind=429)
    assert (knobs["completion_tokens"], knobs["error_kind"]) == (2, "429")
    assert (
        oai.chat.completions.create(model="m", messages=USER).choices[0].message.content
        == "echo: hello"
    )
    for bad in (
        {"no_such_knob": 1},
        {"error_kind": "teapot"},
        {"error_rate": 2},
        {"completion_tokens": "many"},
        {"latency_ms": True},
    ):
        status, body = raw_post(vendor, "/_control", json.dumps(bad).encode(), {})
        assert status == 400, bad
        assert next(iter(bad)) in body["error"]
    with pytest.raises(ValueError, match="error_rate"):
        control_fake_vendor(vendor.url, error_rate=-0.5)
    assert fake_vendor_stats(vendor.url)["total"] == 1
    knobs = reset_fake_vendor(vendor.url)
    assert (knobs["completion_tokens"], knobs["error_kind"]) == (8, "500")
    assert fake_vendor_stats(vendor.url) == {
        "total": 0,
        "routes": {},
        "outcomes": {},
        "held_open": 0,
    }


def test_start_up_knobs_reach_the_program() -> None:
    with pytest.raises(TypeError):
        start_fake_vendor(no_such_knob=1)
    server = start_fake_vendor(
        completion_tokens=3, api_key="other-key", fail_first_n=1, error_kind="500"
    )
    try:
        with openai.OpenAI(
            base_url=f"http://{server.url}/v1", api_key="other-key", max_retries=0
        ) as client:
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="m", messages=USER)
            answer = client.chat.completions.create(model="m", messages=USER)
            assert answer.choices[0].message.content == "echo: hello there"
            reset_fake_vendor(server.url)  # re-arms the start-up fail_first_n
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="m", messages=USER)
        assert fake_vendor_stats(server.url)["outcomes"] == {"500": 1}
    finally:
        server.stop()
