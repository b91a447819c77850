"""`type: max_tokens` end to end: a real gateway in front of the fake vendor
(whose reply is cut at the `max_tokens` it receives: testkit/fake_vendor.py),
its config checks, and the audit record naming what the policy did."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.config.loader import ConfigError, parse_config
from gateway.core.errors import InvalidInput
from gateway.core.llm import ChatRequest
from gateway.core.types import RequestContext
from gateway.policies.max_tokens import MaxTokens, MaxTokensConfig
from gateway.runtime import build_runtime
from testkit.fake_vendor import start_fake_vendor
from tests.api.test_openai_surface import expected_reply, openai_backend, sdk, serving

MAX = 3


def _chat(max_tokens: int | None = None) -> ChatRequest:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return ChatRequest("m", body)


def _ctx() -> RequestContext:
    return RequestContext(request_id="r", protocol="test", model="m")


@pytest.mark.parametrize(
    ("asked", "over", "sent", "note"),
    [(None, "clamp", MAX, "set"), (8, "clamp", MAX, "clamped"), (2, "clamp", 2, None)],
)
def test_the_budget_the_backend_sees(
    asked: int | None, over: str, sent: int, note: str | None
) -> None:
    policy = MaxTokens(MaxTokensConfig(type="max_tokens", max=MAX, over=over))  # type: ignore[arg-type]
    ctx = _ctx()
    request = _chat(asked)
    changed = policy.on_request(request, ctx)
    assert changed.body["max_tokens"] == sent
    assert request.body.get("max_tokens") == asked  # the caller's request is not changed
    assert ctx.policy_notes == ([("max_tokens", note)] if note else None)


def test_refuse_names_the_field_and_the_limit() -> None:
    policy = MaxTokens(MaxTokensConfig(type="max_tokens", max=MAX, over="refuse"))
    body = {"model": "m", "messages": [], "max_completion_tokens": 9}
    with pytest.raises(InvalidInput, match=r"max_completion_tokens: at most 3 .*got 9"):
        policy.on_request(ChatRequest("m", body), _ctx())


CONFIG = """
backends:
  vendor: {type: openai, base_url: "http://127.0.0.1:9/v1", model: x}
  local: {type: onnx, path: models/digits/model.onnx}
models:
  chat:
    kind: chat
    route: {backends: [vendor]}
    policies: [{type: max_tokens, max: 3}]
  digits:
    signature:
      inputs: [{name: x, datatype: FP32, shape: [-1, 64]}]
      outputs: [{name: y, datatype: FP32, shape: [-1, 10]}]
    route: {backends: [local]}
    policies: [POLICY]
"""


def test_the_loader_checks_each_policy_entry_by_its_type() -> None:
    with pytest.raises(ConfigError, match=r"models\.digits\.policies\[0\].*no_such"):
        parse_config(CONFIG.replace("POLICY", "{type: no_such}"))
    with pytest.raises(ConfigError, match=r"models\.digits\.policies\[0\]\.max"):
        parse_config(CONFIG.replace("POLICY", "{type: max_tokens, max: 0}"))


def test_a_policy_for_another_kind_fails_the_load_with_its_path() -> None:
    loaded = parse_config(CONFIG.replace("POLICY", "{type: max_tokens, max: 3}"))
    with pytest.raises(
        ConfigError, match=r"models\.digits\.policies\[0\].*chat models, not tensor"
    ):
        build_runtime(loaded)


def _config(vendor_url: str, audit: Path) -> dict[str, object]:
    def model(**policy: object) -> dict[str, object]:
        return {
            "kind": "chat",
            "route": {"backends": ["vendor"]},
            "policies": [{"type": "max_tokens", "max": MAX, **policy}],
        }

    return {
        "audit": {"sink": "file", "path": str(audit)},
        "backends": {"vendor": openai_backend(vendor_url)},
        "models": {"clamped": model(), "strict": model(over="refuse")},
    }


@pytest.fixture(scope="module")
def vendor() -> Iterator[str]:
    process = start_fake_vendor()
    try:
        yield process.url
    finally:
        process.stop()


def test_a_clamped_request_gets_the_shorter_answer(vendor: str, tmp_path: Path) -> None:
    with serving(_config(vendor, tmp_path / "audit.jsonl"), tmp_path) as served:
        client = sdk(served)
        text = "one two three four"
        reply = client.chat.completions.create(
            model="clamped", messages=[{"role": "user", "content": text}], max_tokens=8
        )
        assert reply.choices[0].message.content == expected_reply(text, MAX)
        streamed = client.chat.completions.create(
            model="clamped", messages=[{"role": "user", "content": text}], stream=True
        )
        chunks = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert chunks.split() == expected_reply(text, MAX).split()


def test_a_refused_request_is_a_400_and_audited(vendor: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with (
        serving(_config(vendor, audit), tmp_path) as served,
        pytest.raises(openai.BadRequestError, match="max_tokens: at most 3"),
    ):
        sdk(served).chat.completions.create(
            model="strict",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=50,
            extra_headers={"x-request-id": "policy-audit-1"},
        )
    # stopped: every record is written
    (record,) = [
        r
        for line in audit.read_text().splitlines()
        if (r := json.loads(line)).get("request_id") == "policy-audit-1"
    ]
    assert record["status"] == 400
    assert record["policies"] == [{"policy": "max_tokens", "action": "refused"}]
