"""`type: pii` in process: its config checks, masking, blocking and counting of
requests, restoring and scanning of answers, whole and streamed (any split of
a streamed answer gives what the whole answer gives: property-based)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.loader import ConfigError, parse_config
from gateway.core.errors import BackendFailed, ErrorKind, InvalidInput
from gateway.core.llm import ChatRequest, ChatResult, EmbeddingRequest
from gateway.core.types import RequestContext
from gateway.observe import metrics
from gateway.policies.base import apply_stream_end
from gateway.policies.pii import Pii, PiiConfig
from gateway.policies.pii_detectors import BUILTIN
from gateway.policies.pii_placeholders import Masking, StreamRestorer
from gateway.runtime import build_runtime


def _policy(**config: Any) -> Pii:
    return Pii(PiiConfig.model_validate({"type": "pii", **config}))


def _ctx(model: str = "m") -> RequestContext:
    return RequestContext(request_id="r", protocol="test", model=model)


def _chat(*texts: str) -> ChatRequest:
    messages = [{"role": "user", "content": t} for t in texts]
    return ChatRequest("m", {"model": "m", "messages": messages, "temperature": 0})


def _contents(request: ChatRequest) -> list[str]:
    return [m["content"] for m in request.body["messages"]]


def _answer(*texts: str) -> ChatResult:
    choices = [
        {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
        for i, t in enumerate(texts)
    ]
    return ChatResult({"id": "x", "object": "chat.completion", "choices": choices}, None)


def _answer_text(result: ChatResult, choice: int = 0) -> str:
    content: str = result.body["choices"][choice]["message"]["content"]
    return content


def _detections(model: str, detector: str, action: str, direction: str) -> float:
    labels = {"model": model, "detector": detector, "action": action, "direction": direction}
    return metrics.REGISTRY.get_sample_value("gateway_pii_detections_total", labels) or 0.0


# -- config -------------------------------------------------------------------------------

CONFIG = """
backends:
  vendor: {type: openai, base_url: "http://127.0.0.1:9/v1", model: x}
  local: {type: onnx, path: models/digits/model.onnx}
models:
  chat:
    kind: chat
    route: {backends: [vendor]}
    policies: [POLICY]
  digits:
    signature:
      inputs: [{name: x, datatype: FP32, shape: [-1, 64]}]
      outputs: [{name: y, datatype: FP32, shape: [-1, 10]}]
    route: {backends: [local]}
