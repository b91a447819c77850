"""The edge holds (issue 14): the admin endpoints fail closed, keys are held as
sha256 digests (several per tenant, for rotation), the OpenAI routes know the
caller before they read a byte of the body, and no error enumerates models.

Real `gateway serve` processes (and `gateway check`) where the command line,
the log or the socket is what is observed; the in-process app otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import pickle
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.config.loader import ConfigError, load_config, parse_config
from gateway.runtime import build_runtime
from tests.api.http_helpers import Reply, post, tensor_json
from tests.conftest import ROOT, GatewayProcess, digits_config, free_port, start_gateway
from tests.observe.inprocess import DIGITS_BODY, digits_backend, digits_model, gateway

ADMIN_ENV = "EDGE_TEST_ADMIN_KEY"
ADMIN_KEY = "edge-admin-key-0f1e2d3c"
OTHER_ADMIN_ENV = "EDGE_TEST_OTHER_ADMIN_KEY"
OTHER_ADMIN_KEY = "edge-admin-key-9a8b7c6d"
CHECKOUT_ENV = "EDGE_TEST_CHECKOUT_KEY"
CHECKOUT_KEY = "checkout-key-11111111"
CHECKOUT_NEXT_ENV = "EDGE_TEST_CHECKOUT_KEY_NEXT"
CHECKOUT_NEXT_KEY = "checkout-key-22222222"
PLATFORM_ENV = "EDGE_TEST_PLATFORM_KEY"
PLATFORM_KEY = "platform-key-33333333"
OPEN_WARNING = "admin endpoints are OPEN"
HELLO = [{"role": "user", "content": "hello"}]
DIGITS_JSON = tensor_json("pixels", "FP32", [1, 64], [0.0] * 64)


def admin(port: int, path: str, key: str | None = None, method: str = "POST") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    conn.request(method, path, b"" if method == "POST" else None, headers)
    status = conn.getresponse().status
    conn.close()
    return status


def gateway_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def with_tenants(config: dict, admin_env: str | None = ADMIN_ENV) -> dict:
    config["tenants"] = [{"name": "checkout", "key_env": CHECKOUT_ENV}]
    if admin_env is not None:
        config["server"]["admin_key_env"] = admin_env
    return config


# -- fail closed -------------------------------------------------------------------------


def test_tenants_without_an_admin_key_are_refused_by_check_serve_and_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {CHECKOUT_ENV: CHECKOUT_KEY, ADMIN_ENV: ADMIN_KEY}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    refused = tmp_path / "refused.yaml"
    refused.write_text(yaml.safe_dump(with_tenants(digits_config(), admin_env=None)))
    checked = gateway_cli("check", str(refused), env=env)
    assert checked.returncode == 1, checked
    assert "server.admin_key_env" in checked.stderr
    assert "required when tenants are configured" in checked.stderr

    served = gateway_cli(
        "serve", "--config", str(refused), "--http-port", str(free_port()), "--grpc-port", "0",
        env=env,
    )  # fmt: skip
    assert served.returncode == 1 and "server.admin_key_env" in served.stderr, served

    with pytest.raises(ConfigError) as error:
        load_config(refused)  # what a reload reads: refused there too
    assert any("server.admin_key_env" in p for p in error.value.problems)

    keyed = tmp_path / "keyed.yaml"
    keyed.write_text(yaml.safe_dump(with_tenants(digits_config())))
    assert gateway_cli("check", str(keyed), env=env).returncode == 0


def test_the_default_config_binds_loopback_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = ROOT / "config" / "gateway.yaml"
    monkeypatch.delenv("GATEWAY_HOST", raising=False)
    assert load_config(default).config.server.host == "127.0.0.1"
    monkeypatch.setenv("GATEWAY_HOST", "0.0.0.0")
    assert load_config(default).config.server.host == "0.0.0.0"


def test_open_admin_endpoints_on_every_interface_are_warned_about_at_start(
    tmp_path: Path,
) -> None:
    everywhere = start_gateway(digits_config(watch_config_s=0), tmp_path / "a", "--host", "0.0.0.0")
    try:
        line = next(x for x in everywhere.logs().splitlines() if OPEN_WARNING in x)
        assert "WARNING" in line and "0.0.0.0" in line and "admin_key_env" in line, line
        assert admin(everywhere.port, "/admin/config", method="GET") == 200  # open, as warned
    finally:
        everywhere.stop()

    loopback = start_gateway(digits_config(watch_config_s=0), tmp_path / "b")
    keyed = start_gateway(
        digits_config(watch_config_s=0, admin_key_env=ADMIN_ENV),
        tmp_path / "c",
        "--host",
        "0.0.0.0",
        env={ADMIN_ENV: ADMIN_KEY},
    )
    try:
        assert OPEN_WARNING not in loopback.logs()
        assert OPEN_WARNING not in keyed.logs()
        assert admin(keyed.port, "/admin/config", method="GET") == 401
    finally:
        loopback.stop()
        keyed.stop()


def test_an_admin_key_set_changed_or_removed_by_reload_applies_to_the_next_call(
    tmp_path: Path,
) -> None:
    keys = {ADMIN_ENV: ADMIN_KEY, OTHER_ADMIN_ENV: OTHER_ADMIN_KEY}
    started = start_gateway(digits_config(watch_config_s=0), tmp_path, env=keys)
    path = tmp_path / "gateway.yaml"
    port = started.port

    def rewrite(admin_env: str | None) -> None:
        config = digits_config(watch_config_s=0)
        if admin_env is not None:
            config["server"]["admin_key_env"] = admin_env
        path.write_text(yaml.safe_dump(config))

    try:
        assert admin(port, "/admin/config", method="GET") == 200  # no key configured: open
        rewrite(ADMIN_ENV)
        assert admin(port, "/admin/reload") == 200
        # Set: the very next call needs it, on every admin endpoint.
        assert admin(port, "/admin/config", method="GET") == 401
        assert admin(port, "/admin/backends/digits-cpu/disable") == 401
        assert admin(port, "/admin/rollback") == 401
        assert admin(port, "/admin/reload", key=ADMIN_KEY[:-1] + "x") == 401  # same length
        assert admin(port, "/admin/config", key=OTHER_ADMIN_KEY, method="GET") == 401
        assert admin(port, "/admin/config", key=ADMIN_KEY, method="GET") == 200

        rewrite(OTHER_ADMIN_ENV)  # changed
        assert admin(port, "/admin/reload", key=ADMIN_KEY) == 200
        assert admin(port, "/admin/config", key=ADMIN_KEY, method="GET") == 401
        assert admin(port, "/admin/config", key=OTHER_ADMIN_KEY, method="GET") == 200

        rewrite(None)  # removed (no tenants: allowed, and said loudly)
        assert admin(port, "/admin/reload", key=OTHER_ADMIN_KEY) == 200
        assert admin(port, "/admin/config", method="GET") == 200
    finally:
        started.stop()
    assert "need no key any more" in started.logs()


# -- keys as digests, several per tenant ---------------------------------------------------


def tenants_config(**tenant_envs: object) -> dict:
    return {
        "server": {"admin_key_env": ADMIN_ENV},
        "tenants": [
            {"name": "checkout", "key_env": tenant_envs.get("checkout", CHECKOUT_ENV)},
            {"name": "platform", "key_env": tenant_envs.get("platform", PLATFORM_ENV)},
        ],
        "backends": {"digits-cpu": digits_backend()},
        "models": {"digits": digits_model()},
    }


@pytest.fixture
def tenant_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        ADMIN_ENV: ADMIN_KEY,
        CHECKOUT_ENV: CHECKOUT_KEY,
        CHECKOUT_NEXT_ENV: CHECKOUT_NEXT_KEY,
        PLATFORM_ENV: PLATFORM_KEY,
    }.items():
        monkeypatch.setenv(name, value)


def test_keys_are_held_as_sha256_digests_only(tenant_keys: None) -> None:
    config = tenants_config(checkout=[CHECKOUT_ENV, CHECKOUT_NEXT_ENV])
    runtime = build_runtime(parse_config(yaml.safe_dump(config)))
    try:
        assert runtime.admin_key_digest == hashlib.sha256(ADMIN_KEY.encode()).digest()
        held = pickle.dumps(runtime.service.tenants)
        for key in (CHECKOUT_KEY, CHECKOUT_NEXT_KEY, PLATFORM_KEY):
            assert key.encode() not in held
            assert hashlib.sha256(key.encode()).digest() in held
    finally:
        asyncio.run(runtime.close())


def test_a_tenant_may_hold_several_keys_for_rotation(tenant_keys: None) -> None:
    config = tenants_config(checkout=[CHECKOUT_ENV, CHECKOUT_NEXT_ENV])

    async def run() -> dict[str, int]:
        async with gateway(config) as gw:
            statuses = {}
            for key in (CHECKOUT_KEY, CHECKOUT_NEXT_KEY, PLATFORM_KEY, "not-a-key", ADMIN_KEY):
                reply = await gw.client.post(
                    "/v2/models/digits/infer",
                    json=DIGITS_BODY,
                    headers={"authorization": f"Bearer {key}"},
                )
                statuses[key] = reply.status_code
            return statuses

    assert asyncio.run(run()) == {
        CHECKOUT_KEY: 200,
        CHECKOUT_NEXT_KEY: 200,
        PLATFORM_KEY: 200,
        "not-a-key": 401,
        ADMIN_KEY: 401,  # the admin key is not a tenant key
    }


def test_every_key_listed_must_be_set_and_no_two_tenants_share_one(
    tenant_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def problems(config: dict) -> list[str]:
        with pytest.raises(ConfigError) as error:
            build_runtime(parse_config(yaml.safe_dump(config)))
        return error.value.problems

    monkeypatch.delenv(CHECKOUT_NEXT_ENV)
    [unset] = problems(tenants_config(checkout=[CHECKOUT_ENV, CHECKOUT_NEXT_ENV]))
    assert unset.startswith("tenants[0].key_env[1]") and CHECKOUT_NEXT_ENV in unset, unset

    monkeypatch.setenv(CHECKOUT_NEXT_ENV, PLATFORM_KEY)  # checkout's next key is platform's key
    [shared] = problems(tenants_config(checkout=[CHECKOUT_ENV, CHECKOUT_NEXT_ENV]))
    assert "tenants 'checkout' and 'platform' have the same key" in shared, shared


# -- the OpenAI routes know the caller first; errors enumerate nothing -----------------------


@pytest.fixture(scope="module")
def tenant_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    never_called = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "x"}
    config = digits_config(admin_key_env=ADMIN_ENV, watch_config_s=0)
    config["backends"]["vendor"] = never_called
    config["models"]["internal-chat"] = {"kind": "chat", "route": {"backends": ["vendor"]}}
    config["models"]["internal-embed"] = {"kind": "embeddings", "route": {"backends": ["vendor"]}}
    config["tenants"] = [
        {"name": "checkout", "key_env": CHECKOUT_ENV, "models": ["digits"]},
        {"name": "platform", "key_env": PLATFORM_ENV},
    ]
    env = {ADMIN_ENV: ADMIN_KEY, CHECKOUT_ENV: CHECKOUT_KEY, PLATFORM_ENV: PLATFORM_KEY}
    started = start_gateway(config, tmp_path_factory.mktemp("edge-tenants"), env=env)
    yield started
    started.stop()


def openai_post(port: int, path: str, body: str, key: str | None) -> Reply:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return post(port, path, body, headers)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
def test_openai_routes_refuse_an_unknown_caller_before_reading_the_body(
    tenant_gateway: GatewayProcess, path: str
) -> None:
    # Headers announce a body that never comes: the answer must not wait for it;
    # nor is a body over the size limit (413) judged before the caller is known.
    for length in (1000, 4_000_000):
        with socket.create_connection(("127.0.0.1", tenant_gateway.port), timeout=10) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
                f"content-length: {length}\r\n\r\n".encode()
            )
            head = sock.recv(65536).decode(errors="replace")
        assert head.startswith("HTTP/1.1 401"), (length, head)

    port = tenant_gateway.port
    for key in (None, "not-a-key"):
        reply = openai_post(port, path, "{this is not json", key)
        assert reply.status == 401, reply.body
        assert json.loads(reply.body)["error"]["code"] == "invalid_api_key"
    # A known caller's body is read: then it is judged (400), and the model checked (403).
    assert openai_post(port, path, "{this is not json", PLATFORM_KEY).status == 400
    model = "internal-chat" if path.endswith("completions") else "internal-embed"
    body = json.dumps({"model": model, "messages": HELLO, "input": "hi"})
    reply = openai_post(port, path, body, CHECKOUT_KEY)
    assert reply.status == 403 and "may not use model" in reply.body.decode(), reply.body


def test_unknown_model_errors_list_no_models(tenant_gateway: GatewayProcess) -> None:
    port = tenant_gateway.port
    replies = {
        "v2 metadata (no key needed)": httpx.get(f"http://127.0.0.1:{port}/v2/models/nope"),
        "v2 infer": openai_post(port, "/v2/models/nope/infer", DIGITS_JSON, PLATFORM_KEY),
        "chat": openai_post(
            port,
            "/v1/chat/completions",
            json.dumps({"model": "nope", "messages": HELLO}),
            PLATFORM_KEY,
        ),
        "embeddings": openai_post(
            port, "/v1/embeddings", json.dumps({"model": "nope", "input": "hi"}), PLATFORM_KEY
        ),
    }
    for what, reply in replies.items():
        status = reply.status_code if isinstance(reply, httpx.Response) else reply.status
        text = reply.text if isinstance(reply, httpx.Response) else reply.body.decode()
        assert status == 404, (what, text)
        assert "unknown model 'nope'" in text, (what, text)
        for name in ("digits", "internal-chat", "internal-embed"):
            assert name not in text, (what, text)


def test_the_admin_endpoints_take_only_the_admin_key(tenant_gateway: GatewayProcess) -> None:
    port = tenant_gateway.port
    for key in (None, CHECKOUT_KEY, PLATFORM_KEY, ADMIN_KEY + "x"):
        assert admin(port, "/admin/backends/vendor/disable", key=key) == 401
        assert admin(port, "/admin/config", key=key, method="GET") == 401
    assert admin(port, "/admin/backends/vendor/disable", key=ADMIN_KEY) == 200
    assert admin(port, "/admin/backends/vendor/enable", key=ADMIN_KEY) == 200
