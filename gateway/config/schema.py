"""The gateway's YAML config as typed, frozen pydantic models (every key: docs/configuration.md).

Unknown keys are errors: a misspelt `max_queue` must not silently become the
default. Cross-references (routes naming backends, tenants naming models) are
checked by `config.loader`, which reports every problem with its YAML path.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The KServe v2 datatypes the gateway can decode (BF16 has no numpy type).
Datatype = Literal[
    "BOOL",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"

# A YAML path (("models", "digits", "route", "backends", 1)), as problems name them.
Path_ = tuple[str | int, ...]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrpcServerConfig(Section):
    """gRPC transport tuning; its message size limit is server.max_request_bytes."""

    max_concurrent_streams: int = Field(1024, ge=1)  # per connection (HTTP/2)
    keepalive_time_ms: int = Field(60_000, ge=1000)  # ping an idle connection this often
    keepalive_timeout_ms: int = Field(20_000, ge=100)  # close it if the ping goes unanswered
    # threads: gRPC's threaded server hands each call to the event loop (about
    # twice grpc.aio's calls/s on one core); each open stream holds a thread.
    # aio: grpc.aio on the event loop itself; streams hold no thread.
    engine: Literal["threads", "aio"] = "threads"
    # threads engine: calls served at once (more wait in gRPC's queue); open
    # streams count against it.
    threads: int = Field(64, ge=1, le=1024)
    # Calls in progress or waiting, both engines (gRPC's maximum_concurrent_rpcs):
    # beyond it a call is refused at once with RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = Field(1024, ge=1)
    # Streams (ModelStreamInfer, Health.Watch) open at once; beyond it a new one is
    # refused with RESOURCE_EXHAUSTED, so that unary calls always have room. None:
    # half of `threads` (threads engine) or of `max_concurrent_rpcs` (aio).
    max_open_streams: int | None = Field(None, ge=0)
    # Connections open at once (per process); None: from the open-files limit
    # (gateway/fd_budget.py).
    max_connections: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _streams_leave_room(self) -> GrpcServerConfig:
        streams = self.max_open_streams
        if streams is None:
            return self
        if self.engine == "threads" and streams >= self.threads:
            raise ValueError(
                f"max_open_streams: {streams} must be below threads ({self.threads}): "
                "each open stream holds a thread, and unary calls need some"
            )
        if streams >= self.max_concurrent_rpcs:
            raise ValueError(
                f"max_open_streams: {streams} must be below max_concurrent_rpcs "
                f"({self.max_concurrent_rpcs}), which open streams count against"
            )
        return self

    def open_streams_limit(self) -> int:
        """`max_open_streams`, or its default for the engine."""
        if self.max_open_streams is not None:
            return self.max_open_streams
        room = self.threads if self.engine == "threads" else self.max_concurrent_rpcs
        return min(room, self.max_concurrent_rpcs) // 2


class HttpServerConfig(Section):
    """HTTP/1.1 connection limits, enforced by api/http_limits.py (per process)."""

    # Request line + headers; larger heads are answered 431 and the connection closed.
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=16 * 1024 * 1024)
    # A request head must be complete this long after the connection opened, or
    # after its first byte on a kept-alive connection (slowloris).
    header_timeout_s: float = Field(10.0, gt=0)
    # A request body that receives no byte for this long: 408 and close.
    body_timeout_s: float = Field(30.0, gt=0)
    # An idle kept-alive connection is closed after this long.
    keep_alive_timeout_s: int = Field(30, ge=1)
    # Connections open at once; beyond it a new one is answered 503 and closed.
    # None: from the open-files limit (gateway/fd_budget.py).
    max_connections: int | None = Field(None, ge=1)
    # Requests in progress at once; beyond it a request is answered 503.
    max_concurrent_requests: int = Field(1024, ge=1)


class TlsConfig(Section):
    """TLS for HTTP and gRPC (PEM files; relative paths resolve like model paths)."""

    cert_file: str  # the server's certificate chain
    key_file: str  # its private key (unencrypted)
    # Set: clients must present a certificate signed by one of these CAs (mTLS).
    client_ca_file: str | None = None


class ShutdownConfig(Section):
    """What SIGTERM does (gateway/uvicorn_stop.py): readiness fails at once, the listener
    keeps serving for `drain_s` (load balancers take the endpoint out), then
    stops accepting; requests in flight get `grace_s` to finish, the rest are
    cancelled with a 503 (or UNAVAILABLE). Keep drain_s + grace_s below the
    platform's kill timeout (Kubernetes: terminationGracePeriodSeconds, 30 s by
    default), with room for closing the backends."""

    drain_s: float = Field(5.0, ge=0, le=3600)
    grace_s: float = Field(20.0, ge=0, le=3600)


class ServerConfig(Section):
    host: str = "0.0.0.0"
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535)  # 0 disables gRPC
    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    admin_key_env: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # json: one JSON object per line, with the request id and trace id (observe/logs.py).
    log_format: Literal["text", "json"] = "text"
    grpc: GrpcServerConfig = GrpcServerConfig()
    http: HttpServerConfig = HttpServerConfig()
    tls: TlsConfig | None = None  # None: plain HTTP and gRPC
    # How often the config file is checked for changes (hot reload); 0: never.
    watch_config_s: float = Field(2.0, ge=0)
    shutdown: ShutdownConfig = ShutdownConfig()


class RedisConfig(Section):
    url: str
    # No request waits on Redis longer than this per call; past it the call is
    # skipped (fail-open). Loopback Redis answers in well under 1 ms; the budget
    # is for a loaded event loop, which a tighter one would mistake for Redis trouble.
    timeout_ms: float = Field(20.0, gt=0)


class CacheSettings(Section):
    """The response cache's process-wide settings (models opt in with `cache: {ttl_s}`)."""

    max_bytes: int = Field(64 * 1024 * 1024, ge=0)  # the in-process tier's bound
    # How long a replica may hold the right to compute a value the others wait for.
    lock_ttl_ms: int = Field(10_000, ge=1)
    # The variable holding the secret that signs values kept in Redis (a keyed
    # MAC): every replica must have the same. Required once Redis holds answers.
    signing_key_env: str | None = None