"""


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        ("{type: pii, detectors: [email, passport]}", r"policies\[0\]\.detectors\[1\]"),
        (
            "{type: pii, custom: [{name: emp, regex: 'E(\\d{6}'}]}",
            r"policies\[0\]\.custom\[0\]\.regex.*not a valid regular expression",
        ),
        ("{type: pii, custom: [{name: emp, regex: 'x*'}]}", r"custom\[0\]\.regex.*empty"),
        ("{type: pii, custom: [{name: Emp, regex: 'E'}]}", r"custom\[0\]\.name"),
        ("{type: pii, custom: [{name: email, regex: 'E'}]}", r"not built-in.*email"),
        ("{type: pii, action: block, restore: true}", r"restore: true needs action: mask"),
        ("{type: pii, phone_region: XX}", r"phone_region.*XX"),
        ("{type: pii, detectors: []}", r"nothing to detect"),
        ("{type: pii, outputs: redact}", r"policies\[0\]\.outputs"),
        ("{type: pii, colour: red}", r"policies\[0\]\.colour"),
    ],
)
def test_the_loader_refuses_a_bad_pii_entry_naming_its_key(policy: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_config(CONFIG.replace("POLICY", policy))


def test_a_full_entry_loads() -> None:
    loaded = parse_config(
        CONFIG.replace(
            "POLICY",
            "{type: pii, action: mask, detectors: [email, phone], restore: true, "
            "custom: [{name: employee_id, regex: 'E\\d{6}'}], outputs: block, phone_region: gb}",
        )
    )
    (entry,) = loaded.config.models["chat"].policies
    assert isinstance(entry, PiiConfig)
    assert entry.phone_region == "GB" and entry.outputs == "block"


def test_tensor_models_refuse_the_policy_at_load() -> None:
    loaded = parse_config(
        CONFIG.replace("POLICY", "{type: max_tokens, max: 3}").replace(
            "route: {backends: [local]}", "route: {backends: [local]}\n    policies: [{type: pii}]"
        )
    )
    with pytest.raises(
        ConfigError, match=r"models\.digits\.policies\[0\].*chat or embeddings models, not tensor"
    ):
        build_runtime(loaded)


# -- requests ---------------------------------------------------------------------------


def test_mask_gives_each_value_a_typed_placeholder_numbered_per_type() -> None:
    policy = _policy(action="mask")
    ctx = _ctx()
    request = _chat(
        "I am ann@example.com, call (415) 555-0132",
        "cc bob@example.org and again ann@example.com",
    )
    original = copy.deepcopy(request.body)
    masked = policy.on_request(request, ctx)
    assert _contents(masked) == [
        "I am [EMAIL_1], call [PHONE_1]",
        "cc [EMAIL_2] and again [EMAIL_1]",
    ]
    assert request.body == original  # the caller's request is not changed
    assert ctx.policy_notes == [("pii", "mask email=3 phone=1")]


def test_placeholders_written_by_the_caller_are_never_handed_out() -> None:
    policy = _policy(action="mask", restore=True)
    ctx = _ctx()
    masked = policy.on_request(_chat("[EMAIL_1] was masked before; mine is ann@example.com"), ctx)
    assert _contents(masked) == ["[EMAIL_1] was masked before; mine is [EMAIL_2]"]
    restored = policy.on_response(_answer("[EMAIL_1] / [EMAIL_2]"), ctx)
    assert _answer_text(restored) == "[EMAIL_1] / ann@example.com"


def test_parts_and_tool_call_arguments_are_masked_too() -> None:
    policy = _policy(action="mask")
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "ssn 123-45-6789"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"email": "a@b.io"}'},
                    }
                ],
            },
        ],
    }
    masked = policy.on_request(ChatRequest("m", body), _ctx())
    messages = masked.body["messages"]
    assert messages[0]["content"] == [{"type": "text", "text": "ssn [SSN_1]"}]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"email": "[EMAIL_1]"}'


def test_custom_detectors_mask_with_their_name() -> None:
    policy = _policy(action="mask", custom=[{"name": "employee_id", "regex": r"\bE\d{6}\b"}])
    masked = policy.on_request(_chat("badge E123456 expired"), _ctx())
    assert _contents(masked) == ["badge [EMPLOYEE_ID_1] expired"]


def test_block_is_a_400_naming_the_detectors_never_the_values() -> None:
    policy = _policy(action="block")
    ctx = _ctx("strict-model")
    before = _detections("strict-model", "ssn", "block", "input")
    with pytest.raises(InvalidInput) as refused:
        policy.on_request(_chat("my ssn is 123-45-6789, mail ann@example.com"), ctx)
    message = refused.value.message
    assert refused.value.kind is ErrorKind.INVALID_INPUT
    assert "email, ssn" in message and "strict-model" in message
    assert "123-45-6789" not in message and "ann@example.com" not in message
    assert ctx.policy_notes == [("pii", "block email=1 ssn=1")]
    assert _detections("strict-model", "ssn", "block", "input") == before + 1


def test_allow_passes_the_request_unchanged_and_counts() -> None:
    policy = _policy(action="allow")
    ctx = _ctx("audit-only")
    request = _chat("ip 203.0.113.9")
    assert policy.on_request(request, ctx) is request
    assert ctx.policy_notes == [("pii", "allow ip_address=1")]
    assert _detections("audit-only", "ip_address", "allow", "input") >= 1


def test_a_request_without_personal_data_is_the_same_object_and_noted_nowhere() -> None:
    policy = _policy(action="mask", restore=True, outputs="mask")
    ctx = _ctx()
    request = _chat("Summarise the 2024 report in 3 bullet points, version 1.2.3.")
    assert policy.on_request(request, ctx) is request
    assert ctx.policy_notes is None and ctx.policy_state is None


def test_embedding_inputs_are_masked_and_blocked() -> None:
    ctx = _ctx()
    request = EmbeddingRequest("e", ["card 4111 1111 1111 1111", "plain text"])
    masked = _policy(action="mask").on_request(request, ctx)
    assert masked.texts == ["card [CREDIT_CARD_1]", "plain text"]
    assert request.texts[0] == "card 4111 1111 1111 1111"
    with pytest.raises(InvalidInput, match=r"^input: personal data \(credit_card\)"):
        _policy(action="block").on_request(request, _ctx())


# -- whole answers ----------------------------------------------------------------------------


def test_restore_puts_back_this_callers_values_and_leaves_the_shared_answer_alone() -> None:
    """Two callers whose requests differ only in the value mask to the same
    request (one cache entry): each gets its own value back from the one answer."""
    policy = _policy(action="mask", restore=True)
    ann, bob = _ctx(), _ctx()
    masked_ann = policy.on_request(_chat("write to ann@example.com"), ann)
    masked_bob = policy.on_request(_chat("write to bob@example.org"), bob)
    assert masked_ann.body == masked_bob.body  # the same cache key
    shared = _answer("Sure: [EMAIL_1] is noted.")
    kept = copy.deepcopy(shared.body)
    assert _answer_text(policy.on_response(shared, ann)) == "Sure: ann@example.com is noted."
    assert _answer_text(policy.on_response(shared, bob)) == "Sure: bob@example.org is noted."
    assert shared.body == kept
    # A third caller who never sent a value gets the placeholder as it is.
    stranger = _ctx()
    policy.on_request(_chat("write to [EMAIL_1]"), stranger)
    assert _answer_text(policy.on_response(shared, stranger)) == "Sure: [EMAIL_1] is noted."


def test_without_restore_the_answer_keeps_its_placeholders() -> None:
    policy = _policy(action="mask")
    ctx = _ctx()
    policy.on_request(_chat("write to ann@example.com"), ctx)
    answer = _answer("[EMAIL_1] noted")
    assert policy.on_response(answer, ctx) is answer


def test_outputs_mask_masks_what_the_model_wrote_not_the_callers_own_values() -> None:
    policy = _policy(action="mask", restore=True, outputs="mask")
    ctx = _ctx("out-mask")
    policy.on_request(_chat("I am ann@example.com"), ctx)
    result = policy.on_response(
        _answer("Hello [EMAIL_1]; the admin is root@example.net, ssn 123-45-6789."), ctx
    )
    assert _answer_text(result) == "Hello ann@example.com; the admin is [EMAIL_2], ssn [SSN_1]."
    assert ctx.policy_notes == [
        ("pii", "mask email=1"),
        ("pii", "output mask email=1 ssn=1"),
    ]
    assert _detections("out-mask", "email", "mask", "output") >= 1


def test_outputs_block_fails_the_answer_as_a_bad_output_naming_the_detector() -> None:
    policy = _policy(action="allow", outputs="block")
    ctx = _ctx("out-block")
    with pytest.raises(BackendFailed) as blocked:
        policy.on_response(_answer("the card is 4111 1111 1111 1111"), ctx)
    assert blocked.value.reason == "bad_output"
    assert "credit_card" in blocked.value.message
    assert "4111" not in blocked.value.message
    assert ctx.policy_notes == [("pii", "output block credit_card=1")]


def test_outputs_allow_counts_and_changes_nothing() -> None:
    policy = _policy(action="mask", outputs="allow")
    ctx = _ctx()
    answer = _answer("the server is 10.0.0.15")
    result = policy.on_response(answer, ctx)
    assert _answer_text(result) == "the server is 10.0.0.15"
    assert ctx.policy_notes == [("pii", "output allow ip_address=1")]


def test_embedding_answers_pass_through() -> None:
    from gateway.core.llm import EmbeddingResult

    policy = _policy(action="mask", outputs="mask")
    result = EmbeddingResult(vectors=None, usage=None)  # type: ignore[arg-type]
    assert policy.on_response(result, _ctx()) is result


# -- streamed answers -----------------------------------------------------------------------


def _chunk(content: str | None = None, finish: str | None = None, index: int = 0) -> dict[str, Any]:
    delta: dict[str, Any] = {} if content is None else {"content": content}
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


def _stream(policy: Pii, ctx: RequestContext, pieces: list[str]) -> list[str]:
    """What the caller receives of each chunk, the last one (finish_reason) included."""
    sent = []
    for chunk in [*(_chunk(p) for p in pieces), _chunk(finish="stop")]:
        out = policy.on_chunk(chunk, ctx)
        sent.append(out["choices"][0]["delta"].get("content") or "")
    return sent


def _splits(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


PLACEHOLDER_TEXT = st.lists(
    st.sampled_from(
        ["[EMAIL_1]", "[EMAIL_12]", "[PHONE_1]", "[", "]", "[EMA", "IL_1]", "[X_1]", " ", "a", "_1"]
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=PLACEHOLDER_TEXT, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_of_a_streamed_answer_restores_exactly(text: str, cuts: list[int]) -> None:
    masking = Masking()
    for value in ("ann@example.com", *(f"x{i}@example.com" for i in range(2, 13))):
        masking.placeholder("email", value, restorable=True)
    masking.placeholder("phone", "+1 415 555 0132", restorable=True)
    restorer = StreamRestorer(masking)
    streamed = "".join(restorer.feed(piece) for piece in _splits(text, cuts)) + restorer.flush()
    assert streamed == masking.restore(text)


def test_a_placeholder_split_across_chunks_is_restored_and_nothing_else_waits() -> None:
    policy = _policy(action="mask", restore=True)
    ctx = _ctx()
    policy.on_request(_chat("mail ann@example.com"), ctx)
    sent = _stream(policy, ctx, ["Hi ", "[EMA", "IL_1]", ", done [x] ", "ok"])
    # Only the possible start of a placeholder waited, and only until the next chunk.
    assert sent == ["Hi ", "", "ann@example.com", ", done [x] ", "ok", ""]


def test_a_held_tail_goes_out_with_the_last_chunk() -> None:
    policy = _policy(action="mask", restore=True)
    ctx = _ctx()
    policy.on_request(_chat("mail ann@example.com"), ctx)
    assert _stream(policy, ctx, ["see [EMAIL_"]) == ["see ", "[EMAIL_"]


# Fragments of an answer: prose, values the detectors find (some with
# whitespace inside), digits that are no value, and a restorable placeholder.
ANSWER_FRAGMENTS = st.lists(
    st.sampled_from(
        [
            "Hello",
            " ",
            "there",
            ", ",
            "\n",
            "ann@example.com",
            "bob@mail.example.org",
            "4111 1111 1111 1111",
            "(415) 555-0132",
            "+44 20 7946 0958",
            "DE89 3704 0044 0532 0130 00",
            "123-45-6789",
            "10.0.0.15",
            "2001:db8::1",
            "version 2.3",
            "in 2024",
            "42",
            "[EMAIL_1]",
        ]
    ),
    max_size=25,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=ANSWER_FRAGMENTS, cuts=st.lists(st.integers(min_value=0), max_size=15))
def test_any_split_of_a_streamed_answer_masks_as_the_whole_answer_does(
    text: str, cuts: list[int]
) -> None:
    policy = _policy(action="mask", restore=True, outputs="mask")
    whole_ctx, stream_ctx = _ctx(), _ctx()
    for ctx in (whole_ctx, stream_ctx):
        policy.on_request(_chat("I am caller@example.com"), ctx)
    whole = _answer_text(policy.on_response(_answer(text), whole_ctx))
    streamed = "".join(_stream(policy, stream_ctx, _splits(text, cuts)))
    assert streamed == whole
    # The notes count the same values (streamed: once the stream ends).
    assert whole_ctx.policy_notes == stream_ctx.policy_notes


def test_streamed_prose_waits_only_for_its_last_word() -> None:
    policy = _policy(action="allow", outputs="mask")
    ctx = _ctx()
    sent = _stream(policy, ctx, ["The quick ", "brown fox", " jumps over", " the dog."])
    assert sent == ["The quick ", "brown ", "fox jumps ", "over the ", "dog."]


def test_a_blocked_stream_stops_before_the_value() -> None:
    policy = _policy(action="allow", outputs="block")
    ctx = _ctx("stream-block")
    before = _detections("stream-block", "ssn", "block", "output")
    sent = []
    with pytest.raises(BackendFailed) as blocked:
        for piece in ["Your ", "number ", "is 123-", "45-6789 ", "and more text follows here"]:
            sent.append(policy.on_chunk(_chunk(piece), ctx)["choices"][0]["delta"]["content"])
        policy.on_chunk(_chunk(finish="stop"), ctx)
    assert blocked.value.reason == "bad_output" and "ssn" in blocked.value.message
    assert "6789" not in "".join(sent) and "6789" not in blocked.value.message
    assert ctx.policy_notes == [("pii", "output block ssn=1")]
    assert _detections("stream-block", "ssn", "block", "output") == before + 1


def test_choices_and_tool_call_arguments_stream_separately() -> None:
    policy = _policy(action="mask", restore=True)
    ctx = _ctx()
    policy.on_request(_chat("mail ann@example.com"), ctx)

    def tool_chunk(arguments: str, finish: str | None = None) -> dict[str, Any]:
        call = {"index": 0, "function": {"arguments": arguments}}
        return {"choices": [{"index": 1, "delta": {"tool_calls": [call]}, "finish_reason": finish}]}

    out = [
        policy.on_chunk(_chunk("to [EMA", index=0), ctx),
        policy.on_chunk(tool_chunk('{"to": "[EMAIL'), ctx),
        policy.on_chunk(_chunk("IL_1]", index=0), ctx),
        policy.on_chunk(tool_chunk('_1]"}', finish="tool_calls"), ctx),
    ]
    content = [
        o["choices"][0]["delta"].get("content") for o in out if o["choices"][0]["index"] == 0
    ]
    arguments = [
        o["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
        for o in out
        if o["choices"][0]["index"] == 1
    ]
    assert "".join(content) == "to ann@example.com"
    assert "".join(arguments) == '{"to": "ann@example.com"}'


def test_a_stream_without_restore_or_outputs_passes_chunks_through() -> None:
    policy = _policy(action="mask")
    ctx = _ctx()
    policy.on_request(_chat("mail ann@example.com"), ctx)
    chunk = _chunk("[EMA")
    assert policy.on_chunk(chunk, ctx) is chunk


# -- streams ending without a finish_reason chunk ------------------------------------------


def _stream_to_end(
    policy: Pii, ctx: RequestContext, pieces: list[str], finish: bool
) -> list[dict[str, Any]]:
    """Every chunk the caller receives: the pieces' (then the finish_reason
    chunk, when the vendor sends one), then the policies' end-of-stream ones."""
    chunks = [_chunk(p) for p in pieces] + ([_chunk(finish="stop")] if finish else [])
    sent = [policy.on_chunk(chunk, ctx) for chunk in chunks]
    return sent + apply_stream_end((policy,), ctx)


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


