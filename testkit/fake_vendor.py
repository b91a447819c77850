"""A fake managed-vendor API: OpenAI-compatible and Anthropic over real HTTP on loopback.

The gateway's tests, benchmarks and demos talk to this server instead of a
real vendor, through the same HTTP client code they use in production; nothing
is patched. It answers deterministically, so tests can assert exact text and
usage, and it fails on demand, so retries, fallbacks and circuit breakers can
be exercised.

    python -m testkit.fake_vendor --port 8300 [--latency-ms 20] [--error-rate 0.1] ...

Routes
    POST /v1/chat/completions   OpenAI chat (JSON, or SSE with `stream: true`)
    POST /v1/embeddings         OpenAI embeddings (`encoding_format` float or base64)
    GET  /v1/models             model list (Anthropic's shape when its headers are sent)
    POST /v1/messages           Anthropic Messages (JSON, or SSE with `stream: true`)
    GET|POST /_control          read / change the knobs (JSON body: FakeVendorConfig fields)
    POST /_control/reset        start-up knobs back, stats zeroed
    GET  /_stats                requests received per route and per outcome
    GET  /_requests             the last bodies received by vendor POST routes (oldest first)

Auth: OpenAI routes want `Authorization: Bearer <api_key>`; `/v1/messages`
wants `x-api-key: <api_key>` (or the bearer header, which anthropic SDK 2.x
sends instead) and an `anthropic-version` header.

The reply and its token counts (a "token" is a whitespace-separated word):
  * the reply is the words of `"echo: " + <text of the last user message>`,
    cut or padded with the word "pad" to exactly `completion_tokens` words,
    joined by single spaces;
  * a request's `max_tokens` / `max_completion_tokens` below that cuts the
    reply there: finish_reason "length" / stop_reason "max_tokens"
    (otherwise "stop" / "end_turn");
  * `stop` (OpenAI) / `stop_sequences` (Anthropic) found in that reply cut it
    before the match (trailing whitespace dropped): finish_reason "stop" /
    stop_reason "stop_sequence" with `stop_sequence` set;
  * completion tokens = words in the reply; prompt tokens = words across the
    text of every message (and the Anthropic `system`). A message's content
    is a string or a list of parts, of which `{"type": "text"}` parts count;
  * streamed content deltas carry one word each, with its leading space
    except the first.
Embeddings are unit vectors drawn from a numpy RNG seeded with the sha256 of
the text (`embedding_vector`); prompt tokens = words across the inputs.

Faults: after auth and validation, a request of a POST vendor route fails
with `error_kind` while `fail_first_n` lasts, then with probability
`error_rate` drawn from an RNG seeded with `seed` (so a run is reproducible;
every POST to /_control restarts that RNG). `GET /v1/models` never fails.
Kinds: "500", "429" (with `Retry-After: <retry_after_s>`), "timeout" (no
answer until the client goes away), "garbage" (200 whose body is not JSON;
for a stream, an SSE event whose data is not JSON), "cut_stream" (the
connection closes midway: a stream after about half its events, without
[DONE] / message_stop; a JSON answer after half its declared body),
"stream_error" (a stream starts, then sends an error event: OpenAI's
`data: {"error": {...}}`, Anthropic's `event: error`; a JSON answer is a 500).

`echo_credentials` (off by default) plays a careless vendor or proxy: the
bodies of its 401s and of its injected errors ("500", "stream_error") then
quote the credential headers it received (`Authorization`, `x-api-key`,
`api-key`), so tests can check that no key travels on from there.
`stream_finish: false` plays a vendor whose OpenAI stream ends (`[DONE]`)
without the chunk carrying `finish_reason` (the usage chunk, if asked for,
still comes).
`latency_ms` plus a uniform draw in [0, jitter_ms] passes before every
answer of a vendor route; `chunk_interval_ms` passes between streamed events.

/_stats counts vendor routes only: {"total", "routes": {path: {"received",
<outcome>: n}}, "outcomes": {<outcome>: n}, "held_open"}, outcomes being
"ok", "400", "401" and the fault kinds; "held_open" is how many "timeout"
requests still wait for their client to go away.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import functools
import hashlib
import itertools
import json
import random
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

import numpy as np
import orjson
from aiohttp import web

from testkit.aio_serving import serve_until_signalled
from testkit.gateway_process import GatewayProcess, free_port, start_server

READY_LINE = "fake vendor ready"  # printed once the socket listens: start_server waits for it
ERROR_KINDS = ("500", "429", "timeout", "garbage", "cut_stream", "stream_error")
MODELS = ("fake-chat", "fake-embed")
PAD_WORD = "pad"

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MODELS_PATH = "/v1/models"
MESSAGES = "/v1/messages"

_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_GARBAGE = b"<html><body>upstream hiccup: this is not JSON {"
# A named event so that both SDKs parse its data (Anthropic's skips unnamed events).
_GARBAGE_EVENT = b"event: message_start\ndata: {this is not JSON\n\n"
_DONE = b"data: [DONE]\n\n"
_HOLD_POLL_S = 0.05
RECORDED_REQUESTS = 256  # request bodies kept for /_requests


@dataclass(frozen=True)
class FakeVendorConfig:
    """The behaviour knobs; the same names are CLI flags (`--latency-ms`) and /_control keys."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    completion_tokens: int = 8
    chunk_interval_ms: float = 0.0
    error_rate: float = 0.0
    error_kind: str = "500"
    retry_after_s: float = 1.0
    fail_first_n: int = 0
    api_key: str = "fake-key"
    embedding_dim: int = 384
    seed: int = 0
    echo_credentials: bool = False
    stream_finish: bool = True

    def __post_init__(self) -> None:
        if self.error_kind not in ERROR_KINDS:
            raise ValueError(
                f"error_kind: expected one of {', '.join(ERROR_KINDS)}, got {self.error_kind!r}"
            )
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate: expected 0..1, got {self.error_rate}")
        for name in (
            "latency_ms",
            "jitter_ms",
            "chunk_interval_ms",
            "retry_after_s",
            "completion_tokens",
            "fail_first_n",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim: expected >= 1, got {self.embedding_dim}")

    def updated(self, changes: Mapping[str, object]) -> FakeVendorConfig:
        """A copy with `changes` (JSON values, checked against the field types) applied."""
        types = _field_types()
        unknown = sorted(set(changes) - types.keys())
        if unknown:
            raise ValueError(f"unknown knob(s) {', '.join(unknown)}; known: {', '.join(types)}")
        return dataclasses.replace(
            self, **{name: _coerce(name, value, types[name]) for name, value in changes.items()}
        )


@functools.cache
def _field_types() -> dict[str, type]:
    return get_type_hints(FakeVendorConfig)


def _coerce(name: str, value: object, kind: type) -> object:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name}: expected bool, got {type(value).__name__}")
    # bool is an int to Python but never a sensible knob value.
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected {kind.__name__}, got a boolean")
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    if kind is int and isinstance(value, int):
        return value
    if kind is str and isinstance(value, (str, int)):  # error_kind 500 reads as naturally as "500"
        return str(value)
    raise ValueError(f"{name}: expected {kind.__name__}, got {type(value).__name__}")


