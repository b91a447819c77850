"""Audit records: one complete, secret-free JSON line per answered request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from gateway.api.grpc_server import GrpcServer
from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.api.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from gateway.app import build_runtime
from gateway.config.loader import ConfigError, parse_config
from gateway.config.schema import ServerConfig
from gateway.core.types import RequestContext
from gateway.observe.audit import AuditLog
from gateway.observe.audit_sinks import RotatingFileSink, StdoutSink
from tests.observe.inprocess import (
    DIGITS_BODY,
    VENDOR_KEY,
    VENDOR_KEY_ENV,
    digits_backend,
    digits_model,
    fake_vendor,
    gateway,
    vendor_backend,
)

TENANT_KEY_ENV = "OBSERVE_TEST_TENANT_KEY"
ADMIN_KEY_ENV = "OBSERVE_TEST_ADMIN_KEY"  # a config with tenants needs one
TENANT_KEY = "tenant-secret-key-9876543210"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
KEYS = {
    "time",
    "request_id",
    "trace_id",
    "tenant",
    "model",
    "version",
    "protocol",
    "backend",
    "backend_model",
    "cache",
    "attempts",
    "fallbacks",
    "status",
    "latency_ms",
    "overhead_ms",
    "cost_usd",
}


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VENDOR_KEY_ENV, VENDOR_KEY)
    monkeypatch.setenv(TENANT_KEY_ENV, TENANT_KEY)
    monkeypatch.setenv(ADMIN_KEY_ENV, "admin-key-for-the-audit-test")


def test_every_answered_request_gets_a_complete_secret_free_record(tmp_path: Path) -> None:
    audit_file = tmp_path / "audit" / "requests.jsonl"
    auth = {"authorization": f"Bearer {TENANT_KEY}"}
    secret_prompt = "my password is hunter2"
    shared_prompt = "please log this one"

    async def run() -> dict[str, Any]:
        async with fake_vendor(error_rate=1.0, error_kind="500") as bad, fake_vendor() as good:
            config = {
                "server": {"admin_key_env": ADMIN_KEY_ENV},  # tenants need an admin key
                "audit": {"sink": "file", "path": str(audit_file)},
                "tenants": [{"name": "checkout", "key_env": TENANT_KEY_ENV}],
                "backends": {
                    "bad": vendor_backend(bad.url),
                    "good": vendor_backend(good.url, cost={"usd_per_1k_input_tokens": 1.0}),
                    "digits-cpu": digits_backend(),
                },
                "models": {
                    "chat": {"kind": "chat", "route": {"backends": ["bad", "good"]}},
                    "chat-logged": {
                        "kind": "chat",
                        "route": {"backends": ["good"]},
                        "audit_payload": True,
                    },
                    "digits": digits_model(),
                },
            }
            async with gateway(config) as gw:
                post = gw.client.post
                replies = {
                    "chat": await post(
                        "/v1/chat/completions",
                        headers={
                            **auth,
                            "x-request-id": "audit-chat",
                            "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
                        },
                        json={
                            "model": "chat",
                            "messages": [{"role": "user", "content": secret_prompt}],
                        },
                    ),
                    "logged": await post(
                        "/v1/chat/completions",
                        headers={**auth, "x-request-id": "audit-logged"},
                        json={
                            "model": "chat-logged",
                            "messages": [{"role": "user", "content": shared_prompt}],
                        },
                    ),
                    "digits": await post(
                        "/v2/models/digits/infer",
                        json=DIGITS_BODY,
                        headers={**auth, "x-request-id": "audit-digits"},
                    ),
                    "anonymous": await post(
                        "/v2/models/digits/infer",
                        json=DIGITS_BODY,
                        headers={"x-request-id": "audit-anonymous"},
                    ),
                    "unknown": await post(
                        "/v2/models/nope/infer",
                        json=DIGITS_BODY,
                        headers={**auth, "x-request-id": "audit-unknown"},
                    ),
                }
                # Buffered off the request path: nothing needs to be on disk yet.
            return replies  # leaving `gateway` closed the runtime, which flushed the log

    replies = asyncio.run(run())
    assert [r.status_code for r in replies.values()] == [200, 200, 200, 401, 404]
    text = audit_file.read_text()
    records = {r["request_id"]: r for r in map(json.loads, text.splitlines())}
    assert set(records) == {
        "audit-chat",
        "audit-logged",
        "audit-digits",
        "audit-anonymous",
        "audit-unknown",
    }
    for record in records.values():
        assert set(record) >= KEYS, KEYS - set(record)
        assert record["time"].endswith("Z") and record["latency_ms"] >= record["overhead_ms"] >= 0

    chat = records["audit-chat"]
    assert chat["trace_id"] == TRACE_ID
    assert {
        k: chat[k]
        for k in (
            "tenant",
            "model",
            "version",
            "protocol",
            "backend",
            "backend_model",
            "cache",
            "attempts",
            "status",
        )
    } == {
        "tenant": "checkout",
        "model": "chat",
        "version": "1",
        "protocol": "openai",
        "backend": "good",
        "backend_model": "fake-model",
        "cache": "bypass",
        "attempts": 2,
        "status": 200,
    }
    assert chat["fallbacks"] == [{"backend": "bad", "reason": "5xx"}]
    assert chat["cost_usd"] > 0
    assert "messages" not in chat and "request_bytes" not in chat

    logged = records["audit-logged"]
    assert logged["messages"] == [{"role": "user", "content": shared_prompt}]
    assert logged["request_bytes"] == len(replies["logged"].request.content)

    digits = records["audit-digits"]
    assert (
        digits["model"],
        digits["version"],
        digits["backend"],
        digits["status"],
        digits["fallbacks"],
        digits["trace_id"],
    ) == ("digits", "1", "digits-cpu", 200, [], None)
    assert records["audit-anonymous"]["status"] == 401
    assert records["audit-anonymous"]["tenant"] is None
    assert records["audit-unknown"]["model"] is None and records["audit-unknown"]["status"] == 404

    # Never secrets, never content that was not opted in.
    for secret in (TENANT_KEY, VENDOR_KEY, "hunter2", "Bearer", "authorization"):
        assert secret not in text


def test_the_request_size_is_what_was_received_on_http_and_grpc(tmp_path: Path) -> None:
    # A chunked HTTP body declares no content-length, and a gRPC call has none:
    # the size is counted from what arrived.
    audit_file = tmp_path / "audit.jsonl"
    body = json.dumps(DIGITS_BODY).encode()
    message = pb.ModelInferRequest(
        model_name="digits",
        id="grpc-1",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="pixels",
                datatype="FP32",
                shape=[1, 64],
                contents=pb.InferTensorContents(fp32_contents=DIGITS_BODY["inputs"][0]["data"]),
            )
        ],
    )

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    async def run() -> None:
        config = {
            "audit": {"sink": "file", "path": str(audit_file)},
            "backends": {"digits-cpu": digits_backend()},
            "models": {"digits": digits_model(audit_payload=True)},
        }
        async with gateway(config) as gw:
            reply = await gw.client.post(
                "/v2/models/digits/infer", content=chunks(), headers={"x-request-id": "chunked"}
            )
            assert reply.status_code == 200 and "content-length" not in reply.request.headers
            server = GrpcServer(
                gw.runtime.service, ServerConfig(grpc={"engine": "aio"}), "127.0.0.1:0"
            )
            port = await server.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = pb_grpc.GRPCInferenceServiceStub(channel)
                    await stub.ModelInfer(message, metadata=(("x-request-id", "grpc"),), timeout=10)
            finally:
                await server.stop(0)

    asyncio.run(run())
    records = {r["request_id"]: r for r in map(json.loads, audit_file.read_text().splitlines())}
    assert records["chunked"]["request_bytes"] == len(body)
    assert records["grpc"]["request_bytes"] == message.ByteSize()


def test_the_file_rotates_and_keeps_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = RotatingFileSink(path, max_bytes=100, backups=2)
    lines = [f'{{"n":{i},"pad":"{"x" * 20}"}}\n'.encode() for i in range(10)]
    assert all(len(line) == 37 for line in lines)  # two fit in 100 bytes, three do not
    for line in lines[:4]:
        sink.write(line)
    sink.write(b"".join(lines[4:]))  # several at once: cut at line ends
    sink.close()
    kept = [path.with_name("audit.jsonl.2"), path.with_name("audit.jsonl.1"), path]
    assert not path.with_name("audit.jsonl.3").exists()
    assert [p.stat().st_size for p in kept] == [74, 74, 74]
    # Oldest first: the two backups, then the current file; older lines are gone.
    numbers = [json.loads(line)["n"] for p in kept for line in p.read_text().splitlines()]
    assert numbers == [4, 5, 6, 7, 8, 9]


def test_stdout_sink_and_writes_outside_an_event_loop(capsysbinary: pytest.CaptureFixture) -> None:
    audit = AuditLog(StdoutSink())
    ctx = RequestContext(request_id="r-1", protocol="v2_grpc", model="digits", cache="miss")
    ctx.api_key = "never-written"
    audit.record(ctx, 200, 0.004, "1", payload=False)
    record = json.loads(capsysbinary.readouterr().out)
    assert (record["request_id"], record["status"], record["latency_ms"]) == ("r-1", 200, 4.0)
    assert "never-written" not in json.dumps(record)


def test_config_needs_a_path_for_a_file_sink_and_reloads_share_the_log(tmp_path: Path) -> None:
    base = {"backends": {"digits-cpu": digits_backend()}, "models": {"digits": digits_model()}}
    with pytest.raises(ConfigError, match="audit"):
        parse_config(yaml.safe_dump({**base, "audit": {"sink": "file"}}))
    text = yaml.safe_dump({**base, "audit": {"sink": "file", "path": str(tmp_path / "a.jsonl")}})

    async def run() -> None:
        first = build_runtime(parse_config(text))
        second = build_runtime(parse_config(text), previous=first)
        assert first.audit is not None and second.audit is first.audit
        await first.close()
        assert not second.audit._closed  # the new runtime still writes to it
        await second.close()
        assert second.audit._closed

    asyncio.run(run())
    assert not (tmp_path / "a.jsonl").exists()  # nothing answered: no file made