@settings(max_examples=200, deadline=None)
@given(
    text=ANSWER_FRAGMENTS,
    cuts=st.lists(st.integers(min_value=0), max_size=15),
    finish=st.booleans(),
)
def test_a_stream_with_or_without_finish_reason_gives_the_whole_answer(
    text: str, cuts: list[int], finish: bool
) -> None:
    policy = _policy(action="mask", restore=True, outputs="mask")
    whole_ctx, stream_ctx = _ctx(), _ctx()
    for ctx in (whole_ctx, stream_ctx):
        policy.on_request(_chat("I am caller@example.com"), ctx)
    whole = _answer_text(policy.on_response(_answer(text), whole_ctx))
    assert _text(_stream_to_end(policy, stream_ctx, _splits(text, cuts), finish)) == whole
    assert whole_ctx.policy_notes == stream_ctx.policy_notes


def test_text_held_at_a_stream_end_without_finish_reason_goes_out_in_a_chunk_of_its_own() -> None:
    policy = _policy(action="mask", restore=True, outputs="mask")
    ctx = _ctx()
    policy.on_request(_chat("mail ann@example.com"), ctx)
    head = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 5, "model": "v"}

    def chunk(content: str) -> dict[str, Any]:
        choice = {"index": 2, "delta": {"content": content}, "finish_reason": None}
        return {**head, "choices": [choice], "usage": None}

    pieces = ["to [EMAIL_1] ", "or 4111 1111", " 1111 1111"]
    # All held: with a digit this near the end, a card may still be growing.
    assert _text([policy.on_chunk(chunk(p), ctx) for p in pieces]) == ""
    content = "to ann@example.com or [CREDIT_CARD_1]"
    assert policy.on_stream_end(ctx) == [
        {
            **head,
            "usage": None,
            "choices": [{"index": 2, "delta": {"content": content}, "finish_reason": None}],
        }
    ]
    assert ctx.policy_notes == [("pii", "mask email=1"), ("pii", "output mask credit_card=1")]
    assert policy.on_stream_end(ctx) == []  # nothing is sent twice


