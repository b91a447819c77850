"""Requests as they travel: raw HTTP (any header bytes, any body) and raw gRPC
(any bytes as a ModelInferRequest), for the cases real clients refuse to send."""

from __future__ import annotations

import http.client
import json

import grpc

from tests.api.http_helpers import Reply

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


class Http:
    """One keep-alive connection; reopened when the server closed it between calls."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str | bytes] | None = None,
    ) -> Reply:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request(method, path, body, headers or {})
                response = self.conn.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise
                continue
            if response.getheader("connection", "").lower() == "close":
                self.close()
            return Reply(response.status, payload, {k.lower(): v for k, v in response.getheaders()})
        raise AssertionError("not reached")

    def post(self, path: str, body: bytes, headers: dict[str, str | bytes] | None = None) -> Reply:
        return self.request("POST", path, body, headers)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def binary_body(header: dict | bytes, *blobs: bytes) -> tuple[bytes, dict[str, str | bytes]]:
    """A binary-extension body: the JSON header, then the tensors' bytes."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return head + b"".join(blobs), {"inference-header-content-length": str(len(head))}


def grpc_infer(channel: grpc.Channel, message: bytes, timeout_s: float = 60.0) -> grpc.StatusCode:
    """Send `message` as a ModelInferRequest (whatever its bytes); the status code."""
    call = channel.unary_unary(INFER_METHOD)
    try:
        call(message, timeout=timeout_s)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]  # grpc.RpcError is also a grpc.Call
    return grpc.StatusCode.OK


def grpc_error(channel: grpc.Channel, message: bytes) -> tuple[grpc.StatusCode, str]:
    call = channel.unary_unary(INFER_METHOD)
    try:
        call(message, timeout=60)
    except grpc.RpcError as error:
        return error.code(), error.details()  # type: ignore[attr-defined]  # a grpc.Call too
    return grpc.StatusCode.OK, ""
