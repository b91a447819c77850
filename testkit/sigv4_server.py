"""A stand-in SageMaker runtime on loopback that verifies AWS SigV4 signatures.

    python -m testkit.sigv4_server --port 0 --region us-east-1 \\
        --credentials AKID:SECRET[:SESSION_TOKEN] [--credentials ...]

Every `POST /endpoints/<name>/invocations` is verified as AWS does, by code of
its own (testkit/sigv4.py's `verify`: the canonical request, string to sign and key derivation of
the SigV4 specification, written independently of botocore, which the gateway
signs with): a known access key; a credential scope of the request's date,
the server's region, service `sagemaker` and `aws4_request`; an `x-amz-date`
within 5 minutes of now; `host`, `x-amz-date`, `content-type` and every
`x-amz-*` header signed; the session token of a key that has one; the body's
sha256 (also against `x-amz-content-sha256` when sent); and the signature.
A request that fails is answered 403 with an AWS-like error (`x-amzn-ErrorType`
and `{"message": ...}`) and never reaches an endpoint.

A verified request plays an endpoint chosen by its name:
  * any name not below: y = 2x in the answer type (`Accept`, else the
    `Content-Type`): `application/json` keeps the request's shape
    (`{"instances": x}` -> `{"predictions": 2x}`, `{"inputs": {...}}` ->
    `{"outputs": {...}}`, a bare list -> a bare list; strings are repeated
    twice), `text/csv` answers its rows doubled, `application/x-npy` the
    array doubled; a JSON body with `messages` is a chat completion (the
    Messages API of SageMaker's LLM containers) whose reply is
    "echo: " + the last user message, with usage counting words;
  * `bad-shape`: the doubled tensor without its last column;
  * `bad-type`: `{"predictions": <the same shape, as strings>}`;
  * `bad-npy`: an .npy header that declares 10**12 float64 elements, and 16 bytes;
  * `garbage`: a 200 whose body is not in the answer type;
  * `model-error-400`, `model-error-500`: 424 ModelError with that OriginalStatusCode;
  * `model-error-echo`: 424 ModelError whose message quotes the request's
    Authorization and X-Amz-Security-Token headers (a careless container);
  * `not-ready`: 429 ModelNotReadyException; `unavailable`: 503;
  * `missing`: 400 ValidationError (endpoint not found).

Control routes (unsigned): `GET /_requests` (the last requests: path, headers,
base64 body), `GET /_stats` ({"accepted": n, "refused": {error type: n}}),
`POST /_reset`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import io
import json
import re
import sys
import time
import urllib.request
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from testkit.aio_serving import serve_until_signalled
from testkit.gateway_process import GatewayProcess, free_port, start_server
from testkit.sigv4 import Credential, SignatureError, verify

READY_LINE = "sigv4 server ready"
JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
RECORDED_REQUESTS = 256


# -- the endpoints ---------------------------------------------------------------------


def _aws_error(status: int, code: str, document: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(document).encode(),
        content_type=JSON,
        headers={"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.coral/"},
    )


def _model_error(status: int, message: str) -> web.Response:
    return _aws_error(
        424,
        "ModelError",
        {
            "ErrorCode": f"{'CLIENT' if status < 500 else 'SERVER'}_ERROR_FROM_MODEL",
            "LogStreamArn": "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/x",
            "Message": f'Received error ({status}) from primary with message "{message}".',
            "OriginalMessage": message,
            "OriginalStatusCode": status,
        },
    )


def _double(value: Any) -> Any:
    """2x of every number of a JSON document (strings repeated twice)."""
    if isinstance(value, list):
        return [_double(v) for v in value]
    if isinstance(value, dict):
        return {k: _double(v) for k, v in value.items()}
    if isinstance(value, bool) or value is None:
        return value
    return value * 2


def _csv_rows(body: bytes) -> np.ndarray:
    rows = [row for row in csv.reader(io.StringIO(body.decode())) if row]
    cells = [c.strip() for row in rows for c in row]
    integers = all(re.fullmatch(r"-?[0-9]+", c) for c in cells)
    return np.array(rows, dtype=np.str_).astype(np.int64 if integers else np.float64)


def _csv_text(array: np.ndarray) -> bytes:
    rows = array.reshape(1, 1) if array.ndim == 0 else array.reshape(array.shape[0], -1)
    return "".join(",".join(repr(v) for v in row.tolist()) + "\n" for row in rows).encode()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _chat(doc: dict[str, Any]) -> dict[str, Any]:
    text = ""
    words = 0
    for message in doc.get("messages", []):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if isinstance(content, str):
            words += len(content.split())
            if message.get("role") == "user":
                text = content
    reply = "echo: " + text
    completion = len(reply.split())
    return {
        "id": "chatcmpl-sigv4-1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(doc.get("model", "")),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": words,
            "completion_tokens": completion,
            "total_tokens": words + completion,
        },
    }


class SigV4Server:
    def __init__(self, credentials: list[Credential], region: str) -> None:
        self.credentials = {c.access_key: c for c in credentials}
        self.region = region
        self.accepted = 0
        self.refused: Counter[str] = Counter()
        self.received: deque[dict[str, Any]] = deque(maxlen=RECORDED_REQUESTS)
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/endpoints/{name}/invocations", self._invoke)
        self.app.router.add_get("/_requests", self._requests)
        self.app.router.add_get("/_stats", self._stats)
        self.app.router.add_post("/_reset", self._reset)

    async def _invoke(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(
                request.method,
                request.raw_path.split("?")[0],
                request.query_string,
                request.headers.items(),
                body,
                self.credentials,
                self.region,
            )
        except SignatureError as refused:
            self.refused[refused.code] += 1
            return _aws_error(403, refused.code, {"message": refused.message})
        self.accepted += 1
        self.received.append(
            {
                "path": request.path,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": base64.b64encode(body).decode(),
            }
        )
        return self._answer(request.match_info["name"], request, body)

    def _answer(self, name: str, request: web.Request, body: bytes) -> web.Response:
        faults = {
            "model-error-400": lambda: _model_error(400, "the model cannot read this input"),
            "model-error-500": lambda: _model_error(500, "CUDA out of memory"),
            "model-error-echo": lambda: _model_error(
                500,
                f"failed; request headers: authorization: {request.headers.get('Authorization')} "
                f"x-amz-security-token: {request.headers.get('X-Amz-Security-Token')}",
            ),
            "not-ready": lambda: _aws_error(
                429, "ModelNotReadyException", {"message": "Model is not ready yet"}
            ),
            "unavailable": lambda: _aws_error(
                503, "ServiceUnavailable", {"message": "Service Unavailable"}
            ),
            "missing": lambda: _aws_error(
                400,
                "ValidationError",
                {"message": f"Endpoint {name} of account 123456789012 not found."},
            ),
        }
        if name in faults:
            return faults[name]()
        content_type = request.headers.get("Content-Type", "")
        accept = request.headers.get("Accept") or content_type
        if name == "garbage":
            return web.Response(body=b"<html>upstream hiccup, not an answer", content_type=accept)
        if name == "bad-npy":
            lying = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                lying, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
            )
            return web.Response(body=lying.getvalue() + bytes(16), content_type=NPY)
        doc: Any = None
        if content_type == JSON:
            doc = json.loads(body)
            if isinstance(doc, dict) and "messages" in doc:
                return web.json_response(_chat(doc))
        if name in ("bad-shape", "bad-type") or accept != content_type or accept != JSON:
            array = self._tensor(content_type, body, doc) * 2
            if name == "bad-shape":
                array = array[..., :-1]
            if name == "bad-type" or accept == JSON:
                values = array.astype(str) if name == "bad-type" else array
                return web.json_response({"predictions": values.tolist()})
            if accept == CSV:
                return web.Response(body=_csv_text(array), content_type=CSV)
            return web.Response(body=_npy(array), content_type=NPY)
        if isinstance(doc, dict) and "instances" in doc:
            answer: Any = {"predictions": _double(doc["instances"])}
        elif isinstance(doc, dict) and "inputs" in doc:
            answer = {"outputs": _double(doc["inputs"])}
        else:
            answer = _double(doc)
        return web.json_response(answer)

    @staticmethod
    def _tensor(content_type: str, body: bytes, doc: Any) -> np.ndarray:
        if content_type == CSV:
            return _csv_rows(body)
        if content_type == NPY:
            return np.asarray(np.load(io.BytesIO(body), allow_pickle=False))
        value = doc.get("instances", doc.get("inputs")) if isinstance(doc, dict) else doc
        return np.asarray(value)

    async def _requests(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.received))

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"accepted": self.accepted, "refused": dict(self.refused)})

    async def _reset(self, request: web.Request) -> web.Response:
        self.accepted = 0
        self.refused.clear()
        self.received.clear()
        return web.json_response({})


# -- the program ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m testkit.sigv4_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument(
        "--credentials",
        action="append",
        type=Credential.parse,
        required=True,
        help="AKID:SECRET[:SESSION_TOKEN], repeatable",
    )
    args = parser.parse_args(argv)
    server = SigV4Server(args.credentials, args.region)
    asyncio.run(serve_until_signalled(server.app, args.host, args.port, READY_LINE))


def start_sigv4_server(credentials: list[Credential], region: str = "us-east-1") -> GatewayProcess:
    """Run the server as a subprocess on a free port; `.url` is its host:port."""
    port = free_port()
    argv = [sys.executable, "-m", "testkit.sigv4_server", "--port", str(port), "--region", region]
    for credential in credentials:
        argv += ["--credentials", credential.argument()]
    return start_server("sigv4 server", argv, port, READY_LINE.encode())


# What botocore's credential chain reads from the environment: a test clears them
# all and sets its own, so that nothing of the machine it runs on (a developer's
# ~/.aws, an instance role) leaks in.
AWS_CHAIN_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_EC2_METADATA_DISABLED",
)


def isolated_aws_chain(directory: Path, **variables: str) -> dict[str, str]:
    """The environment of a credential chain that sees only `variables`: shared
    credentials and config files in `directory` (empty unless written there),
    no instance metadata lookups (each would wait for a timeout off EC2)."""
    return {
        "AWS_SHARED_CREDENTIALS_FILE": str(directory / "credentials"),
        "AWS_CONFIG_FILE": str(directory / "config"),
        "AWS_EC2_METADATA_DISABLED": "true",
        **variables,
    }


# Loopback only: an HTTP(S)_PROXY in the environment must not capture these calls.
_LOOPBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _call(url: str, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(
        f"http://{url}{path}", data=b"" if method == "POST" else None, method=method
    )
    with _LOOPBACK_OPENER.open(request, timeout=10) as response:
        return json.loads(response.read())


def sigv4_requests(url: str) -> list[dict[str, Any]]:
    """The last verified requests, oldest first: {"path", "headers", "body" (base64)}."""
    return _call(url, "/_requests")  # type: ignore[no-any-return]  # a JSON list here


def sigv4_stats(url: str) -> dict[str, Any]:
    """{"accepted": n, "refused": {error type: n}}."""
    return _call(url, "/_stats")  # type: ignore[no-any-return]  # a JSON object here


def reset_sigv4_server(url: str) -> None:
    _call(url, "/_reset", "POST")


if __name__ == "__main__":
    main()