def test_a_held_placeholder_tail_and_tool_call_arguments_go_out_at_the_end() -> None:
    policy = _policy(action="mask", restore=True)
    ctx = _ctx()
    policy.on_request(_chat("mail ann@example.com"), ctx)
    call = {"index": 1, "function": {"arguments": '{"to": "[EMAIL_1'}}
    tool = {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}
    sent = [policy.on_chunk(_chunk("see [EMA"), ctx), policy.on_chunk(tool, ctx)]
    (end,) = policy.on_stream_end(ctx)
    assert _text([*sent, end]) == "see [EMA"
    arguments = [
        c["function"]["arguments"]
        for out in [*sent, end]
        for c in out["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert "".join(arguments) == '{"to": "[EMAIL_1'


def test_a_stream_that_finished_adds_nothing_at_its_end() -> None:
    policy = _policy(action="mask", restore=True, outputs="mask")
    ctx = _ctx()
    policy.on_request(_chat("mail ann@example.com"), ctx)
    assert _stream(policy, ctx, ["see [EMAIL_"]) == ["see ", "[EMAIL_"]
    assert policy.on_stream_end(ctx) == []


def test_a_value_held_at_a_stream_end_without_finish_reason_is_still_blocked() -> None:
    policy = _policy(action="allow", outputs="block")
    ctx = _ctx("end-block")
    sent = [policy.on_chunk(_chunk(p), ctx) for p in ["Your number ", "is 123-45-6789"]]
    with pytest.raises(BackendFailed) as blocked:
        policy.on_stream_end(ctx)
    assert blocked.value.reason == "bad_output" and "6789" not in _text(sent)
    assert ctx.policy_notes == [("pii", "output block ssn=1")]


def test_every_builtin_detector_has_a_placeholder_label() -> None:
    masking = Masking()
    labels = {masking.placeholder(kind, "v", restorable=False) for kind in BUILTIN}
    assert all(re.fullmatch(r"\[[A-Z_]+_1\]", label) for label in labels)
    assert len(labels) == len(BUILTIN)
