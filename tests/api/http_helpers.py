"""Raw HTTP requests, for the cases a well-behaved client library refuses to send."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> object:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        """The message of a v2 error ({"error": "..."}) or an OpenAI one."""
        error = json.loads(self.body)["error"]
        return error["message"] if isinstance(error, dict) else error


def post(
    port: int,
    path: str,
    body: bytes | str,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body.encode() if isinstance(body, str) else body
    if chunked:
        conn.request("POST", path, iter([data]), headers or {}, encode_chunked=True)
    else:
        conn.request("POST", path, data, headers or {})
    response = conn.getresponse()
    reply = Reply(
        response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    )
    conn.close()
    return reply


def tensor_json(name: str, datatype: str, shape: list[int], data: object) -> str:
    return json.dumps(
        {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}
    )
