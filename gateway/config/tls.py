"""`server.tls`: the files it names, resolved and checked when the config loads.

The same files serve HTTP (uvicorn's ssl_* options) and gRPC
(grpc.ssl_server_credentials); a file that is missing, unreadable, not PEM,
or a key that does not match its certificate fails the load with the key's
YAML path, rather than the server's start with a library's message.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config.schema import Path_, TlsConfig


@dataclass(frozen=True)
class TlsFiles:
    """The resolved paths of `server.tls`."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None  # set: clients must present a certificate it signed

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, key, client CAs) as bytes, for gRPC."""
        ca = self.client_ca_file.read_bytes() if self.client_ca_file else None
        return self.cert_file.read_bytes(), self.key_file.read_bytes(), ca


def tls_files(tls: TlsConfig | None, resolve_path: Callable[[str], Path]) -> TlsFiles | None:
    """`server.tls` with its paths resolved (LoadedConfig.resolve_path); None without TLS."""
    if tls is None:
        return None
    return TlsFiles(
        cert_file=resolve_path(tls.cert_file),
        key_file=resolve_path(tls.key_file),
        client_ca_file=resolve_path(tls.client_ca_file) if tls.client_ca_file else None,
    )


def _no_password() -> bytes:
    return b""


def check_tls(
    tls: TlsConfig | None, resolve_path: Callable[[str], Path]
) -> list[tuple[Path_, str]]:
    """Every problem with the files of `server.tls`, by YAML path."""
    files = tls_files(tls, resolve_path)
    if files is None:
        return []
    where: Path_ = ("server", "tls")
    problems: list[tuple[Path_, str]] = []
    named = [("cert_file", files.cert_file), ("key_file", files.key_file)]
    if files.client_ca_file is not None:
        named.append(("client_ca_file", files.client_ca_file))
    for key, path in named:
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            problems.append(((*where, key), f"cannot read {path}: {exc.strerror or exc}"))
    if problems:
        return problems
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback, so that an encrypted key fails here instead of
        # OpenSSL prompting for its password on the terminal.
        context.load_cert_chain(files.cert_file, files.key_file, password=_no_password)
    except ssl.SSLError as exc:
        problems.append(
            (
                (*where, "key_file"),
                f"{files.cert_file} and {files.key_file} are not a PEM certificate chain "
                f"and its (unencrypted) private key: {exc.reason or exc}",
            )
        )
    if files.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca_file)
        except ssl.SSLError as exc:
            problems.append(
                (
                    (*where, "client_ca_file"),
                    f"{files.client_ca_file} holds no PEM CA certificate: {exc.reason or exc}",
                )
            )
    return problems
