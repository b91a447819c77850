"""Pure translation between OpenAI chat completions and Anthropic's Messages API.

Everything here works on already-parsed JSON (plain dicts) and does no I/O,
so the Anthropic backend owns the HTTP and this module owns the shapes:

* `chat_request_to_anthropic`: an OpenAI chat request -> a Messages request.
  A request this translation cannot honour without changing its meaning
  raises `UnsupportedRequest` naming the field (the gateway answers 400).
* `anthropic_response_to_chat`: a Message -> a `chat.completion`.
* `AnthropicStreamTranslator`: Messages SSE events -> `chat.completion.chunk`s.
* `anthropic_error_message`: a short, secret-free summary of an error body.

Answers that break the Messages contract raise `VendorProtocolError`; an
`error` event in a stream raises `VendorStreamError` (both mean 502 before any
byte was sent to the client).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.observe.redact import redact

if TYPE_CHECKING:
    from typing import TypeGuard

__all__ = [
    "DROPPED_FIELDS",
    "AnthropicStreamTranslator",
    "ChatUsage",
    "UnsupportedRequest",
    "VendorProtocolError",
    "VendorStreamError",
    "anthropic_error_message",
    "anthropic_response_to_chat",
    "chat_request_to_anthropic",
]


class UnsupportedRequest(Exception):
    """The request asks for something this backend cannot do faithfully."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class VendorProtocolError(Exception):
    """The vendor answered something that breaks the Messages API contract."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class VendorStreamError(Exception):
    """The vendor reported an error inside a stream (e.g. `overloaded_error`)."""

    def __init__(self, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Kept apart so the caller can tell a retryable overload from the rest.
        self.error_type = error_type


# OpenAI-only request fields dropped without changing what the caller gets
# back, with the reason. Fields not named anywhere are ignored too, so that a
# newer OpenAI SDK does not break this backend; the ones known to change the
# answer are rejected in `_reject_unsupported_options`.
DROPPED_FIELDS: Mapping[str, str] = {
    "user": "end-user id for OpenAI's abuse monitoring; not forwarded to another vendor",
    "seed": "best-effort determinism only; Anthropic has no seed",
    "presence_penalty": "sampling nudge with no Anthropic equivalent",
    "frequency_penalty": "sampling nudge with no Anthropic equivalent",
    "logit_bias": "token ids are tokenizer-specific and meaningless for Claude",
    "stream_options": "include_usage is honoured by AnthropicStreamTranslator, not the vendor",
    "metadata": "OpenAI stored-completion tags; nothing to store on Anthropic",
    "store": "OpenAI stored completions; nothing to store on Anthropic",
    "service_tier": "OpenAI billing tier names; Anthropic's differ",
    "prediction": "latency hint for predicted outputs; the answer is the same without it",
    "reasoning_effort": "reasoning budget hint; the response shape is the same without it",
    "parallel_tool_calls": "only meaningful with tools, which are rejected",
}

_FINISH_REASONS: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _finish_reason(stop_reason: object) -> str:
    # New stop reasons appear over time; "stop" is the least surprising default.
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------
# Request: OpenAI chat -> Anthropic Messages


def chat_request_to_anthropic(
    body: dict[str, Any], vendor_model: str, default_max_tokens: int = 1024
) -> dict[str, Any]:
    """Translate an OpenAI chat-completions request into a Messages request.

    System and developer messages become the top-level `system` (joined by a
    blank line, in order); consecutive user or assistant messages are merged
    because Anthropic requires the roles to alternate. A trailing assistant
    message is passed through, which Anthropic treats as a prefill to continue.
    A message's `name` is dropped: Anthropic has no participant names.
    """
    if not isinstance(body, dict):
        raise UnsupportedRequest("body", "expected a JSON object")
    _reject_unsupported_options(body)

    system, messages = _translate_messages(body.get("messages"))
    out: dict[str, Any] = {
        "model": vendor_model,
        "messages": messages,
        "max_tokens": _max_tokens(body, default_max_tokens),
    }
    if system:
        out["system"] = system

    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or not 0 <= temperature <= 2:
            raise UnsupportedRequest("temperature", "expected a number between 0 and 2")
        # Anthropic accepts 0..1; capping is what Anthropic's own OpenAI
        # compatibility layer does, so callers see the same behaviour.
        out["temperature"] = min(temperature, 1.0)

    top_p = body.get("top_p")
    if top_p is not None:
        if not _is_number(top_p) or not 0 <= top_p <= 1:
            raise UnsupportedRequest("top_p", "expected a number between 0 and 1")
        out["top_p"] = top_p

    stop = _stop_sequences(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise UnsupportedRequest("stream", "expected a boolean")
    if stream:
        out["stream"] = True
    return out


def _reject_unsupported_options(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise UnsupportedRequest("n", f"only 1 choice is supported by this backend, got {n!r}")
    for field in ("tools", "functions"):
        if body.get(field):
            raise UnsupportedRequest(field, "tool calling is not supported by this backend")
    for field in ("tool_choice", "function_call"):
        # "none" and "auto" without tools ask for plain text, which is what we do.
        if body.get(field) not in (None, "none", "auto"):
            raise UnsupportedRequest(field, "tool calling is not supported by this backend")
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind != "text":
            # Dropping it would hand back prose to a caller that parses JSON.
            raise UnsupportedRequest(
                "response_format", f"only type 'text' is supported by this backend, got {kind!r}"
            )
    if body.get("logprobs") or body.get("top_logprobs"):
        field = "logprobs" if body.get("logprobs") else "top_logprobs"
        raise UnsupportedRequest(field, "log probabilities are not available from this backend")
    if body.get("audio") is not None:
        raise UnsupportedRequest("audio", "audio output is not supported by this backend")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise UnsupportedRequest("modalities", "only ['text'] is supported by this backend")
    if body.get("web_search_options") is not None:
        raise UnsupportedRequest(
            "web_search_options", "web search is not supported by this backend"
        )


def _max_tokens(body: dict[str, Any], default: int) -> int:
    # max_completion_tokens supersedes the deprecated max_tokens in OpenAI's API.
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is not None:
            if not _is_int(value) or value < 1:
                raise UnsupportedRequest(field, f"expected a positive integer, got {value!r}")
            return value
    return default


def _stop_sequences(stop: object) -> list[str]:
    if stop is None:
        return []
    sequences = [stop] if isinstance(stop, str) else stop
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise UnsupportedRequest("stop", "expected a string or a list of strings")
    for sequence in sequences:
        # Anthropic rejects these; silently dropping one would let text run past it.
        if not sequence.strip():
            raise UnsupportedRequest(
                "stop",
                f"whitespace-only stop sequences are not supported by this backend: {sequence!r}",
            )
    return sequences


def _translate_messages(raw: object) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(raw, list) or not raw:
        raise UnsupportedRequest("messages", "expected a non-empty list of messages")
    system: list[str] = []
    # (role, texts) per turn; texts of merged messages stay separate blocks so
    # no separator is invented between them.
    turns: list[tuple[str, list[str]]] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise UnsupportedRequest(where, "expected an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_texts(message.get("content"), f"{where}.content"))
            continue
        if role not in ("user", "assistant"):
            raise UnsupportedRequest(
                f"{where}.role", f"role {role!r} is not supported by this backend"
            )
        for field in ("tool_calls", "function_call", "audio"):
            if message.get(field):
                raise UnsupportedRequest(f"{where}.{field}", "not supported by this backend")
        texts = _texts(message.get("content"), f"{where}.content")
        if not texts:
            # Anthropic rejects empty turns; an empty turn says nothing anyway.
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(texts)
        else:
            turns.append((role, texts))
    if not turns:
        raise UnsupportedRequest(
            "messages", "at least one non-empty user or assistant message is required"
        )
    messages = [
        {
            "role": role,
            "content": texts[0]
            if len(texts) == 1
            else [{"type": "text", "text": text} for text in texts],
        }
        for role, texts in turns
    ]
    return "\n\n".join(system), messages


def _texts(content: object, where: str) -> list[str]:
    """The non-empty texts of a message's content (a string or text parts)."""
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        raise UnsupportedRequest(where, "expected a string or a list of content parts")
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise UnsupportedRequest(
                f"{where}[{j}]",
                f"only text content parts are supported by this backend, got {kind!r}",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise UnsupportedRequest(f"{where}[{j}].text", "expected a string")
        if text:
            texts.append(text)
    return texts


# --------------------------------------------------------------------------
# Response: Anthropic Message -> OpenAI chat.completion


@dataclass(frozen=True, slots=True)
class ChatUsage:
    """Token counts in OpenAI's terms.

    `prompt_tokens` includes Anthropic's cache-write and cache-read input
    tokens, because OpenAI's prompt_tokens counts cached tokens too.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


_INPUT_TOKEN_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _count(usage: dict[str, Any], field: str) -> int | None:
    value = usage.get(field)
    if value is not None and (not _is_int(value) or value < 0):
        raise VendorProtocolError(f"usage.{field} is not a non-negative integer: {value!r}")
    return value


def anthropic_response_to_chat(resp: dict[str, Any], model: str, created: int) -> dict[str, Any]:
    """Translate a Messages API response into an OpenAI `chat.completion`.

    `model` is the gateway's model name, never the vendor's. Non-text blocks
    (thinking, tool_use) are left out: the request translation never asks for
    them, and OpenAI's message has no place for them.
    """
    if not isinstance(resp, dict):
        raise VendorProtocolError(f"expected a JSON object, got {type(resp).__name__}")
    if resp.get("type") == "error":
        raise VendorProtocolError(f"error object in a success response: {_error_summary(resp)}")
    message_id = resp.get("id")
    if not isinstance(message_id, str) or not message_id:
        raise VendorProtocolError("message has no id")
    content = resp.get("content")
    if not isinstance(content, list):
        raise VendorProtocolError("message has no content list")
    texts: list[str] = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str):
            raise VendorProtocolError(f"content[{i}] is not a typed content block")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise VendorProtocolError(f"content[{i}].text is not a string")
            texts.append(text)
    usage = resp.get("usage")
    if not isinstance(usage, dict):
        raise VendorProtocolError("message has no usage object")
    input_tokens = _count(usage, "input_tokens")
    completion_tokens = _count(usage, "output_tokens")
    if input_tokens is None or completion_tokens is None:
        raise VendorProtocolError("usage lacks input_tokens or output_tokens")
    prompt_tokens = (
        input_tokens
        + (_count(usage, "cache_creation_input_tokens") or 0)
        + (_count(usage, "cache_read_input_tokens") or 0)
    )
    return {
        "id": "chatcmpl-" + message_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(texts), "refusal": None},
                "logprobs": None,
                "finish_reason": _finish_reason(resp.get("stop_reason")),
            }
        ],
        "usage": ChatUsage(prompt_tokens, completion_tokens).to_openai(),
    }


# --------------------------------------------------------------------------
# Streaming: Anthropic SSE events -> OpenAI chat.completion.chunk


class AnthropicStreamTranslator:
    """Turns one Messages event stream into OpenAI chunks, event by event.

    Contract: every chunk carries the same id ("chatcmpl-" + the message id
    from `message_start`); the first chunk carries the assistant role, text
    deltas follow, then one chunk with the finish reason; with
    `include_usage`, every chunk has `usage: null` and `message_stop` adds a
    final chunk with no choices and the totals, as OpenAI does. `finished`
    stays False until `message_stop`, so a stream cut short is detectable.
    """

    __slots__ = (
        "_completion_tokens",
        "_created",
        "_finished",
        "_id",
        "_include_usage",
        "_input_tokens",
        "_model",
    )

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._id: str | None = None
        # Per input field, since a later event may repeat only some of them.
        self._input_tokens = dict.fromkeys(_INPUT_TOKEN_FIELDS, 0)
        self._completion_tokens = 0
        self._finished = False

    @property
    def usage(self) -> ChatUsage:
        """Tokens reported so far (Anthropic's counts are cumulative)."""
        return ChatUsage(sum(self._input_tokens.values()), self._completion_tokens)

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def completion_id(self) -> str | None:
        """The id every chunk carries; None before `message_start`."""
        return self._id

    def feed(self, event_type: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks to emit for one Anthropic event, in order (often none)."""
        if self._finished:
            return []
        # Text deltas are nearly every event: test for them first.
        if event_type == "content_block_delta":
            delta = self._field(data, "delta")
            if delta.get("type") != "text_delta":
                return []  # thinking/tool deltas have no place in a text reply
            text = delta.get("text")
            if not isinstance(text, str):
                raise VendorProtocolError("text_delta without a string text")
            return [self._chunk({"content": text}, None)] if text else []
        if event_type == "message_start":
            return self._start(data)
        if event_type == "message_delta":
            delta = self._field(data, "delta")
            usage = data.get("usage")
            if isinstance(usage, dict):
                self._update_usage(usage)
            stop_reason = delta.get("stop_reason")
            if stop_reason is None:
                return []
            return [self._chunk({}, _finish_reason(stop_reason))]
        if event_type == "message_stop":
            self._require_started()
            self._finished = True
            if not self._include_usage:
                return []
            return [
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": self.usage.to_openai(),
                }
            ]
        if event_type == "error":
            error = data.get("error") if isinstance(data, dict) else None
            error_type = error.get("type") if isinstance(error, dict) else None
            raise VendorStreamError(
                f"stream error: {_error_summary(data)}",
                error_type if isinstance(error_type, str) else None,
            )
        # ping, content_block_start/stop, and event types added later.
        return []

    def _start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        if self._id is not None:
            raise VendorProtocolError("second message_start in one stream")
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(message, dict):
            raise VendorProtocolError("message_start without a message")
        message_id = message.get("id")
        if not isinstance(message_id, str) or not message_id:
            raise VendorProtocolError("message_start without a message id")
        self._id = "chatcmpl-" + message_id
        usage = message.get("usage")
        if isinstance(usage, dict):
            self._update_usage(usage)
        return [self._chunk({"role": "assistant", "content": ""}, None)]

    def _update_usage(self, usage: dict[str, Any]) -> None:
        # Counts are running totals, not increments: keep the latest of each.
        for field in _INPUT_TOKEN_FIELDS:
            value = _count(usage, field)
            if value is not None:
                self._input_tokens[field] = value
        completion_tokens = _count(usage, "output_tokens")
        if completion_tokens is not None:
            self._completion_tokens = completion_tokens

    def _require_started(self) -> None:
        if self._id is None:
            raise VendorProtocolError("stream event before message_start")

    def _field(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        self._require_started()
        value = data.get(name) if isinstance(data, dict) else None
        if not isinstance(value, dict):
            raise VendorProtocolError(f"event without a {name} object")
        return value

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self._include_usage:
            chunk["usage"] = None
        return chunk


# --------------------------------------------------------------------------
# Errors

_MAX_MESSAGE_CHARS = 300
# Defence in depth: vendors and proxies in front of them have echoed keys in
# error text before; nothing shaped like a key (nor a configured key) reaches
# logs or clients (gateway.observe.redact).
_WHITESPACE = re.compile(r"\s+")


def _clean(text: str) -> str:
    text = redact(_WHITESPACE.sub(" ", text).strip())
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[:_MAX_MESSAGE_CHARS] + "..."
    return text


def _error_summary(parsed: object) -> str:
    """`type: message` of an Anthropic error object, tolerating any shape."""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return "unrecognised error body"
    kind = error.get("type")
    message = error.get("message")
    parts = [_clean(p) for p in (kind, message) if isinstance(p, str) and p.strip()]
    return ": ".join(parts) if parts else "unrecognised error body"


def anthropic_error_message(status: int, body: bytes) -> str:
    """A one-line summary of an Anthropic error answer for logs and 502s.

    Uses `error.type`, `error.message` and the vendor's `request_id` (for
    support tickets); falls back to a short excerpt of a non-JSON body (a
    proxy's HTML page, say). Key-shaped strings are redacted, and nothing of
    the outgoing request is ever included.
    """
    prefix = f"anthropic returned HTTP {status}"
    if not body or not body.strip():
        return f"{prefix} with an empty body"
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"{prefix}: {_clean(body[:1024].decode('utf-8', 'replace'))}"
    if not isinstance(parsed, dict) or not isinstance(parsed.get("error"), dict):
        return prefix
    summary = f"{prefix}: {_error_summary(parsed)}"
    request_id = parsed.get("request_id")
    if isinstance(request_id, str) and request_id.isascii() and len(request_id) <= 100:
        summary += f" (request_id {_clean(request_id)})"
    return summary
