"""Vendors that fail, through the OpenAI-compatible surface: fallback to the next
backend, retries (and none once a stream has started), Retry-After, deadlines,
garbage and broken streams. Two fake vendors: A behind an OpenAI-compatible
backend, B behind an Anthropic one, so one can fail while the other works.

Every status is one of the taxonomy's; none is ever 500, and the gateway
process is still alive (and logged no internal error) when the module ends.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import openai
import pytest

from testkit.fake_vendor import control_fake_vendor, fake_vendor_stats
from tests.api.test_openai_surface import (
    COMPLETION_TOKENS,
    Vendors,
    anthropic_backend,
    chat_model,
    expected_reply,
    fresh_vendors,
    openai_backend,
    sdk,
    serving,
    streamed_text,
    vendors,
    words,
)
from tests.conftest import GatewayProcess

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
QUICK_RETRIES = {"max": 2, "backoff_ms": 1}


@pytest.fixture(scope="module")
def gateway(vendors: Vendors, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "backends": {
            "a-gpt": openai_backend(vendors.a),
            "b-claude": anthropic_backend(vendors.b),
            "a-gpt-retry": openai_backend(vendors.a, retries=QUICK_RETRIES),
            "b-claude-retry": anthropic_backend(vendors.b, retries=QUICK_RETRIES),
            "a-gpt-single": openai_backend(vendors.a, max_concurrency=1, max_queue=1),
        },
        "models": {
            "gpt": chat_model("a-gpt"),
            "claude": chat_model("b-claude"),
            "fallback": chat_model("a-gpt", "b-claude"),
            "fallback-retry": chat_model("a-gpt-retry", "b-claude"),
            "gpt-retry": chat_model("a-gpt-retry"),
            "claude-retry": chat_model("b-claude-retry"),
            "gpt-single": chat_model("a-gpt-single"),
        },
    }
    with serving(config, tmp_path_factory.mktemp("openai-vendors")) as started:
        yield started


VENDOR_OF = {"gpt": "a", "gpt-retry": "a", "claude": "b", "claude-retry": "b"}
PATH_OF = {"a": CHAT, "b": MESSAGES}


def received(vendor_url: str, path: str) -> int:
    return fake_vendor_stats(vendor_url)["routes"].get(path, {}).get("received", 0)


def ask(client: openai.OpenAI, model: str, question: str, **options: object):
    """The raw response (headers and parsed body) of one chat completion."""
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": question}], **options
    )


def failure(call) -> openai.APIStatusError:
    """The SDK's error for a call the gateway refused; never a 500."""
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    error = caught.value
    assert error.status_code != 500, error.body
    assert set(error.body) >= {"message", "type", "code"}, error.body
    return error


