"""Secrets never leave (issue 14): a vendor that echoes the credentials it
received, in its 401s, its 500s and mid-stream, must not get them to the
caller, the gateway's log or the audit file; for both vendor backend types,
whole answers and streams. A real `gateway serve` process and the real fake
vendor (`echo_credentials=True`); then the redaction function and the log
filter on their own.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.observe import redact
from gateway.observe.logs import setup_logging
from testkit.fake_vendor import control_fake_vendor, start_fake_vendor
from tests.api.http_helpers import Reply, post
from tests.conftest import GatewayProcess, start_gateway

KEY_ENV = "REDACTION_TEST_VENDOR_KEY"
# One key shaped like OpenAI's, one shaped like nothing: the second is found
# only as the value of the header it was echoed in, or as the configured key.
KEYS = {
    "sk-shaped": "sk-proj-Zq7Xr2Lm9Np4Kt6Vb8Hc3Jd5Wf1Gs0Ay",
    "plain": "vendor-cred-7f3a9c2e5b8d1f4a6c0e9b2d",
}
HELLO = [{"role": "user", "content": "hello"}]
ONE_CALL = {"retries": {"max": 0}, "circuit_breaker": {"enabled": False}}


@dataclass
class Setup:
    key: str
    vendor: str  # host:port of the fake vendor
    gateway: GatewayProcess
    audit: Path


@pytest.fixture(scope="module", params=list(KEYS))
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    key = KEYS[request.param]
    vendor = start_fake_vendor(api_key=key, echo_credentials=True)
    workdir = tmp_path_factory.mktemp(f"redaction-{request.param}")
    audit = workdir / "audit.jsonl"
    config = {
        "audit": {"sink": "file", "path": str(audit), "flush_interval_ms": 10},
        "backends": {
            "gpt": {
                "type": "openai",
                "base_url": f"http://{vendor.url}/v1",
                "api_key_env": KEY_ENV,
                "model": "fake-chat",
                **ONE_CALL,
            },
            "claude": {
                "type": "anthropic",
                "base_url": f"http://{vendor.url}",
                "api_key_env": KEY_ENV,
                "model": "fake-claude",
                **ONE_CALL,
            },
        },
        "models": {
            "gpt": {"kind": "chat", "route": {"backends": ["gpt"]}},
            "claude": {"kind": "chat", "route": {"backends": ["claude"]}},
        },
    }
    try:
        gateway = start_gateway(config, workdir, env={KEY_ENV: key})
        try:
            yield Setup(key, vendor.url, gateway, audit)
        finally:
            gateway.stop()
    finally:
        vendor.stop()


def chat(setup: Setup, model: str, stream: bool) -> Reply:
    body: dict[str, object] = {"model": model, "messages": HELLO, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}  # every chunk the vendor sends
    return post(
        setup.gateway.port,
        "/v1/chat/completions",
        json.dumps(body),
        {"content-type": "application/json", "x-request-id": f"redaction-{model}-{stream}"},
    )


def assert_clean(reply: Reply, key: str) -> None:
    assert key not in reply.body.decode(errors="replace"), reply.body
    for name, value in reply.headers.items():
        assert key not in value, (name, value)


CASES = [(model, stream) for model in ("gpt", "claude") for stream in (False, True)]


def test_a_vendor_that_echoes_the_key_in_a_401_gets_it_nowhere(setup: Setup) -> None:
    control_fake_vendor(setup.vendor, api_key="someone-elses-key", error_rate=0.0)
    for model, stream in CASES:
        reply = chat(setup, model, stream)
        assert reply.status == 502, (model, stream, reply.body)
        assert_clean(reply, setup.key)
        # The vendor's text is relayed, with the credential blanked out.
        assert "HTTP 401" in reply.body.decode() and "[redacted]" in reply.body.decode()


def test_a_vendor_that_echoes_the_key_in_a_500_gets_it_nowhere(setup: Setup) -> None:
    control_fake_vendor(setup.vendor, api_key=setup.key, error_kind="500", error_rate=1.0)
    for model, stream in CASES:
        reply = chat(setup, model, stream)
        assert reply.status == 502, (model, stream, reply.body)
        assert_clean(reply, setup.key)
        assert "[redacted]" in reply.body.decode()


def test_a_vendor_that_echoes_the_key_mid_stream_gets_it_nowhere(setup: Setup) -> None:
    control_fake_vendor(setup.vendor, api_key=setup.key, error_kind="stream_error", error_rate=1.0)
    for model in ("gpt", "claude"):
        reply = chat(setup, model, stream=True)
        text = reply.body.decode()
        assert_clean(reply, setup.key)
        # The stream ends with the gateway's error event, never [DONE].
        assert '"error"' in text and "[DONE]" not in text, text
        assert "stream" in text and "[redacted]" in text, text


def test_neither_the_log_nor_the_audit_file_holds_the_key(setup: Setup) -> None:
    control_fake_vendor(setup.vendor, api_key="someone-elses-key", error_rate=0.0)
    for model, stream in CASES:
        assert chat(setup, model, stream).status == 502
    setup.gateway.stop()  # flushes the audit file; the log is complete
    logs = setup.gateway.logs()
    assert setup.key not in logs
    assert "the vendor answered HTTP 401" in logs and "[redacted]" in logs, logs
    audit = setup.audit.read_text()
    assert "redaction-gpt-True" in audit  # the requests above were recorded
    assert setup.key not in audit


# -- the redaction function ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, secret",
    [
        ("Incorrect API key provided: sk-abc123def456ghi789", "sk-abc123def456ghi789"),
        ("sent Authorization: Bearer tok.en-Value_42 upstream", "tok.en-Value_42"),
        ('{"headers": {"x-api-key": "k-live-31415926"}}', "k-live-31415926"),
        ("{'api-key': 'azure-0123456789'}", "azure-0123456789"),
        ("GET /v1/models?api_key=q-secret-777&x=1", "q-secret-777"),
        ("proxy said: authorization=Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("bearer lowercase-token-99", "lowercase-token-99"),
    ],
)
def test_credential_shapes_are_redacted(text: str, secret: str) -> None:
    clean = redact.redact(text)
    assert secret not in clean and "[redacted]" in clean, clean


def test_what_carries_no_credential_is_left_alone() -> None:
    for text in (
        "x-api-key header is required",
        "backend 'gpt': the vendor answered HTTP 500: injected fault",
        "environment variable OPENAI_KEY (api_key_env) is not set",
    ):
        assert redact.redact(text) == text


def test_configured_keys_are_redacted_however_they_appear() -> None:
    vendor_key = "plain-vendor-key-8c1e5a"  # shaped like nothing: found because it is known
    redact.remember_secret(vendor_key)
    assert redact.redact(f"the upstream said {vendor_key}!") == "the upstream said [redacted]!"
    tenant_key = "tenant-key-6b2f9d"  # held as its digest only
    redact.remember_digest(hashlib.sha256(tenant_key.encode()).digest(), len(tenant_key))
    assert redact.redact(f"got {tenant_key} and key={tenant_key}") == (
        "got [redacted] and key=[redacted]"
    )
    assert redact.redact("tenant-key-6b2f9e") == "tenant-key-6b2f9e"  # another word


# -- the log filter ------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_log_filter_redacts_messages_exceptions_and_extras(
    fmt: str, restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    setup_logging("info", fmt)
    log = logging.getLogger("gateway.test.redaction")
    log.warning("vendor said: %s", "Authorization: Bearer sk-live-abcdef123456")
    try:
        raise RuntimeError("upstream echoed x-api-key: k-logged-55555")
    except RuntimeError:
        log.exception("it broke")
    log.info("with an extra", extra={"upstream": "Bearer extra-token-777"})
    written = out.getvalue()
    for secret in ("sk-live-abcdef123456", "k-logged-55555", "extra-token-777"):
        assert secret not in written, written
    assert written.count("[redacted]") >= 3 and "RuntimeError" in written