class InvalidRequest(ValueError):
    """A request body the vendor would refuse with 400."""


# -- the deterministic content ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What either chat dialect needs from a request, once validated."""

    model: str
    prompt_tokens: int
    last_user_text: str
    max_tokens: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    words: list[str]
    truncated: bool  # cut by max_tokens
    stop_sequence: str | None  # the stop sequence that cut it, if one did

    @property
    def text(self) -> str:
        return " ".join(self.words)


def compose_reply(
    last_user_text: str, completion_tokens: int, max_tokens: int | None, stop: tuple[str, ...] = ()
) -> Reply:
    """The reply to a chat request, by the rule in the module docstring."""
    words = ("echo: " + last_user_text).split()[:completion_tokens]
    words += [PAD_WORD] * (completion_tokens - len(words))
    truncated = max_tokens is not None and max_tokens < completion_tokens
    if truncated:
        words = words[:max_tokens]
    if stop:
        text = " ".join(words)
        found = [(at, sequence) for sequence in stop if (at := text.find(sequence)) >= 0]
        if found:
            at, sequence = min(found)
            # Whatever the reply would have been cut to, the stop sequence came first.
            return Reply(text[:at].split(), False, sequence)
    return Reply(words, truncated, None)


@functools.lru_cache(maxsize=4096)
def embedding_vector(text: str, dim: int) -> np.ndarray:
    """The embedding of `text`: a unit float32 vector that depends only on (text, dim)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    vector /= np.linalg.norm(vector)
    vector.flags.writeable = False  # shared by the cache
    return vector


def _word_count(text: str) -> int:
    return len(text.split())


def _content_text(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:  # an assistant turn that only called tools
        return ""
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(f"{where}[{i}]: expected an object with a 'type'")
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise InvalidRequest(f"{where}[{i}].text: expected a string")
                texts.append(text)
        return " ".join(texts)
    raise InvalidRequest(f"{where}: expected a string or a list of content parts")


def _read_messages(messages: object) -> tuple[int, str]:
    """(prompt words, last user text) of a `messages` array."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' is a required property: a non-empty array of messages")
    words = 0
    last_user = ""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}]: expected an object with a string 'role'")
        text = _content_text(message.get("content"), f"messages[{i}].content")
        words += _word_count(text)
        if message["role"] == "user":
            last_user = text
    return words, last_user


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    return data


