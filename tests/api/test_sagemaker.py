"""SageMaker endpoints behind a real gateway process: tensor models over the v2
HTTP API in each content type, chat over the OpenAI API with the openai SDK,
every request signed with SigV4 and verified by the stand-in endpoint
(testkit/sigv4_server.py), which refuses anything AWS would.

The gateway finds its credentials the standard way: environment variables
(with a session token) for most backends, a shared credentials file and a
named profile for others; nothing else of this machine's AWS setup is seen
(testkit.sigv4_server.isolated_aws_chain). No credential ever shows in an
answer or in the gateway's log.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from testkit.gateway_process import GatewayProcess, start_gateway
from testkit.sigv4 import Credential
from testkit.sigv4_server import (
    AWS_CHAIN_VARIABLES,
    isolated_aws_chain,
    sigv4_requests,
    sigv4_stats,
    start_sigv4_server,
)
from tests.api.http_helpers import Reply, post
from tests.metrics_reader import value

ENV_KEY = Credential(
    "ASIAGATEWAYENV", "env-secret-key-for-sagemaker", "env-session-token-for-sagemaker"
)
PROFILE_KEY = Credential("AKIAGATEWAYPROFILE", "profile-secret-key-for-sagemaker")
WRONG_SECRET = "not-the-profile-secret-at-all"
SECRETS = (ENV_KEY.secret_key, ENV_KEY.token or "", PROFILE_KEY.secret_key, WRONG_SECRET)

X = [[0.1, 2.0, 3.0], [4.0, 5.0, 6.5]]
SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
}
CONTENT_TYPES = {"json": "application/json", "csv": "text/csv", "npy": "application/x-npy"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[GatewayProcess]:
    server = start_sigv4_server([ENV_KEY, PROFILE_KEY])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(
    endpoint: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("sagemaker")
    (workdir / "credentials").write_text(
        f"[good]\naws_access_key_id = {PROFILE_KEY.access_key}\n"
        f"aws_secret_access_key = {PROFILE_KEY.secret_key}\n"
        f"[wrong]\naws_access_key_id = {PROFILE_KEY.access_key}\n"
        f"aws_secret_access_key = {WRONG_SECRET}\n"
    )

    def sagemaker(endpoint_name: str, **keys: Any) -> dict[str, Any]:
        return {
            "type": "sagemaker",
            "region": "us-east-1",
            "endpoint_name": endpoint_name,
            "endpoint_url": f"http://{endpoint.url}",
            "timeout_ms": 10_000,
            **keys,
        }

    backends = {
        **{
            f"sm-{short}": sagemaker("double", content_type=kind, **SIGNATURE)
            for short, kind in CONTENT_TYPES.items()
        },
        "sm-profile": sagemaker("double", profile="good", **SIGNATURE),
        "sm-wrong": sagemaker("double", profile="wrong", **SIGNATURE),
        "sm-bad-shape": sagemaker("bad-shape", **SIGNATURE),
        "sm-chat": sagemaker("llm"),
    }
    tensor_models = {
        f"double-{short}": f"sm-{short}" for short in (*CONTENT_TYPES, "profile", "wrong")
    }
    models: dict[str, Any] = {
        name: {"signature": SIGNATURE, "route": {"backends": [backend]}}
        for name, backend in {**tensor_models, "bad-shape": "sm-bad-shape"}.items()
    }
    models["chat"] = {"kind": "chat", "route": {"backends": ["sm-chat"]}}
    chain = isolated_aws_chain(
        workdir,
        AWS_ACCESS_KEY_ID=ENV_KEY.access_key,
        AWS_SECRET_ACCESS_KEY=ENV_KEY.secret_key,
        AWS_SESSION_TOKEN=ENV_KEY.token or "",
    )
    with pytest.MonkeyPatch.context() as patch:
        for name in AWS_CHAIN_VARIABLES:
            patch.delenv(name, raising=False)  # the gateway inherits only the chain above
        for name, setting in chain.items():
            patch.setenv(name, setting)
        started = start_gateway({"backends": backends, "models": models}, workdir)
    try:
        yield started
    finally:
        alive_until_the_end = started.process.poll() is None
        started.stop()
    logs = started.logs()
    assert alive_until_the_end, f"the gateway died during the tests:\n{logs}"
    assert "internal error" not in logs, logs
    for secret in SECRETS:
        assert secret not in logs, "a credential reached the gateway's log"


def infer(gateway: GatewayProcess, model: str) -> Reply:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": X}]}
    return post(gateway.port, f"/v2/models/{model}/infer", json.dumps(body))


def last_request(endpoint: GatewayProcess) -> dict[str, Any]:
    request: dict[str, Any] = sigv4_requests(endpoint.url)[-1]
    return request


def assert_leaks_nothing(reply: Reply) -> None:
    for secret in SECRETS:
        assert secret.encode() not in reply.body


@pytest.mark.parametrize("short", list(CONTENT_TYPES))
def test_a_tensor_model_is_served_in_each_content_type(
    gateway: GatewayProcess, endpoint: GatewayProcess, short: str
) -> None:
    reply = infer(gateway, f"double-{short}")
    assert reply.status == 200, reply.body
    assert reply.headers["x-gateway-backend"] == f"sm-{short}"
    (output,) = reply.json()["outputs"]  # type: ignore[index]
    assert (output["name"], output["datatype"], output["shape"]) == ("y", "FP32", [2, 3])
    expected = (np.array(X, np.float32) * 2).ravel()
    assert np.array_equal(np.array(output["data"], np.float32), expected)
    sent = last_request(endpoint)
    headers = sent["headers"]
    assert sent["path"] == "/endpoints/double/invocations"
    assert headers["content-type"] == headers["accept"] == CONTENT_TYPES[short]
    # Signed by the environment's temporary credentials, token included.
    assert f"Credential={ENV_KEY.access_key}/" in headers["authorization"]
    assert "/us-east-1/sagemaker/aws4_request" in headers["authorization"]
    assert headers["x-amz-security-token"] == ENV_KEY.token


def test_a_named_profile_signs_with_its_shared_credentials(
    gateway: GatewayProcess, endpoint: GatewayProcess
) -> None:
    reply = infer(gateway, "double-profile")
    assert reply.status == 200, reply.body
    headers = last_request(endpoint)["headers"]
    assert f"Credential={PROFILE_KEY.access_key}/" in headers["authorization"]
    assert "x-amz-security-token" not in headers  # long-term keys: no session token


def test_chat_through_the_openai_sdk(gateway: GatewayProcess, endpoint: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=f"http://{gateway.url}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "Say hello"}]
    )
    answer = raw.parse()
    assert raw.headers["x-gateway-backend"] == "sm-chat"
    assert answer.model == "chat"
    assert answer.choices[0].message.content == "echo: Say hello"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2, 3)
    sent = last_request(endpoint)
    assert sent["path"] == "/endpoints/llm/invocations"
    assert sent["headers"]["content-type"] == "application/json"
    # The OpenAI chat body, with TGI's placeholder model name instead of the gateway's.
    body = json.loads(base64.b64decode(sent["body"]))
    assert body == {"model": "tgi", "messages": [{"role": "user", "content": "Say hello"}]}

    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "stream this"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream this"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_a_wrong_secret_is_refused_by_the_endpoint_and_leaks_nothing(
    gateway: GatewayProcess, endpoint: GatewayProcess
) -> None:
    refused_before = sigv4_stats(endpoint.url)["refused"].get("InvalidSignatureException", 0)
    reply = infer(gateway, "double-wrong")
    assert reply.status == 502, reply.body
    assert "SageMaker answered HTTP 403" in reply.error
    assert "signature we calculated does not match" in reply.error
    assert_leaks_nothing(reply)
    refused_after = sigv4_stats(endpoint.url)["refused"].get("InvalidSignatureException", 0)
    assert refused_after == refused_before + 1
    logs = gateway.logs()
    assert "SageMaker refused our AWS credentials (shared-credentials-file)" in logs
    assert "sagemaker:InvokeEndpoint" in logs


def test_an_answer_that_does_not_fit_the_signature_is_a_502_bad_output(
    gateway: GatewayProcess,
) -> None:
    reply = infer(gateway, "bad-shape")
    assert reply.status == 502, reply.body
    assert "the endpoint's answer does not fit" in reply.error
    assert "shape [2,2]" in reply.error
    assert_leaks_nothing(reply)
    outcome = {"model": "bad-shape", "backend": "sm-bad-shape", "outcome": "bad_output"}
    assert value(gateway.port, "gateway_backend_duration_seconds_count", **outcome) == 1


def test_the_signature_is_enforced_before_the_endpoint_is_called(
    gateway: GatewayProcess, endpoint: GatewayProcess
) -> None:
    accepted = sigv4_stats(endpoint.url)["accepted"]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    reply = post(gateway.port, "/v2/models/double-json/infer", json.dumps(body))
    assert reply.status == 400, reply.body
    assert "input 'x': expected FP32 [-1,3], got FP32 [1,4]" in reply.error
    assert sigv4_stats(endpoint.url)["accepted"] == accepted


def test_the_endpoint_never_saw_an_unsigned_request(endpoint: GatewayProcess) -> None:
    refused = sigv4_stats(endpoint.url)["refused"]
    # Only the deliberate wrong secret was refused: every other request verified.
    assert set(refused) <= {"InvalidSignatureException"}