class AuditConfig(Section):
    """One JSON line per answered request (observe/audit.py); never secrets, and
    request content only for models with `audit_payload: true`."""

    sink: Literal["none", "stdout", "file"] = "none"
    path: str | None = None  # sink file (relative: to the working directory); {pid}: per process
    max_bytes: int = Field(100 * 1024 * 1024, ge=0)  # rotate past this size; 0: never
    backups: int = Field(5, ge=0)  # rotated files kept
    flush_interval_ms: float = Field(200.0, gt=0)  # records reach the sink this often
    # A crashed process loses at most this many records (those not yet written):
    # they are handed to the writer in batches of half as many.
    max_unwritten_records: int = Field(256, ge=2)
    # A crashed machine also loses what was written but not yet synced to disk:
    # a file sink is fsynced this often (0: after every batch).
    fsync_interval_ms: float = Field(1000.0, ge=0)
    # Whole audit files expire (observe/audit_sinks.py): a rotated file is
    # deleted once its newest record is this old; None: kept until `backups`
    # pushes it out.
    payload_retention_days: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _file_needs_path(self) -> AuditConfig:
        if self.sink == "file" and not self.path:
            raise ValueError("path: required when sink is 'file'")
        if self.payload_retention_days is not None and self.sink != "file":
            # Believing payloads expire when nothing deletes them is the worse failure.
            raise ValueError(
                "payload_retention_days: only a file sink can expire records; with "
                f"sink '{self.sink}', set the retention where the records are collected"
            )
        return self


class RateLimitConfig(Section):
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    # Requests a tenant may send at once before the rate applies; None: one
    # second's worth of the rate, at least 1 (routing/ratelimit.py says why).
    burst: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _burst_needs_a_rate(self) -> RateLimitConfig:
        if self.burst is not None and self.requests_per_minute is None:
            raise ValueError("burst: applies to requests_per_minute, which is not set")
        return self


class BudgetConfig(Section):
    """A tenant's spend per UTC day and month, in US dollars (routing/budget.py)."""

    usd_per_day: float | None = Field(None, gt=0)
    usd_per_month: float | None = Field(None, gt=0)
    # Shares of a limit at which an alert fires (config/prometheus/alerts.yaml);
    # spending all of it has an alert of its own.
    alert_at: list[Annotated[float, Field(gt=0, lt=1)]] = [0.5, 0.8]

    @model_validator(mode="after")
    def _needs_a_limit(self) -> BudgetConfig:
        if self.usd_per_day is None and self.usd_per_month is None:
            raise ValueError("budget: set usd_per_day, usd_per_month or both")
        return self