def _model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter (a non-empty string)")
    return model


def _optional_count(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InvalidRequest(f"{name}: expected a non-negative integer, got {value!r}")
    return value


def _stop(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(item for item in value if item)
    raise InvalidRequest(f"{name}: expected a string or a list of strings")


def _stream_flag(data: dict[str, Any]) -> bool:
    stream = data.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest(f"stream: expected a boolean, got {stream!r}")
    return stream


def parse_openai_chat(body: bytes) -> ChatRequest:
    data = _load_object(body)
    model = _model(data)
    prompt_tokens, last_user = _read_messages(data.get("messages"))
    max_tokens = _optional_count(data, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _optional_count(data, "max_tokens")
    options = data.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return ChatRequest(
        model,
        prompt_tokens,
        last_user,
        max_tokens,
        _stop(data.get("stop"), "stop"),
        _stream_flag(data),
        include_usage,
    )


def parse_anthropic_messages(body: bytes) -> ChatRequest:
    data = _load_object(body)
    model = _model(data)
    max_tokens = _optional_count(data, "max_tokens")
    if max_tokens is None or max_tokens < 1:
        raise InvalidRequest("max_tokens: a required positive integer")
    prompt_tokens, last_user = _read_messages(data.get("messages"))
    prompt_tokens += _word_count(_content_text(data.get("system"), "system"))
    temperature = data.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, (int, float))
    ):
        raise InvalidRequest(f"temperature: expected a number, got {temperature!r}")
    return ChatRequest(
        model,
        prompt_tokens,
        last_user,
        max_tokens,
        _stop(data.get("stop_sequences"), "stop_sequences"),
        _stream_flag(data),
    )


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    texts: list[str]
    dim: int | None
    base64: bool
    stream: bool = False  # never: lets the shared request path treat both request kinds alike


def parse_openai_embeddings(body: bytes) -> EmbeddingRequest:
    data = _load_object(body)
    model = _model(data)
    texts = data.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest("input: expected a string or a non-empty list of strings")
    dim = _optional_count(data, "dimensions")
    if dim == 0:
        raise InvalidRequest("dimensions: expected a positive integer")
    encoding = data.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidRequest(f"encoding_format: expected 'float' or 'base64', got {encoding!r}")
    return EmbeddingRequest(model, texts, dim, encoding == "base64")


# -- the two wire dialects ---------------------------------------------------------


def _dumps(obj: object) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


Refusal = tuple[int, str, str]  # (HTTP status, error kind, message); kinds: see _OPENAI_TYPES


@dataclass(frozen=True)
class Dialect:
    """How one vendor spells its required headers and its errors."""

    check_headers: Callable[[Mapping[str, str], str], Refusal | None]  # (headers, api_key)
    error_body: Callable[[str, str], bytes]  # (kind, message)
    error_event: Callable[[str, str], bytes]  # (kind, message): an error mid-stream


def _openai_headers(headers: Mapping[str, str], api_key: str) -> Refusal | None:
    given = headers.get("Authorization")
    if given is None:
        return (
            401,
            "authentication",
            "You didn't provide an API key: send 'Authorization: Bearer <key>'.",
        )
    if given != f"Bearer {api_key}":
        return 401, "authentication", "Incorrect API key provided."
    return None


_OPENAI_TYPES = {  # kind -> (type, code)
    "authentication": ("invalid_request_error", "invalid_api_key"),
    "invalid_request": ("invalid_request_error", None),
    "rate_limit": ("requests", "rate_limit_exceeded"),
    "server": ("server_error", None),
}


def _openai_error(kind: str, message: str) -> bytes:
    type_, code = _OPENAI_TYPES[kind]
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


def _anthropic_headers(headers: Mapping[str, str], api_key: str) -> Refusal | None:
    given = headers.get("x-api-key")
    if given is None:
        # The anthropic SDK sends `x-api-key` up to 0.x; 2.x sends its api_key as a bearer token.
        bearer = headers.get("Authorization")
        if bearer is None:
            return 401, "authentication", "x-api-key header is required"
        given = bearer.removeprefix("Bearer ")
    if given != api_key:
        return 401, "authentication", "invalid x-api-key"
    if "anthropic-version" not in headers:
        return 400, "invalid_request", "anthropic-version: header is required"
    return None


_ANTHROPIC_TYPES = {
    "authentication": "authentication_error",
    "invalid_request": "invalid_request_error",
    "rate_limit": "rate_limit_error",
    "server": "api_error",
}


def _anthropic_error(kind: str, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": _ANTHROPIC_TYPES[kind], "message": message}}
    )


def _openai_error_event(kind: str, message: str) -> bytes:
    return b"data: " + _openai_error(kind, message) + b"\n\n"


def _anthropic_error_event(kind: str, message: str) -> bytes:
    return b"event: error\ndata: " + _anthropic_error(kind, message) + b"\n\n"


def _credentials_received(headers: Mapping[str, str]) -> str:
    """What `echo_credentials` quotes: the credential headers as received."""
    found = [f"{name}: {headers[name]}" for name in _CREDENTIAL_HEADERS if name in headers]
    return f" (request headers: {', '.join(found)})" if found else ""


_CREDENTIAL_HEADERS = ("Authorization", "x-api-key", "api-key")

OPENAI = Dialect(_openai_headers, _openai_error, _openai_error_event)
ANTHROPIC = Dialect(_anthropic_headers, _anthropic_error, _anthropic_error_event)


def _sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _anthropic_event(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def openai_chat_body(request: ChatRequest, reply: Reply, answer_id: str) -> bytes:
    completion = len(reply.words)
    return orjson.dumps(
        {
            "id": answer_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "length" if reply.truncated else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": request.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": request.prompt_tokens + completion,
            },
        }
    )


def openai_chat_events(
    request: ChatRequest, reply: Reply, answer_id: str, finish: bool = True
) -> list[bytes]:
    head: dict[str, Any] = {
        "id": answer_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": None,
    }
    if request.include_usage:
        head["usage"] = None  # as OpenAI does: every chunk but the last carries a null usage

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        return _sse(
            {
                **head,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
        )

    events = [chunk({"role": "assistant", "content": ""})]
    events += [
        chunk({"content": word if i == 0 else " " + word}) for i, word in enumerate(reply.words)
    ]
    if finish:
        events.append(chunk({}, "length" if reply.truncated else "stop"))
    if request.include_usage:
        completion = len(reply.words)
        events.append(
            _sse(
                {
                    **head,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": request.prompt_tokens,
                        "completion_tokens": completion,
                        "total_tokens": request.prompt_tokens + completion,
                    },
                }
            )
        )
    events.append(_DONE)
    return events


def _anthropic_stop_reason(reply: Reply) -> str:
    if reply.stop_sequence is not None:
        return "stop_sequence"
    return "max_tokens" if reply.truncated else "end_turn"


def anthropic_message_body(request: ChatRequest, reply: Reply, answer_id: str) -> bytes:
    return orjson.dumps(
        {
            "id": answer_id,
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": _anthropic_stop_reason(reply),
            "stop_sequence": reply.stop_sequence,
            "usage": {"input_tokens": request.prompt_tokens, "output_tokens": len(reply.words)},
        }
    )


def anthropic_message_events(request: ChatRequest, reply: Reply, answer_id: str) -> list[bytes]:
    events = [
        _anthropic_event(
            {
                "type": "message_start",
                "message": {
                    "id": answer_id,
                    "type": "message",
                    "role": "assistant",
                    "model": request.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": request.prompt_tokens, "output_tokens": 0},
                },
            }
        ),
        _anthropic_event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        ),
        _anthropic_event({"type": "ping"}),
    ]
    events += [
        _anthropic_event(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": word if i == 0 else " " + word},
            }
        )
        for i, word in enumerate(reply.words)
    ]
    events += [
        _anthropic_event({"type": "content_block_stop", "index": 0}),
        _anthropic_event(
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": _anthropic_stop_reason(reply),
                    "stop_sequence": reply.stop_sequence,
                },
                "usage": {"output_tokens": len(reply.words)},
            }
        ),
        _anthropic_event({"type": "message_stop"}),
    ]
    return events


