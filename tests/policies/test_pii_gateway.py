"""`type: pii` end to end: a real gateway in front of the fake vendor (which
echoes the last user message: testkit/fake_vendor.py, and records what it
received), called with the openai SDK. What the vendor received is masked;
block is a 400 naming the detector; answers are restored (whole, streamed,
from a shared cache entry) and scanned; and no value reaches the audit
records or the gateway's logs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from testkit.fake_vendor import (
    control_fake_vendor,
    fake_vendor_requests,
    reset_fake_vendor,
    start_fake_vendor,
)
from testkit.gateway_process import GatewayProcess
from tests.api.test_openai_surface import (
    anthropic_backend,
    expected_reply,
    openai_backend,
    sdk,
    serving,
)
from tests.metrics_reader import value

WORDS = 12  # the fake vendor's reply length here: room for the echoed sentences

EMAIL = "ann.lee@example.com"
OTHER_EMAIL = "bob.ray@example.org"
PHONE = "(415) 555-0132"
SSN = "123-45-6789"
CARD = "4111 1111 1111 1111"
IBAN = "DE89 3704 0044 0532 0130 00"
VALUES = [EMAIL, OTHER_EMAIL, PHONE, SSN, CARD, IBAN, "555-0132", "4111", "6789", "0532"]


def _chat(backends: list[str], **policy: Any) -> dict[str, Any]:
    model: dict[str, Any] = {
        "kind": "chat",
        "route": {"backends": backends},
        "policies": [{"type": "pii", **policy}],
    }
    return model


def _config(vendor: str, audit: Path) -> dict[str, Any]:
    return {
        "server": {"log_level": "debug"},
        "audit": {"sink": "file", "path": str(audit), "flush_interval_ms": 50},
        "backends": {
            "vendor": openai_backend(vendor),
            "claude": anthropic_backend(vendor),
            "vendor-embed": openai_backend(vendor, model="fake-embed"),
        },
        "models": {
            "masked": {**_chat(["vendor"], action="mask"), "audit_payload": True},
            "restored": {
                **_chat(["vendor"], action="mask", restore=True),
                "cache": {"ttl_s": 600},
                "audit_payload": True,
            },
            "claude-restored": _chat(["claude"], action="mask", restore=True),
            "strict": _chat(["vendor"], action="block"),
            "guarded": _chat(["vendor"], action="allow", outputs="block"),
            "scrubbed": _chat(["vendor"], action="allow", outputs="mask"),
            "embed": {
                "kind": "embeddings",
                "route": {"backends": ["vendor-embed"]},
                "policies": [{"type": "pii", "detectors": ["email", "credit_card"]}],
            },
        },
    }


@pytest.fixture(scope="module")
def vendor() -> Iterator[str]:
    process = start_fake_vendor(completion_tokens=WORDS)
    try:
        yield process.url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def gateway(vendor: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("pii-gateway")
    with serving(_config(vendor, workdir / "audit.jsonl"), workdir) as started:
        yield started


@pytest.fixture(autouse=True)
def fresh_vendor(vendor: str) -> None:
    reset_fake_vendor(vendor)


def _received(vendor: str, route: str = "/v1/chat/completions") -> list[Any]:
    return [json.loads(r["body"]) for r in fake_vendor_requests(vendor) if r["route"] == route]


def _ask(gateway: GatewayProcess, model: str, text: str, **extra: Any) -> Any:
    return sdk(gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], temperature=0, **extra
    )


def _streamed(gateway: GatewayProcess, model: str, text: str) -> str:
    chunks = _ask(gateway, model, text, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_the_vendor_receives_placeholders_and_the_caller_keeps_them(
    gateway: GatewayProcess, vendor: str
) -> None:
    text = f"mail {EMAIL} or call {PHONE}"
    reply = _ask(gateway, "masked", text)
    (sent,) = _received(vendor)
    masked = "mail [EMAIL_1] or call [PHONE_1]"
    assert sent["messages"] == [{"role": "user", "content": masked}]
    assert reply.choices[0].message.content == expected_reply(masked, completion_tokens=WORDS)


def test_block_is_a_400_naming_the_detector_and_never_reaches_the_vendor(
    gateway: GatewayProcess, vendor: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(gateway, "strict", f"my ssn is {SSN}")
    message = refused.value.message
    assert "ssn" in message and SSN not in message and "6789" not in message
    assert _received(vendor) == []


def test_restore_whole_and_streamed_from_one_shared_cache_entry(
    gateway: GatewayProcess, vendor: str
) -> None:
    """Requests differing only in the value share one cache entry (the key is
    made from the masked request); each caller gets its own value back."""
    first = sdk(gateway).chat.completions.with_raw_response.create(
        model="restored",
        messages=[{"role": "user", "content": f"forward to {EMAIL} please"}],
        temperature=0,
    )
    second = sdk(gateway).chat.completions.with_raw_response.create(
        model="restored",
        messages=[{"role": "user", "content": f"forward to {OTHER_EMAIL} please"}],
        temperature=0,
    )
    assert first.headers["x-gateway-cache"] == "miss"
    assert second.headers["x-gateway-cache"] == "hit"
    assert len(_received(vendor)) == 1  # the second answer came from the cache
    assert first.parse().choices[0].message.content == expected_reply(
        f"forward to {EMAIL} please", completion_tokens=WORDS
    )
    assert second.parse().choices[0].message.content == expected_reply(
        f"forward to {OTHER_EMAIL} please", completion_tokens=WORDS
    )
    # The vendor answers the masked text (its reply padded to WORDS words);
    # the caller gets that reply with its own values back.
    masked = expected_reply("card [CREDIT_CARD_1] for [EMAIL_1]", completion_tokens=WORDS)
    restored = masked.replace("[CREDIT_CARD_1]", CARD).replace("[EMAIL_1]", EMAIL)
    for model in ("restored", "claude-restored"):
        assert _streamed(gateway, model, f"card {CARD} for {EMAIL}") == restored


def test_outputs_mask_scrubs_what_the_model_echoes(gateway: GatewayProcess) -> None:
    text = f"iban {IBAN} ok"
    # The vendor sees (and echoes) the value; the caller gets it masked.
    scrubbed = expected_reply(text, completion_tokens=WORDS).replace(IBAN, "[IBAN_1]")
    assert _ask(gateway, "scrubbed", text).choices[0].message.content == scrubbed
    assert _streamed(gateway, "scrubbed", text).split() == scrubbed.split()


def test_a_stream_ending_without_finish_reason_still_delivers_the_held_text(
    gateway: GatewayProcess, vendor: str
) -> None:
    """The vendor ends with [DONE] and no finish_reason chunk: the text the
    policy still held (the IBAN at the very end) comes in a chunk of its own."""
    control_fake_vendor(vendor, stream_finish=False)
    text = f"iban {IBAN}"
    chunks = list(_ask(gateway, "scrubbed", text, stream=True, max_tokens=8))
    assert all(c.choices[0].finish_reason is None for c in chunks if c.choices)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == expected_reply(text, max_tokens=8).replace(IBAN, "[IBAN_1]")
    assert len({c.id for c in chunks}) == 1


def test_outputs_block_stops_an_echoed_value_whole_and_streamed(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.APIStatusError) as blocked:
        _ask(gateway, "guarded", f"the ssn {SSN} again")
    assert blocked.value.status_code == 502
    assert "ssn" in blocked.value.message and SSN not in blocked.value.message
    received = []
    with pytest.raises(openai.APIError, match="ssn") as ended:
        for chunk in _ask(gateway, "guarded", f"the ssn {SSN} again", stream=True):
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "6789" not in "".join(received) and "6789" not in str(ended.value)


def test_embedding_inputs_reach_the_vendor_masked(gateway: GatewayProcess, vendor: str) -> None:
    sdk(gateway).embeddings.create(model="embed", input=[f"pay {CARD}", f"mail {EMAIL}", "plain"])
    (sent,) = _received(vendor, "/v1/embeddings")
    assert sent["input"] == ["pay [CREDIT_CARD_1]", "mail [EMAIL_1]", "plain"]


def test_detections_are_counted_by_detector_action_and_direction(
    gateway: GatewayProcess,
) -> None:
    def count(model: str, detector: str, action: str, direction: str) -> float:
        return value(
            gateway.port,
            "gateway_pii_detections_total",
            model=model,
            detector=detector,
            action=action,
            direction=direction,
        )

    before = count("masked", "phone", "mask", "input"), count("scrubbed", "ssn", "mask", "output")
    _ask(gateway, "masked", f"call {PHONE}")
    _ask(gateway, "scrubbed", f"ssn {SSN}")
    after = count("masked", "phone", "mask", "input"), count("scrubbed", "ssn", "mask", "output")
    assert after == (before[0] + 1, before[1] + 1)


def test_audit_records_and_logs_hold_counts_never_values(vendor: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with serving(_config(vendor, audit), tmp_path) as served:
        client = sdk(served)
        for model in ("masked", "restored"):
            _ask(served, model, f"I am {EMAIL}, ssn {SSN}, card {CARD}, iban {IBAN}")
            _streamed(served, model, f"call {PHONE} or mail {EMAIL}")
        with pytest.raises(openai.BadRequestError):
            _ask(served, "strict", f"ssn {SSN}")
        with pytest.raises(openai.APIStatusError):
            _ask(served, "guarded", f"card {CARD}")
        client.embeddings.create(model="embed", input=[f"mail {EMAIL}"])
    logs = served.logs()
    text = audit.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    leaked = [v for v in VALUES if v in text or v in logs]
    assert not leaked, f"personal data in the audit file or the logs: {leaked}"
    notes = {
        (r["model"], n["action"])
        for r in records
        for n in r.get("policies") or []
        if n["policy"] == "pii"
    }
    assert ("masked", "mask email=1 iban=1 credit_card=1 ssn=1") in notes
    assert ("strict", "block ssn=1") in notes
    assert ("guarded", "output block credit_card=1") in notes
    assert ("embed", "mask email=1") in notes
    # audit_payload: the messages are recorded as the vendor got them, masked.
    payloads = [r for r in records if r["model"] == "masked" and r.get("messages")]
    assert payloads and "[EMAIL_1]" in json.dumps(payloads[0]["messages"])
