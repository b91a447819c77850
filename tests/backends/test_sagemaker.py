"""The SageMaker backend built by the runtime, in process, against the SigV4
verifying stand-in (testkit/sigv4_server.py) over real HTTP: what the config
and the credential chain refuse at load, what each failure of an endpoint
becomes, and credentials that refresh off the event loop.

Credentials come from botocore's real chain, fed through an isolated
environment (testkit.sigv4_server.isolated_aws_chain): nothing is patched.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml

from gateway.config.loader import ConfigError, parse_config
from gateway.core.errors import (
    BackendFailed,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    Overloaded,
)
from gateway.core.llm import ChatRequest
from gateway.runtime import Runtime, build_runtime
from testkit.gateway_process import GatewayProcess
from testkit.sigv4 import Credential
from testkit.sigv4_server import (
    AWS_CHAIN_VARIABLES,
    isolated_aws_chain,
    sigv4_requests,
    start_sigv4_server,
)

T = TypeVar("T")

ENV_KEY = Credential(
    "ASIASAGEMAKERENV", "env-secret-key-0123456789", "env-session-token-0123456789"
)
ROTATING = [
    Credential(f"ASIAROTATING{n}", f"rotating-secret-{n}-abcdef", f"rotating-token-{n}-abcdef")
    for n in range(1, 6)
]
X = np.array([[1.0, 2.0, 3.0]], np.float32)
SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[GatewayProcess]:
    server = start_sigv4_server([ENV_KEY, *ROTATING])
    yield server
    server.stop()


def use_chain(monkeypatch: pytest.MonkeyPatch, directory: Path, **variables: str) -> None:
    """The AWS credential chain sees `variables` and the files in `directory`, nothing else."""
    for name in AWS_CHAIN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in isolated_aws_chain(directory, **variables).items():
        monkeypatch.setenv(name, value)


@pytest.fixture()
def env_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_chain(
        monkeypatch,
        tmp_path,
        AWS_ACCESS_KEY_ID=ENV_KEY.access_key,
        AWS_SECRET_ACCESS_KEY=ENV_KEY.secret_key,
        AWS_SESSION_TOKEN=ENV_KEY.token or "",
    )


def sagemaker(url: str, endpoint_name: str = "double", **keys: Any) -> dict[str, Any]:
    return {
        "type": "sagemaker",
        "region": "us-east-1",
        "endpoint_name": endpoint_name,
        "endpoint_url": f"http://{url}",
        **keys,
    }


def tensor(url: str, endpoint_name: str = "double", **keys: Any) -> dict[str, Any]:
    return sagemaker(url, endpoint_name, **SIGNATURE, **keys)


def runtime(backends: dict[str, Any], models: dict[str, Any] | None = None) -> Runtime:
    if models is None:
        models = {
            name: {"signature": SIGNATURE, "route": {"backends": [name]}}
            if "inputs" in config
            else {"kind": "chat", "route": {"backends": [name]}}
            for name, config in backends.items()
        }
    return build_runtime(parse_config(yaml.safe_dump({"backends": backends, "models": models})))


def serve(built: Runtime, scenario: Callable[[Runtime], Awaitable[T]]) -> T:
    async def run() -> T:
        try:
            return await scenario(built)
        finally:
            await built.close()

    return asyncio.run(run())


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def chat_request(text: str = "hello there") -> ChatRequest:
    return ChatRequest("chat", {"model": "chat", "messages": [{"role": "user", "content": text}]})


# -- failures of the endpoint --------------------------------------------------------


@pytest.mark.usefixtures("env_keys")
def test_each_endpoint_failure_is_an_error_of_the_taxonomy(endpoint: GatewayProcess) -> None:
    url = endpoint.url
    expected: dict[str, tuple[type[GatewayError], str, str]] = {
        # A container's 4xx for inputs the signature admitted: the model failed, not the caller.
        "model-error-400": (BackendFailed, "error", "HTTP 400 from its container"),
        "model-error-500": (BackendFailed, "5xx", "CUDA out of memory"),
        "not-ready": (Overloaded, "429", "Model is not ready yet"),
        "unavailable": (BackendFailed, "5xx", "HTTP 503"),
        "missing": (BackendFailed, "error", "of account 123456789012 not found"),
        "garbage": (BackendFailed, "bad_output", "not JSON"),
        "bad-type": (BackendFailed, "bad_output", "string values"),
        "bad-shape": (BackendFailed, "bad_output", r"shape [1,2]"),
    }
    backends = {name: tensor(url, name) for name in expected}
    backends["bad-npy"] = tensor(url, "bad-npy", content_type="application/x-npy")
    expected["bad-npy"] = (BackendFailed, "bad_output", "declares [1000000000000]")

    async def scenario(built: Runtime) -> dict[str, GatewayError]:
        errors = {}
        for name in expected:
            with pytest.raises(GatewayError) as caught:
                await built.backends[name].infer({"x": X}, ["y"], soon())  # type: ignore[attr-defined]
            errors[name] = caught.value
        return errors

    for name, error in serve(runtime(backends), scenario).items():
        kind, reason, text = expected[name]
        assert type(error) is kind, (name, error)
        assert error.reason == reason, (name, error)
        assert text in error.message, (name, error.message)
        assert error.message.startswith(f"backend '{name}'"), error.message


@pytest.mark.usefixtures("env_keys")
def test_a_container_refusing_a_chat_request_is_the_callers_400(endpoint: GatewayProcess) -> None:
    async def scenario(built: Runtime) -> GatewayError:
        with pytest.raises(InvalidInput) as caught:
            await built.backends["chat"].chat(chat_request(), soon())  # type: ignore[attr-defined]
        return caught.value

    error = serve(runtime({"chat": sagemaker(endpoint.url, "model-error-400")}), scenario)
    assert "the model refused the request (HTTP 400 from its container)" in error.message


@pytest.mark.usefixtures("env_keys")
def test_an_endpoint_echoing_our_headers_leaks_no_credential(endpoint: GatewayProcess) -> None:
    async def scenario(built: Runtime) -> GatewayError:
        with pytest.raises(BackendFailed) as caught:
            await built.backends["echo"].infer({"x": X}, ["y"], soon())  # type: ignore[attr-defined]
        return caught.value

    message = serve(runtime({"echo": tensor(endpoint.url, "model-error-echo")}), scenario).message
    assert "request headers" in message  # the echo is there, minus the secrets
    assert ENV_KEY.token is not None and ENV_KEY.token not in message
    assert ENV_KEY.secret_key not in message
    assert "Signature=" not in message or "Signature=[redacted]" in message
    received = sigv4_requests(endpoint.url)[-1]["headers"]["authorization"]
    assert received.split("Signature=")[1] not in message


@pytest.mark.usefixtures("env_keys")
def test_a_chat_stream_is_the_whole_answer_in_chunks(endpoint: GatewayProcess) -> None:
    async def scenario(built: Runtime) -> tuple[list[dict[str, Any]], Any]:
        request = chat_request("stream me")
        request.stream = True
        stream = await built.backends["chat"].chat_stream(request, soon())  # type: ignore[attr-defined]
        chunks = [chunk async for chunk in stream]
        return chunks, stream.usage

    chunks, usage = serve(runtime({"chat": sagemaker(endpoint.url, "llm")}), scenario)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:2]] == [
        "echo: stream me",
        None,
    ]
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[2]["choices"] == [] and chunks[2]["usage"]["completion_tokens"] == 3
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, 3)
    sent = sigv4_requests(endpoint.url)[-1]
    assert b'"stream"' not in base64.b64decode(sent["body"])


# -- what the load refuses --------------------------------------------------------------


def test_no_credentials_at_all_refuse_the_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_chain(monkeypatch, tmp_path)
    with pytest.raises(ConfigError) as refused:
        runtime({"sm": tensor("127.0.0.1:9")})
    assert "backends.sm" in str(refused.value)
    assert "no AWS credentials found (the default chain" in str(refused.value)


def test_a_profile_that_does_not_exist_refuses_the_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_chain(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match=r"profile 'nope'.*could not be found"):
        runtime({"sm": tensor("127.0.0.1:9", profile="nope")})


@pytest.mark.usefixtures("env_keys")
def test_declared_tensors_must_fit_the_signature_at_load() -> None:
    wrong = {
        "inputs": SIGNATURE["inputs"],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1, 3]}],
    }
    with pytest.raises(ConfigError, match="does not fit the signature: output 'y'"):
        runtime(
            {"sm": sagemaker("127.0.0.1:9", **wrong)},
            {"m": {"signature": SIGNATURE, "route": {"backends": ["sm"]}}},
        )
    with pytest.raises(ConfigError, match="input 'x': the model has no such input"):
        runtime(
            {"sm": sagemaker("127.0.0.1:9")},
            {"m": {"signature": SIGNATURE, "route": {"backends": ["sm"]}}},
        )


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"api_key_env": "KEY"}, "sagemaker backends do not take it: requests are signed"),
        ({"region": "Virginia"}, "expected an AWS region"),
        ({"endpoint_name": "my_endpoint"}, "expected a SageMaker name"),
        ({"custom_attributes": "a\nb"}, "visible US-ASCII"),
        ({"endpoint_url": "runtime.example"}, "http:// or https://"),
        ({"inputs": SIGNATURE["inputs"]}, "inputs and outputs are declared together"),
        (
            {
                **SIGNATURE,
                "content_type": "text/csv",
                "inputs": [*SIGNATURE["inputs"], {"name": "z", "datatype": "FP32", "shape": [-1]}],
            },
            "text/csv carries exactly one input",
        ),
    ],
    ids=["api-key", "region", "name", "attributes", "url", "half-declared", "csv-two-inputs"],
)
def test_the_loader_refuses_keys_that_cannot_work(keys: dict[str, Any], message: str) -> None:
    config = {"backends": {"sm": {**sagemaker("127.0.0.1:9"), **keys}}, "models": {}}
    with pytest.raises(ConfigError, match=message):
        parse_config(yaml.safe_dump(config))


# -- credentials that refresh -------------------------------------------------------------

ROTATE = """
import datetime, json, pathlib, sys, time
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
time.sleep(float(sys.argv[2]))
# 12 minutes left: inside botocore's 15-minute refresh window, so every request refreshes.
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=12)
print(json.dumps({"Version": 1, "AccessKeyId": f"ASIAROTATING{n}",
                  "SecretAccessKey": f"rotating-secret-{n}-abcdef",
                  "SessionToken": f"rotating-token-{n}-abcdef", "Expiration": expires.isoformat()}))
