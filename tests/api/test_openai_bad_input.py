"""Bad requests on the OpenAI-compatible surface, over raw HTTP (the SDK refuses
to send most of them): OpenAI's error shape, the taxonomy's status, a message
naming the field; no bad request reaches a vendor. And tenants: who may call,
and which models each may see and use.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import openai
import pytest

from testkit.fake_vendor import fake_vendor_stats
from tests.api.http_helpers import Reply, post
from tests.api.test_openai_surface import (
    Vendors,
    anthropic_backend,
    chat_model,
    expected_reply,
    fresh_vendors,
    openai_backend,
    sdk,
    serving,
    vendors,
)
from tests.conftest import GatewayProcess

CHECKOUT_KEY_ENV = "OPENAI_BAD_INPUT_TEST_CHECKOUT_KEY"
PLATFORM_KEY_ENV = "OPENAI_BAD_INPUT_TEST_PLATFORM_KEY"
CHECKOUT_KEY = "checkout-secret-1"
PLATFORM_KEY = "platform-secret-2"
ADMIN_KEY_ENV = "OPENAI_BAD_INPUT_TEST_ADMIN_KEY"  # a config with tenants needs one
ADMIN_KEY = "admin-secret-3"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gateway(vendors: Vendors, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "server": {"admin_key_env": ADMIN_KEY_ENV},
        # checkout may use `chat` only; platform every model.
        "tenants": [
            {"name": "checkout", "key_env": CHECKOUT_KEY_ENV, "models": ["chat"]},
            {"name": "platform", "key_env": PLATFORM_KEY_ENV},
        ],
        "backends": {
            "a-gpt": openai_backend(vendors.a),
            "b-claude": anthropic_backend(vendors.b),
            "a-embed": openai_backend(vendors.a, model="fake-embed"),
        },
        "models": {
            "chat": chat_model("a-gpt"),
            "claude": chat_model("b-claude"),
            "embed": {"kind": "embeddings", "route": {"backends": ["a-embed"]}},
        },
    }
    keys = {
        CHECKOUT_KEY_ENV: CHECKOUT_KEY,
        PLATFORM_KEY_ENV: PLATFORM_KEY,
        ADMIN_KEY_ENV: ADMIN_KEY,
    }
    with serving(config, tmp_path_factory.mktemp("openai-bad-input"), env=keys) as started:
        yield started


def call(
    gateway: GatewayProcess,
    path: str,
    body: object,
    key: str | None = PLATFORM_KEY,
    raw: bool = False,
) -> Reply:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    data = body if raw else json.dumps(body)
    return post(gateway.port, path, data, headers)  # type: ignore[arg-type]


def openai_error(reply: Reply, status: int) -> dict:
    """The `error` object of an answer in OpenAI's shape, once its status is checked."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["content-type"].startswith("application/json")
    error = json.loads(reply.body)["error"]
    assert isinstance(error, dict), f"not OpenAI's error shape: {reply.body!r}"
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "code" in error
    return error


def chat(**fields: object) -> dict:
    return {"model": "chat", "messages": HELLO, **fields}


