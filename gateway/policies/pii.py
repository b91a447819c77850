"""`type: pii`: personal data in requests (and answers) masked, refused or counted.

Before routing, the detectors (policies/pii_detectors.py) run over a chat
request's message texts (string contents, text parts, tool-call arguments)
or an embeddings request's inputs. `action: mask` replaces each value with a
typed placeholder (`[EMAIL_1]`, policies/pii_placeholders.py), so the vendor,
the cache key and the audit record (all of which see the request as the
policies leave it) never see the value; `block` refuses the request with 400
naming the detectors (never the value); `allow` passes it unchanged. Each
counts in `gateway_pii_detections_total` and notes per-detector counts in
the audit record ("mask email=2 phone=1").

`restore: true` puts the caller's own values back into the answer, from the
request's own map (in its context: never cached, recorded or logged), whole
or streamed: a placeholder cut across chunks is held back until it is whole.

`outputs` runs the detectors over the model's answer (before restoring, so a
caller's own values coming back are not counted as the model's): `mask`
masks what the model wrote, `block` fails the request (502, reason
`bad_output`: the model answered something it must not), `allow` counts.
Streamed, text is held back until no value can still be growing at its end
(`OutputWindow`); a blocked stream stops before the value, and ends with an
error event.

Held text goes out with the choice's `finish_reason` chunk, or, for a stream
that ends without one, in a chunk of its own once the stream ended
(`on_stream_end`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, Literal

import phonenumbers
from pydantic import Field, field_validator, model_validator

from gateway.config.schema import PolicyCommon, Section
from gateway.core.errors import BackendFailed, InvalidInput
from gateway.core.llm import ChatRequest, ChatResult, EmbeddingRequest
from gateway.core.types import RequestContext
from gateway.observe.metrics import PII_DETECTIONS, FastChildren, fast_inc
from gateway.policies.base import Policy
from gateway.policies.pii_detectors import BUILTIN, BuiltinKind, Scanner, Span
from gateway.policies.pii_placeholders import Masking, StreamRestorer
from gateway.policies.pii_window import OutputWindow
from gateway.policies.registry import PolicyType, register

Action = Literal["mask", "block", "allow"]

_DETECTIONS = FastChildren(PII_DETECTIONS, fast_inc)


class PiiCustomDetector(Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if pattern.fullmatch("") is not None:
            raise ValueError("the pattern matches the empty text: it would find nothing to mask")
        return value


class PiiConfig(PolicyCommon):
    type: Literal["pii"]
    action: Action = "mask"
    detectors: list[BuiltinKind] = Field(default_factory=lambda: list(BUILTIN))
    custom: list[PiiCustomDetector] = Field(default_factory=list)
    restore: bool = False
    outputs: Action | None = None
    phone_region: str = "US"

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"not a region libphonenumber knows: {value!r} (an ISO 3166 code such as US, GB)"
            )
        return value.upper()

    @model_validator(mode="after")
    def _coherent(self) -> PiiConfig:
        names = [c.name for c in self.custom]
        clashing = sorted({n for n in names if n in BUILTIN or names.count(n) > 1})
        if clashing:
            raise ValueError(
                f"custom detector names must be unique and not built-in ones: {clashing}"
            )
        if not self.detectors and not self.custom:
            raise ValueError("nothing to detect: give `detectors` or `custom`")
        if self.restore and self.action != "mask":
            raise ValueError("restore: true needs action: mask (nothing else is replaced)")
        return self


_CONTENT = -1  # the slot of a choice's content (tool calls' slots are their indexes)


class _State:
    """One request's policy state (in `ctx.policy_state`, keyed by the policy)."""

    __slots__ = ("masking", "opened_by", "output_counts", "slots")

    def __init__(self, masking: Masking | None) -> None:
        self.masking = masking
        # (choice index, _CONTENT or a tool call's index) -> that text's stream
        self.slots: dict[tuple[int, int], _Slot] = {}
        self.output_counts: dict[str, int] = {}
        # The chunk that opened the latest slot: its id, model and created go
        # on what `on_stream_end` sends (kept when a slot opens, not per chunk).
        self.opened_by: dict[str, Any] | None = None