class TenantConfig(Section):
    name: str = Field(pattern=NAME_PATTERN)
    # The variable holding the tenant's key, or a list of them: every key listed
    # is valid at once (rotation: add the next key, move callers, drop the old).
    key_env: str | Annotated[list[str], Field(min_length=1)]
    models: list[str] | None = None  # None: every model
    rate_limit: RateLimitConfig | None = None
    budget: BudgetConfig | None = None

    def key_envs(self) -> list[str]:
        """The variables of `key_env`, as a list."""
        return [self.key_env] if isinstance(self.key_env, str) else list(self.key_env)


class BatchingConfig(Section):
    max_batch_size: int = Field(32, ge=1)
    max_queue_delay_us: int = Field(1000, ge=0)
    preferred_batch_sizes: list[int] = []

    @model_validator(mode="after")
    def _preferred_fit(self) -> BatchingConfig:
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_sizes: {size} is outside 1..max_batch_size "
                    f"({self.max_batch_size})"
                )
        return self


class CostConfig(Section):
    usd_per_request: float = Field(0.0, ge=0)
    usd_per_1k_input_tokens: float = Field(0.0, ge=0)
    usd_per_1k_output_tokens: float = Field(0.0, ge=0)


class RetryConfig(Section):
    max: int = Field(0, ge=0, le=10)
    backoff_ms: int = Field(100, ge=0)


class CircuitBreakerConfig(Section):
    enabled: bool = True
    consecutive_failures: int = Field(5, ge=1)
    error_rate: float = Field(0.5, gt=0, le=1)
    window_s: float = Field(10.0, gt=0)
    min_requests: int = Field(20, ge=1)
    cooldown_ms: int = Field(5000, ge=0)


class BackendCommon(Section):
    """What every backend type's config has. Each type's own model (in its module,
    registered in gateway/backends/registry.py) narrows `type` to its name."""

    type: str
    # Keys of another backend type that would do nothing in this one: refused
    # with the reason (config.loader), where any other unknown key is a typo.
    keys_of_other_types: ClassVar[dict[str, str]] = {}

    max_concurrency: int = Field(4, ge=1)
    max_queue: int = Field(256, ge=0)
    timeout_ms: int = Field(30_000, ge=1)
    cost: CostConfig = CostConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()


ProviderName = Literal["tensorrt", "cuda", "cpu"]


def cpu_only() -> list[ProviderName]:
    return ["cpu"]


class TokenizerConfig(Section):
    """Pre-processing: callers send UTF-8 text in `input` (BYTES [-1]); the gateway
    tokenizes it into the graph's `ids_input` and `mask_input`."""

    path: str
    input: str = "text"
    max_length: int = Field(256, ge=1)  # tokens per text; a text is cut at 16 bytes per token first
    ids_input: str = "input_ids"
    mask_input: str = "attention_mask"
    # Texts one tensor request may carry (more: 400). Executions take at most
    # batching.max_batch_size texts (32 without batching); more run in chunks.
    max_texts: int = Field(128, ge=1)


class TensorSpecConfig(Section):
    name: str = Field(min_length=1)
    datatype: Datatype
    shape: list[int] = Field(max_length=32)  # core.signature.MAX_RANK: no request could fit more

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        for dim in shape:
            if dim < -1:
                raise ValueError(f"dimension {dim} is invalid: use -1 for any size, or a size >= 0")
        return shape


class SignatureConfig(Section):
    inputs: list[TensorSpecConfig] = Field(min_length=1)
    outputs: list[TensorSpecConfig] = Field(min_length=1)
    # None: batched when every input and output has -1 as its first dimension.
    batched: bool | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> SignatureConfig:
        for side, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [s.name for s in specs]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{side}: duplicate names {dupes}")
        if self.batched:
            for spec in [*self.inputs, *self.outputs]:
                if not spec.shape or spec.shape[0] != -1:
                    raise ValueError(
                        f"batched: '{spec.name}' must have -1 as its first dimension, "
                        f"got {spec.shape}"
                    )
        return self

    def is_batched(self) -> bool:
        if self.batched is not None:
            return self.batched
        return all(s.shape and s.shape[0] == -1 for s in [*self.inputs, *self.outputs])


class WeightedBackend(Section):
    name: str
    weight: float = Field(gt=0)


class ShadowConfig(Section):
    backend: str
    fraction: float = Field(ge=0, le=1)
    # Tensors agree when every element is within atol + rtol * |served| of the served answer.
    rtol: float = Field(1e-3, ge=0)
    atol: float = Field(1e-5, ge=0)