"""
REFRESH_S = 0.6


def test_credentials_refresh_off_the_event_loop_once_for_concurrent_requests(
    endpoint: GatewayProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # credential_process: the chain's provider that runs a program (as SSO and
    # role providers call a network service), here a slow one.
    script, counter = tmp_path / "rotate.py", tmp_path / "refreshes"
    script.write_text(ROTATE)
    (tmp_path / "config").write_text(
        f"[profile rotating]\ncredential_process = {sys.executable} {script} {counter} {REFRESH_S}\n"
    )
    use_chain(monkeypatch, tmp_path)
    built = runtime({"sm": tensor(endpoint.url, profile="rotating")})
    # Resolved at load (the chain's fetch, then a refresh: 12 minutes is already due).
    loaded = int(counter.read_text())

    async def scenario(built: Runtime) -> tuple[float, list[Any]]:
        backend = built.backends["sm"]
        gaps: list[float] = []
        stop = asyncio.Event()

        async def tick() -> None:  # how long the event loop goes without running us
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.ensure_future(tick())
        # A deadline shorter than the refresh: the request is not sent...
        with pytest.raises(DeadlineExceeded, match="still being refreshed"):
            await backend.infer({"x": X}, ["y"], soon(0.1))  # type: ignore[attr-defined]
        # ...and requests that arrive meanwhile wait for that same refresh.
        answers = await asyncio.gather(
            *(backend.infer({"x": X * i}, ["y"], soon()) for i in range(3))  # type: ignore[attr-defined]
        )
        stop.set()
        await ticker
        return max(gaps), answers

    before = len(sigv4_requests(endpoint.url))
    longest_gap, answers = serve(built, scenario)
    assert longest_gap < REFRESH_S / 2, f"the event loop stalled for {longest_gap:.2f} s"
    assert [a["y"].tolist() for a in answers] == [(X * i * 2).tolist() for i in range(3)]
    refreshed = loaded + 1
    assert counter.read_text() == str(refreshed)  # one refresh for the four of them
    sent = sigv4_requests(endpoint.url)[before:]
    assert len(sent) == 3
    for request in sent:
        assert f"Credential=ASIAROTATING{refreshed}/" in request["headers"]["authorization"]
        assert request["headers"]["x-amz-security-token"] == f"rotating-token-{refreshed}-abcdef"
