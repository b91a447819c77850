import orjson
import pytest

from gateway.backends.vendors.anthropic_shape import (
    DROPPED_FIELDS,
    AnthropicStreamTranslator,
    ChatUsage,
    UnsupportedRequest,
    VendorProtocolError,
    VendorStreamError,
    anthropic_error_message,
    anthropic_response_to_chat,
    chat_request_to_anthropic,
)
from gateway.backends.vendors.sse import parse_sse

VENDOR_MODEL = "claude-sonnet-4-20250514"


# ---------------------------------------------------------------- requests


def test_full_request_is_translated() -> None:
    body = {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "Who are you?"}]},
            {"role": "assistant", "content": "Bonjour."},
            {"role": "user", "content": "Et alors ?", "name": "alice"},
        ],
        "max_completion_tokens": 200,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["\n\nHuman:", "END"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "user-123",
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.1,
        "logit_bias": {"50256": -100},
        "n": 1,
    }
    assert chat_request_to_anthropic(body, VENDOR_MODEL) == {
        "model": VENDOR_MODEL,
        "system": "You are terse.\n\nAnswer in French.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hello"},
                    {"type": "text", "text": "Who are you?"},
                ],
            },
            {"role": "assistant", "content": "Bonjour."},
            {"role": "user", "content": "Et alors ?"},
        ],
        "max_tokens": 200,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["\n\nHuman:", "END"],
        "stream": True,
    }
    assert {
        "user",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "stream_options",
    } <= DROPPED_FIELDS.keys()


def test_minimal_request_gets_the_default_max_tokens_and_no_optional_fields() -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "stream": False}
    assert chat_request_to_anthropic(body, VENDOR_MODEL, default_max_tokens=333) == {
        "model": VENDOR_MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 333,
    }


def test_max_tokens_and_a_single_stop_string() -> None:
    body = {"messages": [{"role": "user", "content": "Count"}], "max_tokens": 5, "stop": "7"}
    out = chat_request_to_anthropic(body, VENDOR_MODEL)
    assert out["max_tokens"] == 5
    assert out["stop_sequences"] == ["7"]
    # max_completion_tokens supersedes the deprecated max_tokens.
    body["max_completion_tokens"] = 9
    assert chat_request_to_anthropic(body, VENDOR_MODEL)["max_tokens"] == 9


def test_temperature_above_anthropics_range_is_capped_like_anthropics_own_compat_layer() -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "temperature": 1.7}
    assert chat_request_to_anthropic(body, VENDOR_MODEL)["temperature"] == 1.0


def test_empty_turns_are_dropped_and_their_neighbours_merged() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": ""},
            {
                "role": "user",
                "content": [{"type": "text", "text": ""}, {"type": "text", "text": "b"}],
            },
        ]
    }
    assert chat_request_to_anthropic(body, VENDOR_MODEL)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": "100"}, "max_completion_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"stop": ["ok", 3]}, "stop"),
        ({"stop": "\n"}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "tool", "tool_call_id": "c1", "content": "42"},
                ]
            },
            "messages[1].role",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {
                                "type": "image_url",
                                "image_url": {"url": "https://example.com/cat.png"},
                            },
                        ],
                    }
                ]
            },
            "messages[0].content[1]",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": "c1", "type": "function"}],
                    },
                ]
            },
            "messages[1].tool_calls",
        ),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ],
)
def test_requests_that_would_change_meaning_are_rejected_naming_the_field(
    change: dict, field: str
) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], **change}
    with pytest.raises(UnsupportedRequest) as caught:
        chat_request_to_anthropic(body, VENDOR_MODEL)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_harmless_tool_and_format_defaults_are_accepted() -> None:
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "logprobs": False,
        "tools": [],
    }
    assert chat_request_to_anthropic(body, VENDOR_MODEL)["messages"] == [
        {"role": "user", "content": "Hi"}
    ]


# ---------------------------------------------------------------- responses


def anthropic_message(stop_reason: str = "end_turn", **overrides: object) -> dict:
    message = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": VENDOR_MODEL,
        "content": [
            {"type": "thinking", "thinking": "The user greets me.", "signature": "abc"},
            {"type": "text", "text": "Hello! "},
            {"type": "text", "text": "How can I help?"},
        ],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 9},
    }
    message.update(overrides)
    return message