# Failure classes a route may fall back on (default: all of them).
FallbackReason = Literal[
    "connection", "timeout", "5xx", "429", "overloaded", "circuit_open", "bad_output", "error"
]
FALLBACK_REASONS: tuple[FallbackReason, ...] = get_args(FallbackReason)


class StickyConfig(Section):
    """Weighted routes: one caller always gets the same variant."""

    header: str | None = None  # e.g. x-user-id
    tenant: bool = False

    @model_validator(mode="after")
    def _one_key(self) -> StickyConfig:
        if (self.header is None) == (not self.tenant):
            raise ValueError("set exactly one of 'header' or 'tenant: true'")
        return self


class HedgeConfig(Section):
    delay_ms: float = Field(gt=0)


class RouteConfig(Section):
    strategy: Literal["fallback", "weighted"] = "fallback"
    backends: list[str | WeightedBackend] = Field(min_length=1)
    fallback_on: list[FallbackReason] = Field(default_factory=lambda: list(FALLBACK_REASONS))
    sticky: StickyConfig | None = None
    # After delay_ms without an answer, also ask the next backend; first good answer wins.
    hedge: HedgeConfig | None = None
    shadow: ShadowConfig | None = None

    def backend_names(self) -> list[str]:
        return [b if isinstance(b, str) else b.name for b in self.backends]


class CacheConfig(Section):
    ttl_s: float = Field(gt=0)
    # Chat answers sampled with temperature > 0 differ run to run: cached only if true.
    sampled: bool = False
    # False: tenants never share entries (a hit would tell one what another asked).
    shared_across_tenants: bool = False


class SloConfig(Section):
    latency_ms: float = Field(gt=0)
    latency_target: float = Field(0.99, gt=0, lt=1)
    availability: float = Field(0.999, gt=0, lt=1)
    window: str = "30d"


class PolicyCommon(Section):
    """What every policy type's config has. Each type's own model (in its module,
    registered in gateway/policies/registry.py) narrows `type` to its name."""

    type: str


class ModelConfig(Section):
    version: str = "1"
    kind: Literal["tensor", "chat", "embeddings"] = "tensor"
    description: str = ""
    signature: SignatureConfig | None = None
    route: RouteConfig
    cache: CacheConfig | None = None
    slo: SloConfig | None = None
    # Audit records of this model also hold the request's size and chat messages.
    audit_payload: bool = False
    # Request/response policies, in order (gateway/policies/); validated as the
    # registered type each entry names (config.loader).
    policies: list[PolicyCommon] = []

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: object) -> object:
        # YAML reads `version: 1` as an int; versions are names on the wire.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _tensor_needs_signature(self) -> ModelConfig:
        if self.kind == "tensor" and self.signature is None:
            raise ValueError("signature: required for a model of kind 'tensor'")
        return self


class PromotionConfig(Section):
    """The promotion gate's canary (gateway/promotion/); absent: promotions are refused.
    The golden set and its threshold are the candidate's (its model.yaml)."""

    canary_weight: float = Field(0.1, gt=0, lt=1)  # the share of the model's traffic it serves
    watch_s: float = Field(300.0, gt=0)  # watched at least this long before it is promoted
    min_requests: int = Field(100, ge=1)  # canary answers needed for any verdict
    # Not min_requests canary answers by then: rolled back as inconclusive.
    max_watch_s: float = Field(3600.0, gt=0)
    # Rolled back when an SLO objective burns faster (observe/slo.py's burn rate).
    max_burn_rate: float = Field(14.4, gt=0)
    # Rolled back when more of the rows compared with the serving version disagree.
    max_disagreement: float = Field(0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _watch_fits(self) -> PromotionConfig:
        if self.max_watch_s < self.watch_s:
            raise ValueError(
                f"max_watch_s: {self.max_watch_s} must be at least watch_s ({self.watch_s})"
            )
        return self


class GatewayConfig(Section):
    server: ServerConfig = ServerConfig()
    redis: RedisConfig | None = None
    cache: CacheSettings = CacheSettings()
    audit: AuditConfig = AuditConfig()
    tenants: list[TenantConfig] = []
    # Validated as the registered type each entry names (config.loader builds the
    # document's model from gateway/backends/registry.py).
    backends: dict[str, BackendCommon] = Field(min_length=1)
    models: dict[str, ModelConfig] = Field(min_length=1)
    promotion: PromotionConfig | None = None
