"""The locustfile's own command-line options, and the settings they make.

Locust passes custom options from the master to its workers with every spawn
message, so a worker reads them when its users start (`Settings.of`), never at
import time: until the first spawn a worker only has its own command line.
Options show in the web UI's form too, where a test started from the UI may
change them. `add_arguments` takes locust's parser without importing locust.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from loadtests.locust.verdict import Thresholds

DEFAULT_HOST = "http://127.0.0.1:8000"  # `make run`
DEFAULT_GRPC_PORT = 8001

# User class -> the option that sets its weight (and the tag its task carries).
WEIGHT_OPTIONS = {
    "V2JsonUser": "weight_v2_json",
    "V2BinaryUser": "weight_v2_binary",
    "GrpcUser": "weight_grpc",
    "ChatUser": "weight_chat",
    "ChatStreamUser": "weight_chat_stream",
    "EmbeddingsUser": "weight_embeddings",
}
SLO_SOURCES = ("gateway", "none")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a ratio in 0..1, got {value}")
    return value


def add_arguments(parser: Any) -> None:
    """Register the options on locust's parser (events.init_command_line_parser)."""
    add = parser.add_argument
    add("--digits-model", default="digits", help="model for v2-json, v2-binary and grpc")
    add("--embeddings-model", default="embeddings", help="model for /v1/embeddings")
    add("--chat-model", default="chat", help="model for /v1/chat/completions")
    add(
        "--grpc-host",
        default="",
        help=f"host:port of the gateway's gRPC port (default: --host's host, port "
        f"{DEFAULT_GRPC_PORT})",
    )
    add(
        "--api-key",
        default="",
        env_var="LOCUST_GATEWAY_API_KEY",
        is_secret=True,
        help="a tenant's key, sent as 'Authorization: Bearer' (gateways with tenants)",
    )
    add("--digits-batch", type=_positive_int, default=1, help="images per v2/grpc request")
    add("--embeddings-batch", type=_positive_int, default=1, help="sentences per request")
    add("--embedding-dim", type=_positive_int, default=384, help="expected vector length")
    add("--chat-max-tokens", type=_positive_int, default=16, help="max_tokens of chat requests")
    add("--request-timeout", type=float, default=10.0, help="seconds, per request")
    for user, dest in WEIGHT_OPTIONS.items():
        add(
            "--" + dest.replace("_", "-"),
            type=_non_negative_int,
            default=1,
            help=f"weight of {user} (0 leaves it out)",
            # The classes are chosen when locust starts: a value typed into the
            # web UI's form later would change nothing.
            include_in_web_ui=False,
        )
    add(
        "--slo-source",
        choices=SLO_SOURCES,
        default="gateway",
        help="also hold each entry to its model's SLO from the gateway's GET /slo",
    )
    add("--slo-p50-ms", type=float, default=None, help="each request entry's p50 at most this")
    add("--slo-p99-ms", type=float, default=None, help="each request entry's p99 at most this")
    add("--max-failure-ratio", type=_ratio, default=None, help="each entry's failures/requests")
    for part, what in (("ttft", "time to first token"), ("inter-chunk", "gaps between chunks")):
        for quantile in ("p50", "p99"):
            add(f"--slo-{part}-{quantile}-ms", type=float, default=None, help=f"{what}, {quantile}")


@dataclass(frozen=True)
class Settings:
    """What the users and the verdict need, read from locust's parsed options."""

    host: str
    grpc_host: str
    digits_model: str
    embeddings_model: str
    chat_model: str
    api_key: str
    digits_batch: int
    embeddings_batch: int
    embedding_dim: int
    chat_max_tokens: int
    request_timeout_s: float
    weights: Mapping[str, int]
    slo_source: str
    thresholds: Thresholds

    @classmethod
    def of(cls, options: Any, host: str | None) -> Settings:
        """From locust's parsed options (environment.parsed_options) and host."""
        host = (host or DEFAULT_HOST).rstrip("/")
        return cls(
            host=host,
            grpc_host=options.grpc_host or grpc_host_for(host),
            digits_model=options.digits_model,
            embeddings_model=options.embeddings_model,
            chat_model=options.chat_model,
            api_key=options.api_key,
            digits_batch=options.digits_batch,
            embeddings_batch=options.embeddings_batch,
            embedding_dim=options.embedding_dim,
            chat_max_tokens=options.chat_max_tokens,
            request_timeout_s=options.request_timeout,
            weights={user: getattr(options, dest) for user, dest in WEIGHT_OPTIONS.items()},
            slo_source=options.slo_source,
            thresholds=Thresholds.from_options(
                p50_ms=_optional(options.slo_p50_ms),
                p99_ms=_optional(options.slo_p99_ms),
                max_failure_ratio=_optional(options.max_failure_ratio),
                ttft_p50_ms=_optional(options.slo_ttft_p50_ms),
                ttft_p99_ms=_optional(options.slo_ttft_p99_ms),
                inter_chunk_p50_ms=_optional(options.slo_inter_chunk_p50_ms),
                inter_chunk_p99_ms=_optional(options.slo_inter_chunk_p99_ms),
            ),
        )

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def _optional(value: object) -> float | None:
    """An optional number; the web UI's form hands options without a default
    back as text, empty when left blank."""
    if value is None or value == "":
        return None
    return float(str(value))


def grpc_host_for(http_host: str) -> str:
    """The gRPC address beside an HTTP base URL: same host, the default gRPC port."""
    hostname = urlsplit(http_host).hostname or "127.0.0.1"
    if ":" in hostname:  # an IPv6 address
        hostname = f"[{hostname}]"
    return f"{hostname}:{DEFAULT_GRPC_PORT}"