# (case, path, body (str: sent as is), status, fragments the message must contain)
BAD_REQUESTS = [
    ("malformed JSON", CHAT, '{"model": "chat", "messages": [', 400, ["not valid JSON"]),
    ("empty body", CHAT, "", 400, ["body is empty"]),
    ("JSON array body", CHAT, "[1, 2]", 400, ["expected a JSON object", "a list"]),
    ("missing model", CHAT, {"messages": HELLO}, 400, ["model:"]),
    ("missing messages", CHAT, {"model": "chat"}, 400, ["messages:", "got nothing"]),
    (
        "messages not a list",
        CHAT,
        {"model": "chat", "messages": "hello"},
        400,
        ["messages:", "a string"],
    ),
    (
        "empty messages",
        CHAT,
        {"model": "chat", "messages": []},
        400,
        ["messages:", "an empty list"],
    ),
    (
        "message not an object",
        CHAT,
        {"model": "chat", "messages": ["hello"]},
        400,
        ["messages[0]:"],
    ),
    (
        "bad role",
        CHAT,
        {"model": "chat", "messages": [{"role": "robot", "content": "hi"}]},
        400,
        ["messages[0].role", "'robot'"],
    ),
    (
        "content a number",
        CHAT,
        {"model": "chat", "messages": [{"role": "user", "content": 5}]},
        400,
        ["messages[0].content"],
    ),
    ("max_tokens 0", CHAT, chat(max_tokens=0), 400, ["max_tokens", "0"]),
    ("max_tokens a string", CHAT, chat(max_tokens="10"), 400, ["max_tokens", "'10'"]),
    (
        "max_completion_tokens negative",
        CHAT,
        chat(max_completion_tokens=-1),
        400,
        ["max_completion_tokens", "-1"],
    ),
    ("temperature 5", CHAT, chat(temperature=5), 400, ["temperature", "5"]),
    ("top_p 1.5", CHAT, chat(top_p=1.5), 400, ["top_p", "1.5"]),
    ("stream 'yes'", CHAT, chat(stream="yes"), 400, ["stream", "a string"]),
    ("stream_options a list", CHAT, chat(stream=True, stream_options=[1]), 400, ["stream_options"]),
    ("n 0", CHAT, chat(n=0), 400, ["n:"]),
    ("unknown model", CHAT, {"model": "gpt-9", "messages": HELLO}, 404, ["gpt-9"]),
    (
        "embeddings model on chat",
        CHAT,
        {"model": "embed", "messages": HELLO},
        400,
        ["'embed'", "embeddings", "/v1/embeddings"],
    ),
    (
        "chat model on embeddings",
        EMBEDDINGS,
        {"model": "chat", "input": "hi"},
        400,
        ["'chat'", "chat", "/v1/chat/completions"],
    ),
    ("embeddings input missing", EMBEDDINGS, {"model": "embed"}, 400, ["input:", "nothing"]),
    (
        "embeddings input empty",
        EMBEDDINGS,
        {"model": "embed", "input": []},
        400,
        ["input:", "an empty list"],
    ),
    (
        "embeddings token ids",
        EMBEDDINGS,
        {"model": "embed", "input": [1, 2, 3]},
        400,
        ["input:", "token ids"],
    ),
    (
        "embeddings lists of token ids",
        EMBEDDINGS,
        {"model": "embed", "input": [[1, 2], [3]]},
        400,
        ["input:", "token ids"],
    ),
    (
        "embeddings encoding_format",
        EMBEDDINGS,
        {"model": "embed", "input": "hi", "encoding_format": "int8"},
        400,
        ["encoding_format", "'int8'"],
    ),
    # A dimensions value no model could honour is refused before any vendor call
    # (and its tokens are not billed).
    (
        "embeddings dimensions a string",
        EMBEDDINGS,
        {"model": "embed", "input": "hi", "dimensions": "x"},
        400,
        ["dimensions", "'x'"],
    ),
    ("embeddings unknown model", EMBEDDINGS, {"model": "nope", "input": "hi"}, 404, ["nope"]),
    (
        "anthropic cannot return n choices",
        CHAT,
        {"model": "claude", "messages": HELLO, "n": 2},
        400,
        ["n:", "2", "b-claude"],
    ),
    (
        "anthropic cannot call tools",
        CHAT,
        {
            "model": "claude",
            "messages": HELLO,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        },
        400,
        ["tools"],
    ),
    (
        "anthropic cannot see images",
        CHAT,
        {
            "model": "claude",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                }
            ],
        },
        400,
        ["messages[0].content[0]", "image_url"],
    ),
]


@pytest.mark.parametrize(
    "path, body, status, fragments",
    [case[1:] for case in BAD_REQUESTS],
    ids=[c[0] for c in BAD_REQUESTS],
)
def test_bad_requests_get_openai_errors_naming_the_field(
    gateway: GatewayProcess,
    vendors: Vendors,
    path: str,
    body: object,
    status: int,
    fragments: list[str],
) -> None:
    reply = call(gateway, path, body, raw=isinstance(body, str))
    error = openai_error(reply, status)
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])
    if status == 404:
        assert error["code"] == "model_not_found"
    else:
        assert error["type"] == "invalid_request_error"
    assert reply.headers["x-request-id"]
    # Refused at the gateway: no vendor saw it.
    assert fake_vendor_stats(vendors.a)["total"] == fake_vendor_stats(vendors.b)["total"] == 0