class Pii(Policy):
    kinds = frozenset({"chat", "embeddings"})

    def __init__(self, config: PiiConfig) -> None:
        super().__init__("pii")
        self.scanner = Scanner(
            config.detectors,
            [(c.name, re.compile(c.regex)) for c in config.custom],
            config.phone_region,
        )
        self.action = config.action
        self.restore = config.restore
        self.outputs = config.outputs
        # Custom patterns may span whitespace at any length: hold streamed
        # output back by the full window whenever there are any.
        self._always_window = bool(config.custom)

    # -- the request ---------------------------------------------------------------

    def on_request(self, request: Any, ctx: RequestContext) -> Any:
        if isinstance(request, ChatRequest):
            return self._chat_request(request, ctx)
        if isinstance(request, EmbeddingRequest):
            return self._embedding_request(request, ctx)
        return request

    def _chat_request(self, request: ChatRequest, ctx: RequestContext) -> ChatRequest:
        messages = request.body.get("messages")
        if not isinstance(messages, list):
            return request
        found = _Found(self.scanner)
        for message in messages:
            if isinstance(message, dict):
                _walk_message(message, found.scan)
        if not found.spans:
            return request
        counts = found.counts()
        self._record(ctx, "input", self.action, counts)
        if self.action == "block":
            raise InvalidInput(_refusal(counts, ctx.model, "messages"))
        if self.action == "allow":
            return request
        masking = Masking(found.texts)
        if self.restore or self.outputs == "mask":
            self._state(ctx, masking)
        masker = found.masker(masking)
        changed = [_walk_message(m, masker) if isinstance(m, dict) else m for m in messages]
        return dataclasses.replace(request, body={**request.body, "messages": changed})

    def _embedding_request(
        self, request: EmbeddingRequest, ctx: RequestContext
    ) -> EmbeddingRequest:
        found = _Found(self.scanner)
        for text in request.texts:
            found.scan(text)
        if not found.spans:
            return request
        counts = found.counts()
        self._record(ctx, "input", self.action, counts)
        if self.action == "block":
            raise InvalidInput(_refusal(counts, ctx.model, "input"))
        if self.action == "allow":
            return request
        masker = found.masker(Masking(found.texts))
        return dataclasses.replace(request, texts=[masker(t) for t in request.texts])

    # -- the answer -----------------------------------------------------------------

    def on_response(self, response: Any, ctx: RequestContext) -> Any:
        if not isinstance(response, ChatResult):
            return response
        state: _State | None = ctx.policy_state.get(self) if ctx.policy_state else None
        restoring = state is not None and state.masking is not None and self.restore
        if self.outputs is None and not restoring:
            return response
        choices = response.body.get("choices")
        if not isinstance(choices, list):
            return response
        counts: dict[str, int] = {}
        masking = state.masking if state is not None else None

        def answer_text(text: str) -> str:
            nonlocal masking
            if self.outputs is not None:
                spans = self.scanner.scan(text)
                for span in spans:
                    counts[span.kind] = counts.get(span.kind, 0) + 1
                if spans and self.outputs == "mask":
                    if masking is None:
                        masking = Masking()
                    text = masking.mask(text, spans, restorable=False)
            if restoring and masking is not None:
                text = masking.restore(text)
            return text

        changed = []
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict):
                choice = {**choice, "message": _walk_message(message, answer_text)}
            changed.append(choice)
        if counts:
            self._record(ctx, "output", self.outputs or "allow", counts)
            if self.outputs == "block":
                raise _blocked_output(counts, ctx.model)
        return dataclasses.replace(response, body={**response.body, "choices": changed})

    def on_chunk(self, chunk: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        choices = chunk.get("choices")
        if not choices:
            return chunk
        state: _State | None = ctx.policy_state.get(self) if ctx.policy_state else None
        restoring = state is not None and state.masking is not None and self.restore
        if self.outputs is None and not restoring:
            return chunk
        if state is None:
            state = self._state(ctx, None)
        try:
            changed = [
                self._choice_chunk(chunk, c, state, ctx) if isinstance(c, dict) else c
                for c in choices
            ]
        except _BlockedStream:
            self._note_output(state, ctx)
            raise
        return {**chunk, "choices": changed}

    def _choice_chunk(
        self, chunk: dict[str, Any], choice: dict[str, Any], state: _State, ctx: RequestContext
    ) -> dict[str, Any]:
        index = choice.get("index", 0)
        delta = choice.get("delta")
        delta = dict(delta) if isinstance(delta, dict) else {}
        content = delta.get("content")
        if isinstance(content, str) and content:
            delta["content"] = self._slot(state, index, _CONTENT, chunk).feed(content)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            delta["tool_calls"] = [
                self._tool_call_chunk(chunk, call, state, index) for call in calls
            ]
        if choice.get("finish_reason") is not None:
            self._finish(state, index, delta, ctx)
        return {**choice, "delta": delta}

    def _tool_call_chunk(self, chunk: dict[str, Any], call: Any, state: _State, index: int) -> Any:
        function = call.get("function") if isinstance(call, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(arguments, str) or not arguments:
            return call
        slot = self._slot(state, index, int(call.get("index", 0)), chunk)
        return {**call, "function": {**function, "arguments": slot.feed(arguments)}}

    def _finish(
        self, state: _State, index: int, delta: dict[str, Any], ctx: RequestContext
    ) -> None:
        """The choice's last chunk: what its slots still hold goes out with it."""
        for (choice, slot_name), slot in list(state.slots.items()):
            if choice != index:
                continue
            del state.slots[choice, slot_name]
            rest = slot.flush()
            if not rest:
                continue
            if slot_name == _CONTENT:
                delta["content"] = (delta.get("content") or "") + rest
            else:
                calls = list(delta.get("tool_calls") or [])
                calls.append({"index": slot_name, "function": {"arguments": rest}})
                delta["tool_calls"] = calls
        self._note_output(state, ctx)

    def on_stream_end(self, ctx: RequestContext) -> list[dict[str, Any]]:
        """The stream ended without some choice's `finish_reason` chunk: what
        that choice's slots still hold goes out in one more chunk per choice,
        as it would have gone out with that chunk."""
        state: _State | None = ctx.policy_state.get(self) if ctx.policy_state else None
        if state is None:
            return []
        chunks = []
        try:
            if state.slots and state.opened_by is not None:
                head = {k: v for k, v in state.opened_by.items() if k != "choices"}
                if "usage" in head:
                    head["usage"] = None  # the usage, if any, is the vendor's last chunk
                for index in dict.fromkeys(choice for choice, _ in state.slots):
                    delta: dict[str, Any] = {}
                    self._finish(state, index, delta, ctx)
                    if delta:
                        choice = {"index": index, "delta": delta, "finish_reason": None}
                        chunks.append({**head, "choices": [choice]})
        except _BlockedStream:
            self._note_output(state, ctx)
            raise
        # Values counted in text released before the end are noted even when
        # no finish_reason chunk (nor held text) came to note them.
        self._note_output(state, ctx)
        return chunks

    def _slot(self, state: _State, index: int, name: int, chunk: dict[str, Any]) -> _Slot:
        slot = state.slots.get((index, name))
        if slot is None:
            state.opened_by = chunk
            window = None
            if self.outputs is not None:
                window = OutputWindow(self.scanner, self._always_window)
            restorer = None
            if self.restore and state.masking is not None:
                restorer = StreamRestorer(state.masking)
            slot = state.slots[index, name] = _Slot(self, state, window, restorer)
        return slot

    def output_spans(self, state: _State, text: str, spans: list[Span]) -> str:
        """What the stream sends of released model text `text` holding `spans`."""
        if not spans:
            return text
        counts = state.output_counts
        for span in spans:
            counts[span.kind] = counts.get(span.kind, 0) + 1
        if self.outputs == "block":
            raise _BlockedStream(counts)
        if self.outputs == "mask":
            if state.masking is None:
                state.masking = Masking()
            return state.masking.mask(text, spans, restorable=False)
        return text

    def _note_output(self, state: _State, ctx: RequestContext) -> None:
        if state.output_counts:
            self._record(ctx, "output", self.outputs or "allow", state.output_counts)
            state.output_counts = {}

    # -- bookkeeping -------------------------------------------------------------------

    def _state(self, ctx: RequestContext, masking: Masking | None = None) -> _State:
        states = ctx.policy_state
        if states is None:
            states = ctx.policy_state = {}
        state = states.get(self)
        if state is None:
            state = states[self] = _State(masking)
        return state

    def _record(
        self, ctx: RequestContext, direction: str, action: str, counts: dict[str, int]
    ) -> None:
        model = ctx.model or ""
        ordered = [(k, counts[k]) for k in self.scanner.kinds if k in counts]
        for kind, n in ordered:
            _DETECTIONS(model, kind, action, direction)(n)
        prefix = action if direction == "input" else f"output {action}"
        ctx.note_policy(self.name, prefix + " " + " ".join(f"{k}={n}" for k, n in ordered))


class _BlockedStream(BackendFailed):
    """Raised from a chunk: the relay ends the stream with this error's event."""

    def __init__(self, counts: dict[str, int]) -> None:
        super().__init__(_blocked_message(counts), reason="bad_output")


class _Slot:
    """One streamed text of an answer (a choice's content, or one tool call's
    arguments): the model's text through the output window, then restored."""

    __slots__ = ("_policy", "_restorer", "_state", "_window")

    def __init__(
        self,
        policy: Pii,
        state: _State,
        window: OutputWindow | None,
        restorer: StreamRestorer | None,
    ) -> None:
        self._policy = policy
        self._state = state
        self._window = window
        self._restorer = restorer

    def feed(self, piece: str) -> str:
        if self._window is not None:
            text, spans = self._window.feed(piece)
            piece = self._released(text, spans)
        return self._restorer.feed(piece) if self._restorer is not None else piece

    def flush(self) -> str:
        text = ""
        if self._window is not None:
            text = self._released(*self._window.flush())
        if self._restorer is None:
            return text
        return self._restorer.feed(text) + self._restorer.flush()

    def _released(self, text: str, spans: list[Span]) -> str:
        return self._policy.output_spans(self._state, text, spans)


class _Found:
    """What the detectors found in one request's texts, kept for masking them."""

    __slots__ = ("_scanner", "spans", "texts")

    def __init__(self, scanner: Scanner) -> None:
        self._scanner = scanner
        self.texts: list[str] = []
        self.spans: dict[int, list[Span]] = {}  # by position in `texts`

    def scan(self, text: str) -> str:
        spans = self._scanner.scan(text)
        if spans:
            self.spans[len(self.texts)] = spans
        self.texts.append(text)
        return text

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for spans in self.spans.values():
            for span in spans:
                counts[span.kind] = counts.get(span.kind, 0) + 1
        return counts

    def masker(self, masking: Masking) -> Callable[[str], str]:
        """Masks the scanned texts again, in the order they were scanned."""
        position = iter(range(len(self.texts)))
        spans = self.spans

        def mask(text: str) -> str:
            found = spans.get(next(position))
            return masking.mask(text, found) if found else text

        return mask


def _walk_message(message: dict[str, Any], text: Callable[[str], str]) -> dict[str, Any]:
    """`message` with `text` applied to each of its texts: a string content,
    the text of each text part, each tool call's arguments. Always the same
    texts in the same order; a new dict where one changed."""
    changed: dict[str, Any] | None = None
    content = message.get("content")
    if isinstance(content, str):
        new = text(content)
        if new is not content:
            changed = {**message, "content": new}
    elif isinstance(content, list):
        parts = []
        touched = False
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                new = text(part["text"])
                if new is not part["text"]:
                    part = {**part, "text": new}
                    touched = True
            parts.append(part)
        if touched:
            changed = {**message, "content": parts}
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        new_calls = []
        touched = False
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if isinstance(function, dict) and isinstance(arguments, str):
                new = text(arguments)
                if new is not arguments:
                    call = {**call, "function": {**function, "arguments": new}}
                    touched = True
            new_calls.append(call)
        if touched:
            changed = {**(changed or message), "tool_calls": new_calls}
    return message if changed is None else changed


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(sorted(counts))


def _refusal(counts: dict[str, int], model: str | None, where: str) -> str:
    return (
        f"{where}: personal data ({_kinds(counts)}) is not accepted by model "
        f"'{model}' (pii policy); remove it and try again"
    )


def _blocked_message(counts: dict[str, int]) -> str:
    return (
        f"the model's answer contained personal data ({_kinds(counts)}) and was "
        "withheld (pii policy)"
    )


def _blocked_output(counts: dict[str, int], model: str | None) -> BackendFailed:
    return BackendFailed(f"model '{model}': " + _blocked_message(counts), reason="bad_output")


POLICY_TYPE = register(
    PolicyType(
        name="pii",
        config=PiiConfig,
        build=Pii,
        kinds=Pii.kinds,
    )
)