def openai_embeddings_body(request: EmbeddingRequest, default_dim: int) -> bytes:
    dim = request.dim or default_dim
    data = []
    for i, text in enumerate(request.texts):
        vector = embedding_vector(text, dim)
        # The vector itself goes to orjson, which writes a numpy array without a Python list.
        encoded: object = vector
        if request.base64:
            encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    words = sum(_word_count(text) for text in request.texts)
    return _dumps(
        {
            "object": "list",
            "data": data,
            "model": request.model,
            "usage": {"prompt_tokens": words, "total_tokens": words},
        }
    )


# -- the server ----------------------------------------------------------------------


class FakeVendorStats:
    """Requests received per vendor route, and their outcomes."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.held_open = 0  # "timeout" requests whose client has not gone away yet

    def as_json(self) -> dict[str, Any]:
        routes: dict[str, dict[str, int]] = {
            route: {"received": n} for route, n in self.received.items()
        }
        totals: Counter[str] = Counter()
        for (route, outcome), n in self.outcomes.items():
            routes.setdefault(route, {"received": 0})[outcome] = n
            totals[outcome] += n
        return {
            "total": sum(self.received.values()),
            "routes": routes,
            "outcomes": dict(totals),
            "held_open": self.held_open,
        }


class FakeVendor:
    """The application: the knobs in force, the fault draws and the stats."""

    def __init__(self, config: FakeVendorConfig) -> None:
        self.initial = config
        self.config = config
        self.stats = FakeVendorStats()
        # What the vendor was sent: tests check what reached it (masked data...).
        self.received: deque[dict[str, Any]] = deque(maxlen=RECORDED_REQUESTS)
        self._ids = itertools.count(1)
        self._restart_faults(rearm=True)
        self.app = web.Application(client_max_size=64 << 20)
        self.app.add_routes(
            [
                web.post(CHAT, self._chat),
                web.post(EMBEDDINGS, self._embeddings),
                web.get(MODELS_PATH, self._models),
                web.post(MESSAGES, self._messages),
                web.get("/_control", self._show_control),
                web.post("/_control", self._control),
                web.post("/_control/reset", self._reset),
                web.get("/_stats", self._stats),
                web.get("/_requests", self._requests),
            ]
        )

    def _restart_faults(self, rearm: bool) -> None:
        self._fault_rng = random.Random(self.config.seed)
        # Jitter draws come from their own RNG so that latency knobs never shift which requests fail.
        self._jitter_rng = random.Random(self.config.seed + 1)
        if rearm:
            self._fail_left = self.config.fail_first_n

    def _draw_fault(self) -> str | None:
        if self._fail_left > 0:
            self._fail_left -= 1
            return self.config.error_kind
        rate = self.config.error_rate
        if rate > 0.0 and self._fault_rng.random() < rate:
            return self.config.error_kind
        return None

    async def _wait_latency(self) -> None:
        config = self.config
        if config.latency_ms or config.jitter_ms:
            delay_ms = config.latency_ms + self._jitter_rng.uniform(0.0, config.jitter_ms)
            await asyncio.sleep(delay_ms / 1000.0)

    def _refuse(
        self,
        route: str,
        dialect: Dialect,
        status: int,
        kind: str,
        message: str,
        request: web.Request | None = None,
    ) -> web.Response:
        self.stats.outcomes[route, str(status)] += 1
        if request is not None and self.config.echo_credentials and status in (401, 500):
            message += _credentials_received(request.headers)
        return web.Response(
            status=status, body=dialect.error_body(kind, message), content_type=_JSON
        )

    # -- vendor routes

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, CHAT, OPENAI, parse_openai_chat, self._answer_openai_chat)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(
            request, MESSAGES, ANTHROPIC, parse_anthropic_messages, self._answer_anthropic
        )

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(
            request, EMBEDDINGS, OPENAI, parse_openai_embeddings, self._answer_embeddings
        )

    def _answer_openai_chat(
        self, chat: ChatRequest, config: FakeVendorConfig
    ) -> bytes | list[bytes]:
        reply = compose_reply(
            chat.last_user_text, config.completion_tokens, chat.max_tokens, chat.stop
        )
        answer_id = f"chatcmpl-fake{next(self._ids)}"
        if chat.stream:
            return openai_chat_events(chat, reply, answer_id, config.stream_finish)
        return openai_chat_body(chat, reply, answer_id)

    def _answer_anthropic(self, chat: ChatRequest, config: FakeVendorConfig) -> bytes | list[bytes]:
        reply = compose_reply(
            chat.last_user_text, config.completion_tokens, chat.max_tokens, chat.stop
        )
        answer_id = f"msg_fake{next(self._ids)}"
        if chat.stream:
            return anthropic_message_events(chat, reply, answer_id)
        return anthropic_message_body(chat, reply, answer_id)

    def _answer_embeddings(self, embed: EmbeddingRequest, config: FakeVendorConfig) -> bytes:
        return openai_embeddings_body(embed, config.embedding_dim)

    async def _serve(
        self,
        request: web.Request,
        route: str,
        dialect: Dialect,
        parse: Callable[[bytes], Any],
        answer: Callable[[Any, FakeVendorConfig], bytes | list[bytes]],
    ) -> web.StreamResponse:
        """The one life of a vendor request: latency, auth, validation, fault, answer."""
        self.stats.received[route] += 1
        await self._wait_latency()
        config = self.config
        refused = dialect.check_headers(request.headers, config.api_key)
        if refused is not None:
            return self._refuse(route, dialect, *refused, request=request)
        raw = await request.read()
        self.received.append({"route": route, "body": raw.decode("utf-8", "replace")})
        try:
            parsed = parse(raw)
        except InvalidRequest as exc:
            return self._refuse(route, dialect, 400, "invalid_request", str(exc))
        fault = self._draw_fault()
        if fault == "stream_error" and parsed.stream:
            self.stats.outcomes[route, fault] += 1
            message = "injected fault: the stream failed"
            if config.echo_credentials:
                message += _credentials_received(request.headers)
            started = answer(parsed, config)
            assert isinstance(started, list)
            return await self._send_events(
                request, [started[0], dialect.error_event("server", message)], cut=False
            )
        if fault is not None and fault != "cut_stream":
            return await self._fail(request, route, dialect, fault, parsed.stream)
        body = answer(parsed, config)
        cut = fault == "cut_stream"
        self.stats.outcomes[route, "cut_stream" if cut else "ok"] += 1
        if isinstance(body, list):
            return await self._send_events(request, body, cut)
        if cut:
            return await self._send_cut_body(request, body)
        return web.Response(body=body, content_type=_JSON)

    async def _fail(
        self, request: web.Request, route: str, dialect: Dialect, fault: str, stream: bool
    ) -> web.StreamResponse:
        if fault in ("500", "stream_error"):  # stream_error, asked for a JSON answer: a 500
            return self._refuse(
                route, dialect, 500, "server", "injected fault: internal server error", request
            )
        if fault == "429":
            response = self._refuse(
                route, dialect, 429, "rate_limit", "injected fault: rate limit reached"
            )
            response.headers["Retry-After"] = f"{self.config.retry_after_s:g}"
            return response
        self.stats.outcomes[route, fault] += 1
        if fault == "garbage":
            if stream:
                return await self._send_events(request, [_GARBAGE_EVENT], cut=False)
            return web.Response(body=_GARBAGE, content_type=_JSON)
        assert fault == "timeout", fault
        stats = self.stats  # a reset meanwhile must not make the new stats count down
        stats.held_open += 1
        try:
            await _hold_until_gone(request)
        finally:
            stats.held_open -= 1
        # The client is gone: nothing will read this, it only ends the handler cleanly.
        return web.Response(status=504)

    async def _send_events(
        self, request: web.Request, events: list[bytes], cut: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        if cut:
            events = events[: max(1, len(events) // 2)]
        interval_s = self.config.chunk_interval_ms / 1000.0
        if interval_s:
            for i, event in enumerate(events):
                if i:
                    await asyncio.sleep(interval_s)
                await response.write(event)
        else:
            # One write: the client cannot tell, and it costs one syscall instead of a dozen.
            await response.write(b"".join(events))
        if cut:
            _drop_connection(request)
            return response
        await response.write_eof()
        return response

    async def _send_cut_body(self, request: web.Request, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": _JSON})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        _drop_connection(request)
        return response

    async def _models(self, request: web.Request) -> web.Response:
        headers = request.headers
        anthropic = "anthropic-version" in headers or "x-api-key" in headers
        dialect = ANTHROPIC if anthropic else OPENAI
        self.stats.received[MODELS_PATH] += 1
        await self._wait_latency()
        refused = dialect.check_headers(headers, self.config.api_key)
        if refused is not None:
            return self._refuse(MODELS_PATH, dialect, *refused, request=request)
        self.stats.outcomes[MODELS_PATH, "ok"] += 1
        if anthropic:
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2024-01-01T00:00:00Z"}
                for m in MODELS
            ]
            body = {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
        else:
            body = {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake-vendor"}
                    for m in MODELS
                ],
            }
        return web.Response(body=orjson.dumps(body), content_type=_JSON)

    # -- control routes

    def _config_response(self) -> web.Response:
        return web.Response(body=orjson.dumps(dataclasses.asdict(self.config)), content_type=_JSON)

    async def _show_control(self, request: web.Request) -> web.Response:
        return self._config_response()

    async def _control(self, request: web.Request) -> web.Response:
        try:
            changes = _load_object(await request.read())
            self.config = self.config.updated(changes)
        except (InvalidRequest, ValueError, TypeError) as exc:
            return web.Response(
                status=400, body=orjson.dumps({"error": str(exc)}), content_type=_JSON
            )
        self._restart_faults(rearm="fail_first_n" in changes)
        return self._config_response()

    async def _reset(self, request: web.Request) -> web.Response:
        self.config = self.initial
        self.stats = FakeVendorStats()
        self.received.clear()
        self._restart_faults(rearm=True)
        return self._config_response()

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats.as_json()), content_type=_JSON)

    async def _requests(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(list(self.received)), content_type=_JSON)


async def _hold_until_gone(request: web.Request) -> None:
    # aiohttp does not cancel a handler when its client leaves (handler_cancellation
    # is off), so watch the transport: it closes when the client's FIN or RST arrives.
    while (transport := request.transport) is not None and not transport.is_closing():
        await asyncio.sleep(_HOLD_POLL_S)


def _drop_connection(request: web.Request) -> None:
    # close(), not abort(): what was written still goes out before the FIN.
    if request.transport is not None:
        request.transport.close()


# -- the program ---------------------------------------------------------------------


def build_app(config: FakeVendorConfig | None = None) -> web.Application:
    """The fake vendor as an aiohttp application, for running in-process."""
    return FakeVendor(config or FakeVendorConfig()).app


async def serve(config: FakeVendorConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM; prints READY_LINE once the socket listens."""
    await serve_until_signalled(
        build_app(config), host, port, READY_LINE, backlog=2048, reuse_address=True
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _yes_no(text: str) -> bool:
    """A boolean flag's value: true/false (also 1/0, yes/no, on/off)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def config_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.fake_vendor",
        description="A fake OpenAI-compatible and Anthropic vendor API on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    defaults = FakeVendorConfig()
    for name, kind in _field_types().items():
        parser.add_argument(
            _flag(name),
            dest=name,
            type=_yes_no if kind is bool else kind,
            default=getattr(defaults, name),
            choices=ERROR_KINDS if name == "error_kind" else None,
        )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = config_parser().parse_args(argv)
    config = FakeVendorConfig(**{name: getattr(args, name) for name in _field_types()})
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config, args.host, args.port))


# -- helpers for tests and benchmarks ------------------------------------------------


def start_fake_vendor(
    port: int | None = None, cpus: set[int] | None = None, **knobs: object
) -> GatewayProcess:
    """Run the fake vendor as a subprocess on `port` (a free one by default).

    `knobs` are FakeVendorConfig fields; they are checked here, so a typo fails
    in the caller rather than in the child. The result's `.url` is host:port:
    the OpenAI base_url is f"http://{url}/v1", the Anthropic one f"http://{url}".
    """
    config = FakeVendorConfig(**knobs)  # type: ignore[arg-type]
    port = free_port() if port is None else port
    argv = [sys.executable, "-m", "testkit.fake_vendor", "--port", str(port)]
    for name in knobs:
        argv += [_flag(name), str(getattr(config, name))]
    return start_server("fake vendor", argv, port, READY_LINE.encode(), cpus=cpus)


# Loopback only: an HTTP(S)_PROXY in the environment must not capture these calls.
_LOOPBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _call(url: str, path: str, body: dict[str, object] | None = None) -> dict[str, Any]:
    base = url if url.startswith("http") else f"http://{url}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base.rstrip("/") + path, data=data, headers={"Content-Type": _JSON}
    )
    try:
        with _LOOPBACK_OPENER.open(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 400:  # a knob the server refused: say which and why
            raise ValueError(json.loads(exc.read())["error"]) from None
        raise


def control_fake_vendor(url: str, **knobs: object) -> dict[str, Any]:
    """Change knobs of the fake vendor at `url` (host:port); returns the knobs now in force.

    Raises ValueError for a knob the server refuses (unknown name, wrong type or range).
    """
    return _call(url, "/_control", knobs)


def reset_fake_vendor(url: str) -> dict[str, Any]:
    """Restore the start-up knobs and zero the stats; returns the knobs now in force."""
    return _call(url, "/_control/reset", {})


def fake_vendor_requests(url: str) -> list[dict[str, Any]]:
    """The last request bodies the vendor routes received, oldest first:
    [{"route": path, "body": the body as text}]; /_control/reset clears them."""
    return _call(url, "/_requests")  # type: ignore[return-value]  # a JSON list here


def fake_vendor_stats(url: str) -> dict[str, Any]:
    """{"total", "routes": {path: {"received", outcome: n}}, "outcomes": {outcome: n}, "held_open"}."""
    return _call(url, "/_stats")


if __name__ == "__main__":
    main()