def wait_for(condition, timeout_s: float = 5.0, what: str = "") -> None:
    """Poll `condition` (state another process reaches on its own) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.01)


# -- fallback ---------------------------------------------------------------------------


def test_healthy_first_backend_answers_alone(gateway: GatewayProcess, vendors: Vendors) -> None:
    raw = ask(sdk(gateway), "fallback", "who answers")
    assert raw.headers["x-gateway-backend"] == "a-gpt"
    assert raw.headers["x-gateway-attempts"] == "1"
    assert raw.parse().choices[0].message.content == expected_reply("who answers")
    assert (received(vendors.a, CHAT), received(vendors.b, MESSAGES)) == (1, 0)


def test_a_failing_first_backend_falls_back_to_the_second(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    control_fake_vendor(vendors.a, error_rate=1.0, error_kind="500")
    raw = ask(sdk(gateway), "fallback", "who answers now")
    answer = raw.parse()
    assert raw.headers["x-gateway-backend"] == "b-claude"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert answer.model == "fallback"
    assert answer.choices[0].message.content == expected_reply("who answers now")
    assert answer.usage.prompt_tokens == words("who answers now")
    assert (received(vendors.a, CHAT), received(vendors.b, MESSAGES)) == (1, 1)


def test_a_stream_falls_back_before_its_first_chunk(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    control_fake_vendor(vendors.a, error_rate=1.0, error_kind="500")
    question = "stream from whoever works"
    with sdk(gateway).chat.completions.with_streaming_response.create(
        model="fallback", messages=[{"role": "user", "content": question}], stream=True
    ) as response:
        assert response.headers["x-gateway-backend"] == "b-claude"
        assert response.headers["x-gateway-attempts"] == "2"
        chunks = list(response.parse())
    assert streamed_text(chunks) == expected_reply(question)
    assert all(c.model == "fallback" for c in chunks)


def test_every_backend_failing_is_a_502_naming_the_model(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    control_fake_vendor(vendors.a, error_rate=1.0, error_kind="500")
    control_fake_vendor(vendors.b, error_rate=1.0, error_kind="500")
    error = failure(lambda: ask(sdk(gateway), "fallback", "anyone there"))
    assert error.status_code == 502
    assert error.body["code"] == "backend_failed"
    assert "fallback" in error.body["message"]
    assert error.response.headers["x-gateway-attempts"] == "2"


def test_attempts_count_the_retries_of_a_backend_that_failed(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    # A successful backend's retries count in x-gateway-attempts (see the retry
    # tests below), so a failed backend's must too. Here A retries twice (3 HTTP
    # tries) and fails.
    control_fake_vendor(vendors.a, error_rate=1.0, error_kind="500")
    error = failure(lambda: ask(sdk(gateway), "gpt-retry", "count every try"))
    assert error.status_code == 502
    assert received(vendors.a, CHAT) == 3
    assert error.response.headers["x-gateway-attempts"] == "3"

    # Then B answers at its first try: 3 + 1.
    raw = ask(sdk(gateway), "fallback-retry", "count every try")
    assert raw.headers["x-gateway-backend"] == "b-claude"
    assert received(vendors.a, CHAT) == 3 + 3
    assert raw.headers["x-gateway-attempts"] == "4"


# -- retries ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-retry", "claude-retry"])
def test_retries_get_past_transient_failures(
    gateway: GatewayProcess, vendors: Vendors, model: str
) -> None:
    vendor = getattr(vendors, VENDOR_OF[model])
    control_fake_vendor(vendor, fail_first_n=2, error_kind="500")
    raw = ask(sdk(gateway), model, "third time lucky")
    assert raw.parse().choices[0].message.content == expected_reply("third time lucky")
    assert received(vendor, PATH_OF[VENDOR_OF[model]]) == 3
    assert fake_vendor_stats(vendor)["outcomes"] == {"500": 2, "ok": 1}
    assert raw.headers["x-gateway-attempts"] == "3"


@pytest.mark.parametrize("model", ["gpt-retry", "claude-retry"])
def test_a_stream_is_retried_while_it_has_not_started(
    gateway: GatewayProcess, vendors: Vendors, model: str
) -> None:
    vendor = getattr(vendors, VENDOR_OF[model])
    control_fake_vendor(vendor, fail_first_n=2, error_kind="500")
    question = "retry before the stream starts"
    chunks = list(
        sdk(gateway).chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], stream=True
        )
    )
    assert streamed_text(chunks) == expected_reply(question)
    assert received(vendor, PATH_OF[VENDOR_OF[model]]) == 3


def test_without_retries_a_vendor_500_is_a_502(gateway: GatewayProcess, vendors: Vendors) -> None:
    control_fake_vendor(vendors.a, fail_first_n=1, error_kind="500")
    error = failure(lambda: ask(sdk(gateway), "gpt", "no second chance"))
    assert error.status_code == 502
    assert "a-gpt" in error.body["message"]
    assert received(vendors.a, CHAT) == 1


def test_429_retry_waits_for_retry_after(gateway: GatewayProcess, vendors: Vendors) -> None:
    retry_after_s = 0.05  # 50 times the configured backoff: only Retry-After explains the wait
    control_fake_vendor(vendors.a, fail_first_n=1, error_kind="429", retry_after_s=retry_after_s)
    started = time.monotonic()
    raw = ask(sdk(gateway), "gpt-retry", "after the rate limit")
    elapsed = time.monotonic() - started
    assert raw.parse().choices[0].message.content == expected_reply("after the rate limit")
    assert fake_vendor_stats(vendors.a)["outcomes"] == {"429": 1, "ok": 1}
    assert elapsed >= retry_after_s


def test_429_without_retries_is_a_503_with_retry_after(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    control_fake_vendor(vendors.a, error_rate=1.0, error_kind="429", retry_after_s=3)
    error = failure(lambda: ask(sdk(gateway), "gpt", "slow down"))
    assert error.status_code == 503
    assert error.response.headers["retry-after"] == "3"


@pytest.mark.parametrize("model", ["gpt-retry", "claude-retry"])
def test_a_stream_cut_midway_is_not_retried_and_ends_with_an_error_event(
    gateway: GatewayProcess, vendors: Vendors, model: str
) -> None:
    vendor = getattr(vendors, VENDOR_OF[model])
    # Events apart in time, so the chunks before the cut reach the gateway before
    # the connection closes (aiohttp drops what it buffered once the cut is seen).
    control_fake_vendor(
        vendor, error_rate=1.0, error_kind="cut_stream", completion_tokens=16, chunk_interval_ms=5
    )
    request_id = f"cut-{model}-{uuid.uuid4().hex[:8]}"
    question = "a long story that breaks"
    chunks = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in sdk(gateway).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            stream=True,
            extra_headers={"x-request-id": request_id},
        ):
            chunks.append(chunk)
    assert "stream" in str(caught.value.message)
    # What came before the cut reached the caller, and it was a true prefix.
    got = streamed_text(chunks)
    assert got and expected_reply(question, completion_tokens=16).startswith(got)
    assert received(vendor, PATH_OF[VENDOR_OF[model]]) == 1
    wait_for(
        lambda: any(
            request_id in line and "failed" in line for line in gateway.logs().splitlines()
        ),
        what="the gateway to log the broken stream",
    )


def test_a_cut_stream_does_not_fall_back(gateway: GatewayProcess, vendors: Vendors) -> None:
    control_fake_vendor(vendors.a, error_rate=1.0, error_kind="cut_stream")
    with pytest.raises(openai.APIError):
        list(
            sdk(gateway).chat.completions.create(
                model="fallback", messages=[{"role": "user", "content": "half"}], stream=True
            )
        )
    assert (received(vendors.a, CHAT), received(vendors.b, MESSAGES)) == (1, 0)


# -- vendor misbehaviour ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_a_garbage_answer_is_a_502(gateway: GatewayProcess, vendors: Vendors, model: str) -> None:
    control_fake_vendor(getattr(vendors, VENDOR_OF[model]), error_rate=1.0, error_kind="garbage")
    error = failure(lambda: ask(sdk(gateway), model, "say something sensible"))
    assert error.status_code == 502
    assert error.body["code"] == "backend_failed"


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_a_garbage_stream_fails_as_the_backends_fault(
    gateway: GatewayProcess, vendors: Vendors, model: str
) -> None:
    control_fake_vendor(getattr(vendors, VENDOR_OF[model]), error_rate=1.0, error_kind="garbage")
    with pytest.raises(openai.APIError) as caught:
        list(
            sdk(gateway).chat.completions.create(
                model=model, messages=[{"role": "user", "content": "garbage please"}], stream=True
            )
        )
    # The garbage is the stream's first event: a 502, or (had the status been
    # sent already) an error event; either way the backend's failure.
    if isinstance(caught.value, openai.APIStatusError):
        assert caught.value.status_code == 502
    assert caught.value.body["code"] == "backend_failed"


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_a_json_answer_cut_midway_is_a_502(
    gateway: GatewayProcess, vendors: Vendors, model: str
) -> None:
    control_fake_vendor(getattr(vendors, VENDOR_OF[model]), error_rate=1.0, error_kind="cut_stream")
    error = failure(lambda: ask(sdk(gateway), model, "half an answer"))
    assert error.status_code == 502


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_a_hanging_vendor_is_a_504_at_the_deadline_and_the_gateway_serves_on(
    gateway: GatewayProcess, vendors: Vendors, model: str
) -> None:
    vendor = getattr(vendors, VENDOR_OF[model])
    control_fake_vendor(vendor, error_rate=1.0, error_kind="timeout")
    started = time.monotonic()
    error = failure(
        lambda: ask(
            sdk(gateway), model, "are you there", extra_headers={"x-request-timeout-ms": "300"}
        )
    )
    elapsed = time.monotonic() - started
    # The vendor never answers and the backend's own timeout is 30 s: the caller's
    # deadline is what ended the wait, and not before it had passed.
    assert error.status_code == 504
    assert error.body["code"] == "timeout"
    assert "did not answer within the deadline" in error.body["message"], error.body
    assert elapsed >= 0.3
    # The gateway gave up on the vendor's connection too, not only on its caller.
    wait_for(
        lambda: fake_vendor_stats(vendor)["held_open"] == 0,
        what="the gateway to close the hanging vendor connection",
    )

    control_fake_vendor(vendor, error_rate=0.0)
    raw = ask(sdk(gateway), model, "and now")
    assert raw.parse().choices[0].message.content == expected_reply("and now")


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_a_stream_slower_than_the_deadline_ends_with_a_timeout_event(
    gateway: GatewayProcess, vendors: Vendors, model: str
) -> None:
    control_fake_vendor(
        getattr(vendors, VENDOR_OF[model]),
        chunk_interval_ms=100,
        completion_tokens=COMPLETION_TOKENS,
    )
    chunks = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in sdk(gateway).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "slowly"}],
            stream=True,
            extra_headers={"x-request-timeout-ms": "300"},
        ):
            chunks.append(chunk)
    assert caught.value.body["code"] == "timeout"
    # The whole stream would take over a second (100 ms between events): the
    # deadline cut it, after a true prefix of the reply and before its end.
    got = streamed_text(chunks)
    assert words(got) < COMPLETION_TOKENS, got
    assert expected_reply("slowly").startswith(got)


# -- callers who go away ------------------------------------------------------------------------


def test_a_caller_who_gives_up_frees_the_vendor_connection(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    control_fake_vendor(vendors.a, error_rate=1.0, error_kind="timeout")
    impatient = sdk(gateway).with_options(timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        ask(impatient, "gpt", "I will not wait")
    assert fake_vendor_stats(vendors.a)["total"] == 1
    # The backend's own timeout is 30 s: only the caller's leaving ends the wait.
    wait_for(
        lambda: fake_vendor_stats(vendors.a)["held_open"] == 0,
        what="the gateway to drop the vendor call of a caller who left",
    )


def test_an_abandoned_stream_frees_its_backend_slot(
    gateway: GatewayProcess, vendors: Vendors
) -> None:
    # gpt-single's backend runs one call at a time (and queues one more). A
    # stream that would take about 30 s is abandoned after its first chunk; the
    # next call, whose deadline is 5 s, must get the slot long before that stream
    # would have ended: answered, by that backend, at the first try.
    control_fake_vendor(vendors.a, chunk_interval_ms=100, completion_tokens=300)
    client = sdk(gateway)
    stream = client.chat.completions.create(
        model="gpt-single", messages=[{"role": "user", "content": "a long one"}], stream=True
    )
    assert next(iter(stream)).model == "gpt-single"
    stream.close()

    control_fake_vendor(vendors.a, chunk_interval_ms=0, completion_tokens=COMPLETION_TOKENS)
    raw = ask(client, "gpt-single", "my turn", extra_headers={"x-request-timeout-ms": "5000"})
    assert raw.parse().choices[0].message.content == expected_reply("my turn")
    assert raw.headers["x-gateway-backend"] == "a-gpt-single"
    assert raw.headers["x-gateway-attempts"] == "1"