def test_the_sdk_raises_bad_request_with_the_gateways_message(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway, PLATFORM_KEY).chat.completions.create(model="claude", messages=HELLO, n=2)
    assert caught.value.status_code == 400
    assert caught.value.body["message"].startswith("n:")
    with pytest.raises(openai.NotFoundError):
        sdk(gateway, PLATFORM_KEY).embeddings.create(model="nope", input="hi")


def request(gateway: GatewayProcess, method: str, path: str) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request(
        method,
        path,
        body=b"{}" if method == "POST" else None,
        headers={"authorization": f"Bearer {PLATFORM_KEY}"},
    )
    response = conn.getresponse()
    reply = Reply(
        response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    )
    conn.close()
    return reply


@pytest.mark.parametrize(
    "method, path, status, fragments",
    [
        ("GET", CHAT, 405, ["GET", CHAT, "POST"]),
        ("GET", EMBEDDINGS, 405, ["GET", EMBEDDINGS, "POST"]),
        ("POST", "/v1/models", 405, ["POST", "/v1/models"]),
        ("POST", "/v1/completions", 404, ["/v1/completions"]),
    ],
)
def test_wrong_methods_and_unknown_routes_under_v1_answer_in_openai_shape(
    gateway: GatewayProcess, method: str, path: str, status: int, fragments: list[str]
) -> None:
    error = openai_error(request(gateway, method, path), status)
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])


# -- tenants ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, status, code",
    [
        (None, 401, "invalid_api_key"),
        ("not-a-key", 401, "invalid_api_key"),
    ],
)
def test_callers_without_a_valid_key_are_refused(
    gateway: GatewayProcess, vendors: Vendors, key: str | None, status: int, code: str
) -> None:
    for path, body in ((CHAT, chat()), (EMBEDDINGS, {"model": "embed", "input": "hi"})):
        error = openai_error(call(gateway, path, body, key=key), status)
        assert error["type"] == "authentication_error"
        assert error["code"] == code
        assert "API key" in error["message"]
    assert fake_vendor_stats(vendors.a)["total"] == 0


def test_sdk_raises_authentication_error_without_a_valid_key(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, "wrong").chat.completions.create(model="chat", messages=HELLO)
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, "wrong").models.list()


def test_a_tenant_may_use_only_its_models(gateway: GatewayProcess, vendors: Vendors) -> None:
    client = sdk(gateway, CHECKOUT_KEY)
    answer = client.chat.completions.create(model="chat", messages=HELLO)
    assert answer.choices[0].message.content == expected_reply("hello")

    for model in ("claude", "embed"):
        error = openai_error(
            call(gateway, CHAT, {"model": model, "messages": HELLO}, key=CHECKOUT_KEY), 403
        )
        assert error["type"] == "permission_error"
        assert "checkout" in error["message"] and f"'{model}'" in error["message"]
    with pytest.raises(openai.PermissionDeniedError):
        client.embeddings.create(model="embed", input="hi")
    assert fake_vendor_stats(vendors.b)["total"] == 0


def test_models_lists_what_the_tenant_may_use(gateway: GatewayProcess) -> None:
    assert [m.id for m in sdk(gateway, CHECKOUT_KEY).models.list()] == ["chat"]
    assert sorted(m.id for m in sdk(gateway, PLATFORM_KEY).models.list()) == [
        "chat",
        "claude",
        "embed",
    ]


def test_x_api_key_header_works_like_the_bearer_token(gateway: GatewayProcess) -> None:
    reply = post(
        gateway.port,
        CHAT,
        json.dumps(chat()),
        {"content-type": "application/json", "x-api-key": CHECKOUT_KEY},
    )
    assert reply.status == 200, reply.body
    assert json.loads(reply.body)["model"] == "chat"
