"""TLS and mTLS on HTTP and gRPC (`server.tls`), with a throwaway CA made by
trustme in each test run, against real `gateway serve` processes."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import trustme
import yaml
from tritonclient.utils import InferenceServerException

from gateway.config.loader import ConfigError, load_config
from tests.api.http_helpers import tensor_json
from tests.conftest import GatewayProcess, digits_config, free_port, start_gateway

INFER_BODY = tensor_json("pixels", "FP32", [1, 64], np.ones(64).tolist())


@dataclass
class Pki:
    """A CA, the server's certificate and key, and a client's, as PEM files."""

    dir: Path
    ca: trustme.CA

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    made = Pki(tmp_path_factory.mktemp("pki"), trustme.CA())
    made.ca.cert_pem.write_to_path(str(made.ca_file))
    server = made.ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(made.server_key))
    server.cert_chain_pems[0].write_to_path(str(made.server_cert))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(made.server_cert), append=True)
    client = made.ca.issue_cert("client@example.org")
    client.private_key_pem.write_to_path(str(made.client_key))
    client.cert_chain_pems[0].write_to_path(str(made.client_cert))
    return made


def tls_gateway(
    pki: Pki,
    workdir: Path,
    client_ca: bool = False,
    args: tuple[str, ...] = (),
    **server: object,
) -> tuple[GatewayProcess, int]:
    """A gateway serving TLS with the server certificate; the config names the
    files relative to its own directory, as a deployment would."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("ca.pem", "server.pem", "server.key"):
        (workdir / name).write_bytes((pki.dir / name).read_bytes())
    tls = {"cert_file": "server.pem", "key_file": "server.key"}
    if client_ca:
        tls["client_ca_file"] = "ca.pem"
    grpc_port = free_port()
    config = digits_config(tls=tls, **server)
    return start_gateway(config, workdir, "--grpc-port", str(grpc_port), *args), grpc_port