def test_response_is_translated_into_a_chat_completion() -> None:
    assert anthropic_response_to_chat(anthropic_message(), "chat", 1700000000) == {
        "id": "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "chat",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello! How can I help?",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("pause_turn", "stop"),
        ("a_reason_from_the_future", "stop"),
    ],
)
def test_every_stop_reason_maps_to_a_finish_reason(stop_reason: str, finish_reason: str) -> None:
    chat = anthropic_response_to_chat(anthropic_message(stop_reason), "chat", 0)
    assert chat["choices"][0]["finish_reason"] == finish_reason


def test_cached_input_tokens_count_as_prompt_tokens_like_openai() -> None:
    usage = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "output_tokens": 3,
    }
    chat = anthropic_response_to_chat(anthropic_message(usage=usage), "chat", 0)
    assert chat["usage"] == {"prompt_tokens": 1105, "completion_tokens": 3, "total_tokens": 1108}


@pytest.mark.parametrize(
    "resp",
    [
        None,
        [],
        "Internal Server Error",
        {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}},
        anthropic_message(content=None),
        anthropic_message(content="Hello"),
        anthropic_message(content=["Hello"]),
        anthropic_message(content=[{"text": "no type"}]),
        anthropic_message(content=[{"type": "text", "text": 5}]),
        anthropic_message(id=None),
        anthropic_message(usage=None),
        anthropic_message(usage={"input_tokens": 3}),
        anthropic_message(usage={"input_tokens": "3", "output_tokens": 1}),
        anthropic_message(usage={"input_tokens": True, "output_tokens": 1}),
    ],
)
def test_garbage_responses_raise_vendor_protocol_error(resp: object) -> None:
    with pytest.raises(VendorProtocolError):
        anthropic_response_to_chat(resp, "chat", 0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- streaming

MESSAGE_ID = "msg_014p7gG3wDgGV9EUtLvnow3U"
ANTHROPIC_EVENTS = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": MESSAGE_ID,
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": VENDOR_MODEL,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 472, "cache_read_input_tokens": 28, "output_tokens": 2},
            },
        },
    ),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Short answer."},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "text_delta", "text": "Okay, let"},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "text_delta", "text": "'s go — π ≈ 3.14"},
        },
    ),
    ("some_future_event", {"type": "some_future_event", "whatever": 1}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def sse_bytes(events: list[tuple[str, dict]]) -> bytes:
    return b"".join(
        b"event: " + name.encode() + b"\r\ndata: " + orjson.dumps(data) + b"\r\n\r\n"
        for name, data in events
    )


def expected_chunks(include_usage: bool) -> list[dict]:
    def chunk(delta: dict, finish_reason: str | None) -> dict:
        out = {
            "id": "chatcmpl-" + MESSAGE_ID,
            "object": "chat.completion.chunk",
            "created": 1700000001,
            "model": "chat",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            out["usage"] = None
        return out

    chunks = [
        chunk({"role": "assistant", "content": ""}, None),
        chunk({"content": "Okay, let"}, None),
        chunk({"content": "'s go — π ≈ 3.14"}, None),
        chunk({}, "length"),
    ]
    if include_usage:
        chunks.append(
            {
                "id": "chatcmpl-" + MESSAGE_ID,
                "object": "chat.completion.chunk",
                "created": 1700000001,
                "model": "chat",
                "choices": [],
                "usage": {"prompt_tokens": 500, "completion_tokens": 89, "total_tokens": 589},
            }
        )
    return chunks


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_whole_stream_translates_to_openai_chunks(include_usage: bool) -> None:
    translator = AnthropicStreamTranslator("chat", 1700000001, include_usage)
    chunks = [c for name, data in ANTHROPIC_EVENTS for c in translator.feed(name, data)]
    assert chunks == expected_chunks(include_usage)
    assert translator.finished
    assert translator.usage == ChatUsage(prompt_tokens=500, completion_tokens=89)
    assert translator.usage.total_tokens == 589
    assert translator.completion_id == "chatcmpl-" + MESSAGE_ID


def test_a_stream_fed_byte_by_byte_through_the_sse_parser_gives_the_same_chunks() -> None:
    translator = AnthropicStreamTranslator("chat", 1700000001, include_usage=True)
    chunks: list[dict] = []
    buffer = b""
    for byte in sse_bytes(ANTHROPIC_EVENTS):
        events, buffer = parse_sse(buffer + bytes([byte]))
        for name, data in events:
            assert name is not None
            chunks.extend(translator.feed(name, orjson.loads(data)))
    assert buffer == b""
    assert chunks == expected_chunks(include_usage=True)
    assert translator.finished


def test_a_stream_cut_before_message_stop_is_not_finished_but_keeps_its_usage() -> None:
    translator = AnthropicStreamTranslator("chat", 1700000001, include_usage=True)
    for name, data in ANTHROPIC_EVENTS[:8]:
        translator.feed(name, data)
    assert not translator.finished
    assert translator.usage == ChatUsage(prompt_tokens=500, completion_tokens=2)


def test_an_error_event_raises_with_the_vendor_error_type() -> None:
    translator = AnthropicStreamTranslator("chat", 0, include_usage=False)
    translator.feed(*ANTHROPIC_EVENTS[0])
    with pytest.raises(VendorStreamError, match="Overloaded") as caught:
        translator.feed(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
    assert caught.value.error_type == "overloaded_error"
    assert not translator.finished


@pytest.mark.parametrize(
    "events",
    [
        [("content_block_delta", {"delta": {"type": "text_delta", "text": "early"}})],
        [("message_start", {"type": "message_start"})],
        [("message_start", {"message": {"id": 5}})],
        [ANTHROPIC_EVENTS[0], ("content_block_delta", {"delta": "oops"})],
        [
            ANTHROPIC_EVENTS[0],
            ("content_block_delta", {"delta": {"type": "text_delta", "text": 1}}),
        ],
        [
            ANTHROPIC_EVENTS[0],
            (
                "message_delta",
                {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": -1}},
            ),
        ],
        [ANTHROPIC_EVENTS[0], ANTHROPIC_EVENTS[0]],
    ],
)
def test_malformed_stream_events_raise_vendor_protocol_error(events: list) -> None:
    translator = AnthropicStreamTranslator("chat", 0, include_usage=False)
    with pytest.raises(VendorProtocolError):
        for name, data in events:
            translator.feed(name, data)


# ---------------------------------------------------------------- errors


def test_error_message_extracts_type_message_and_request_id() -> None:
    body = (
        b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},'
        b'"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}'
    )
    assert anthropic_error_message(529, body) == (
        "anthropic returned HTTP 529: overloaded_error: Overloaded "
        "(request_id req_011CSHoEeqs5C35K2UUqR7Fy)"
    )


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (502, b"", "anthropic returned HTTP 502 with an empty body"),
        (
            502,
            b"<html><body>\n  <h1>502 Bad Gateway</h1>\n</body></html>",
            "anthropic returned HTTP 502: <html><body> <h1>502 Bad Gateway</h1> </body></html>",
        ),
        (500, b'["not", "an", "object"]', "anthropic returned HTTP 500"),
        (500, b'{"error": "flat string"}', "anthropic returned HTTP 500"),
        (
            400,
            b'{"error": {"type": 7, "message": null}}',
            "anthropic returned HTTP 400: unrecognised error body",
        ),
        (500, b"\xff\xfe garbage", "anthropic returned HTTP 500: \ufffd\ufffd garbage"),
    ],
)
def test_error_message_tolerates_garbage(status: int, body: bytes, expected: str) -> None:
    assert anthropic_error_message(status, body) == expected


def test_error_message_redacts_key_shaped_strings_and_bounds_its_length() -> None:
    body = orjson.dumps(
        {
            "type": "error",
            "error": {
                "type": "authentication_error",
                "message": "invalid x-api-key sk-ant-api03-abcdefghijklmnop " + "x" * 5000,
            },
        }
    )
    message = anthropic_error_message(401, body)
    assert "sk-ant" not in message and "abcdefghijklmnop" not in message
    assert "[redacted]" in message
    assert len(message) < 400