def https_infer(port: int, context: ssl.SSLContext) -> dict:
    """A digits infer over a new HTTPS connection; the answer's JSON."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    conn.request(
        "POST", "/v2/models/digits/infer", INFER_BODY, {"content-type": "application/json"}
    )
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body
    conn.close()
    return json.loads(body)


def client_context(pki: Pki, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if with_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def grpc_client(port: int, pki: Pki, with_cert: bool = False) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(
        f"127.0.0.1:{port}",
        ssl=True,
        root_certificates=str(pki.ca_file),
        private_key=str(pki.client_key) if with_cert else None,
        certificate_chain=str(pki.client_cert) if with_cert else None,
    )


def grpc_infer(client: grpcclient.InferenceServerClient) -> np.ndarray:
    tensor = grpcclient.InferInput("pixels", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
    result = client.infer("digits", [tensor], client_timeout=10)
    return result.as_numpy("probabilities")


def plain_http_fails(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/v2/health/ready")
        conn.getresponse().read()
    conn.close()


def plain_grpc_fails(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=5)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def stopping() -> Iterator[list[GatewayProcess]]:
    """Gateways to stop after the test, whatever happened."""
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.stop()


def test_https_and_grpc_over_tls_with_a_trusted_ca(
    pki: Pki, tmp_path: Path, stopping: list[GatewayProcess]
) -> None:
    gateway, grpc_port = tls_gateway(pki, tmp_path)
    stopping.append(gateway)
    assert f"gateway ready on https://127.0.0.1:{gateway.port}" in gateway.logs()
    assert f"grpcs://127.0.0.1:{grpc_port}" in gateway.logs()
    reply = https_infer(gateway.port, client_context(pki))
    assert reply["outputs"][0]["shape"] == [1, 10]
    plain_http_fails(gateway.port)
    # A client that does not trust the CA refuses the server.
    with pytest.raises(ssl.SSLCertVerificationError):
        https_infer(gateway.port, ssl.create_default_context())
    assert grpc_infer(grpc_client(grpc_port, pki)).shape == (1, 10)
    plain_grpc_fails(grpc_port)


def test_mtls_refuses_clients_without_a_certificate_from_the_client_ca(
    pki: Pki, tmp_path: Path, stopping: list[GatewayProcess]
) -> None:
    gateway, grpc_port = tls_gateway(pki, tmp_path, client_ca=True)
    stopping.append(gateway)
    # HTTP: with a certificate the CA issued, served; without one, or with one from
    # another CA, refused in the handshake (TLS 1.3: on the client's first read).
    assert https_infer(gateway.port, client_context(pki, with_cert=True))["outputs"]
    with pytest.raises(OSError):
        https_infer(gateway.port, client_context(pki))
    stranger = trustme.CA().issue_cert("client@example.org")
    context = client_context(pki)
    with stranger.private_key_and_cert_chain_pem.tempfile() as pem:
        context.load_cert_chain(pem)
    with pytest.raises(OSError):
        https_infer(gateway.port, context)
    # gRPC: the same.
    assert grpc_infer(grpc_client(grpc_port, pki, with_cert=True)).shape == (1, 10)
    with pytest.raises(InferenceServerException):
        grpc_infer(grpc_client(grpc_port, pki))
    plain_http_fails(gateway.port)
    plain_grpc_fails(grpc_port)


def test_tls_and_the_http_limits_hold_in_every_worker(
    pki: Pki, tmp_path: Path, stopping: list[GatewayProcess]
) -> None:
    gateway, grpc_port = tls_gateway(
        pki, tmp_path, client_ca=True, args=("--workers", "2"), http={"max_header_bytes": 4096}
    )
    stopping.append(gateway)
    deadline = time.monotonic() + 60
    while gateway.logs().count("gRPC on") < 2:  # both workers serve both protocols
        assert time.monotonic() < deadline, gateway.logs()
        time.sleep(0.01)
    assert f"serving on https://127.0.0.1:{gateway.port}" in gateway.logs()
    context = client_context(pki, with_cert=True)
    for _ in range(8):  # new connections, spread by the kernel over both workers
        assert https_infer(gateway.port, context)["outputs"]
        conn = http.client.HTTPSConnection("127.0.0.1", gateway.port, timeout=10, context=context)
        conn.request("GET", "/v2/health/live", headers={"x-big": "b" * 5000})
        response = conn.getresponse()
        assert response.status == 431, response.read()
        conn.close()
        with grpc_client(grpc_port, pki, with_cert=True) as client:
            assert grpc_infer(client).shape == (1, 10)
    plain_http_fails(gateway.port)
    with pytest.raises(OSError):
        https_infer(gateway.port, client_context(pki))


def test_a_tls_file_that_cannot_be_used_fails_the_load_naming_its_key(
    pki: Pki, tmp_path: Path
) -> None:
    def problems(tls: dict[str, str]) -> str:
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(digits_config(tls=tls)))
        with pytest.raises(ConfigError) as refused:
            load_config(path)
        return "\n".join(refused.value.problems)

    missing = problems({"cert_file": "nowhere.pem", "key_file": str(pki.server_key)})
    assert "server.tls.cert_file" in missing and "nowhere.pem" in missing
    mismatched = problems({"cert_file": str(pki.server_cert), "key_file": str(pki.client_key)})
    assert "server.tls.key_file" in mismatched
    not_a_ca = problems(
        {
            "cert_file": str(pki.server_cert),
            "key_file": str(pki.server_key),
            "client_ca_file": str(pki.server_key),
        }
    )
    assert "server.tls.client_ca_file" in not_a_ca
    assert "server.tls.key_file" in problems({"cert_file": str(pki.server_cert)})  # required
    # Good files load, relative to the config's directory.
    for name in ("server.pem", "server.key", "ca.pem"):
        (tmp_path / name).write_bytes((pki.dir / name).read_bytes())
    path = tmp_path / "gateway.yaml"
    tls = {"cert_file": "server.pem", "key_file": "server.key", "client_ca_file": "ca.pem"}
    path.write_text(yaml.safe_dump(digits_config(tls=tls)))
    assert load_config(path).config.server.tls is not None
