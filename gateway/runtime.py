"""Config -> runtime objects: backends (with their limits and health), model
entries and routes, and SLOs, with the tenants and admin key of
runtime_access.py and the shared state of runtime_shared.py (Redis, cache,
rate limits, audit), checked completely before anything serves. On reload,
what did not change is taken over from the previous runtime."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import orjson

from gateway.admission.batching import BatchPolicy
from gateway.admission.queue import QueuedBackend
from gateway.admission.slots import ConcurrencyLimiter, SlottedBackend
from gateway.backends.base import Backend, ConfiguredBackend
from gateway.backends.registry import backend_type
from gateway.backends.tensor_embedder import TensorEmbedder
from gateway.config.loader import ConfigError, LoadedConfig
from gateway.config.schema import (
    BackendCommon,
    BatchingConfig,
    ModelConfig,
    SignatureConfig,
)
from gateway.core.llm import Price
from gateway.core.signature import Signature, TensorSpec, compatibility_problems
from gateway.observe.audit import AuditLog
from gateway.observe.slo import SloTracker
from gateway.pipeline.entry import ModelEntry
from gateway.pipeline.service import InferenceService
from gateway.policies.registry import policy_type
from gateway.routing.cache import ResponseCache
from gateway.routing.resilience import BackendHealth, BreakerPolicy
from gateway.routing.router import Attempt, Route, Shadow
from gateway.runtime_access import admin_key_digest, build_tenants
from gateway.runtime_shared import (
    build_audit,
    build_budget,
    build_rate_limiter,
    build_shared_state,
)

if TYPE_CHECKING:
    from gateway.config.schema import Path_, TensorSpecConfig

log = logging.getLogger("gateway")


@dataclass
class Runtime:
    """Everything built from one config; closed together (minus what a newer
    runtime took over on reload)."""

    loaded: LoadedConfig
    backends: dict[str, ConfiguredBackend]
    service: InferenceService
    health: dict[str, BackendHealth] = field(default_factory=dict)
    cache: ResponseCache | None = None
    redis: Any = None  # gateway.redis_client.SharedRedis when `redis` is configured
    audit: AuditLog | None = None  # shared with the next runtime while `audit:` is unchanged
    # sha256 of the admin key (`server.admin_key_env`); None: the admin endpoints are open.
    admin_key_digest: bytes | None = None

    async def close(self, keep: frozenset[str] = frozenset(), keep_redis: bool = False) -> None:
        """Close the backends, except those named in `keep` (reused elsewhere)."""
        await asyncio.gather(*(b.close() for name, b in self.backends.items() if name not in keep))
        if self.redis is not None and not keep_redis:
            await self.redis.close()
        if self.audit is not None:
            await self.audit.aclose()  # flushed; closed once no runtime uses it

    def busy(self, keep: frozenset[str] = frozenset()) -> bool:
        """Work still queued or running on a backend that is about to close."""
        return any(b.busy() for name, b in self.backends.items() if name not in keep)


def to_signature(config: SignatureConfig) -> Signature:
    def spec(s: TensorSpecConfig) -> TensorSpec:
        return TensorSpec(s.name, s.datatype, tuple(s.shape))

    return Signature(
        inputs=tuple(spec(s) for s in config.inputs),
        outputs=tuple(spec(s) for s in config.outputs),
        batched=config.is_batched(),
    )


def batch_policy(batching: BatchingConfig | None) -> BatchPolicy | None:
    if batching is None:
        return None
    return BatchPolicy(
        max_batch_size=batching.max_batch_size,
        max_queue_delay_s=batching.max_queue_delay_us / 1e6,
        preferred_batch_sizes=tuple(sorted(batching.preferred_batch_sizes)),
    )


def build_runtime(loaded: LoadedConfig, previous: Runtime | None = None) -> Runtime:
    """Load every backend and check it against the signatures it serves.

    With `previous` (a reload), a backend whose config did not change is taken
    over as it is, with its sessions, queue, connections and breaker state.
    Raises ConfigError listing every problem (with YAML paths) after closing
    whatever was loaded.
    """
    config = loaded.config
    problems: list[str] = []
    backends: dict[str, ConfiguredBackend] = {}
    health: dict[str, BackendHealth] = {}
    reused: set[str] = set()
    for name, backend_config in config.backends.items():
        if (
            previous is not None
            and previous.loaded.config.backends.get(name) == backend_config
            and name in previous.backends
        ):
            backends[name] = previous.backends[name]
            health[name] = previous.health[name]
            reused.add(name)
            continue
        try:
            backends[name] = _load_backend(name, backend_config, loaded)
        except Exception as exc:  # noqa: BLE001 - any load failure is a config problem to report
            problems.append(f"{loaded.where(('backends', name))}: {exc}")
            continue
        breaker = backend_config.circuit_breaker
        health[name] = BackendHealth(
            name,
            BreakerPolicy(
                consecutive_failures=breaker.consecutive_failures,
                error_rate=breaker.error_rate,
                window_s=breaker.window_s,
                min_requests=breaker.min_requests,
                cooldown_s=breaker.cooldown_ms / 1000.0,
                enabled=breaker.enabled,
            ),
        )

    tenants = build_tenants(loaded, problems)
    redis, cache = build_shared_state(loaded, previous, problems)
    admin_digest = admin_key_digest(loaded, problems)

    models: dict[str, ModelEntry] = {}
    for name, model in config.models.items():
        entry = _model_entry(name, model, backends, health, loaded, problems)
        if entry is not None:
            models[name] = entry
    if problems:
        for name, backend in backends.items():
            if name not in reused:
                _close_quietly(backend)
        raise ConfigError(str(loaded.source or "<config>"), problems)
    used = {a.backend.name for m in models.values() for a in m.route.attempts}
    used |= {m.route.shadow.attempt.backend.name for m in models.values() if m.route.shadow}
    for name in sorted(set(backends) - used):
        log.warning("backend %s is not used by any model route", name)
    try:
        slo = SloTracker.from_config(
            config.models, previous=previous.service.slo if previous else None
        )
    except ValueError as exc:
        for name, backend in backends.items():
            if name not in reused:
                _close_quietly(backend)
        raise ConfigError(str(loaded.source or "<config>"), [str(exc)]) from None
    audit = build_audit(loaded, previous)
    return Runtime(
        loaded=loaded,
        backends=backends,
        service=InferenceService(
            models,
            tenants,
            cache,
            slo,
            audit=audit,
            ratelimit=build_rate_limiter(loaded, redis, previous),
            budget=build_budget(loaded, redis, previous),
        ),
        health=health,
        cache=cache,
        redis=redis,
        audit=audit,
        admin_key_digest=admin_digest,
    )


def _load_backend(
    name: str, backend_config: BackendCommon, loaded: LoadedConfig
) -> ConfiguredBackend:
    """The backend its type builds, behind the admission its type asks for."""
    kind = backend_type(backend_config.type)
    backend = kind.build(name, backend_config, loaded.resolve_path)
    if kind.admission == "slots":
        limiter = ConcurrencyLimiter(name, backend_config.max_concurrency, backend_config.max_queue)
        return SlottedBackend(backend, limiter)
    # Queue settings only a "queue" type's config has (config.loader refuses them elsewhere).
    max_queue_wait_ms: float | None = getattr(backend_config, "max_queue_wait_ms", None)
    batching: BatchingConfig | None = getattr(backend_config, "batching", None)
    return QueuedBackend(
        backend,
        max_concurrency=backend_config.max_concurrency,
        max_queue=backend_config.max_queue,
        batching=batch_policy(batching),
        max_queue_wait_s=None if max_queue_wait_ms is None else max_queue_wait_ms / 1000.0,
    )


def _model_entry(
    name: str,
    model: ModelConfig,
    backends: dict[str, ConfiguredBackend],
    health: dict[str, BackendHealth],
    loaded: LoadedConfig,
    problems: list[str],
) -> ModelEntry | None:
    signature = to_signature(model.signature) if model.signature else None
    attempts: list[Attempt] = []
    weights: list[float] = []
    prices: dict[str, Price] = {}
    ok = True

    def attempt_for(backend_name: str, path: Path_) -> Attempt | None:
        backend = backends.get(backend_name)
        if backend is None:
            return None  # its load failure is reported under backends.<name>
        where = loaded.where(path)
        backend_config = loaded.config.backends[backend_name]
        adapted = _for_kind(model, signature, backend, backend_config)
        if isinstance(adapted, str):
            problems.append(f"{where}: backend '{backend_name}' {adapted}")
            return None
        if model.kind == "tensor" and signature is not None:
            specs = backend.io_specs()
            if specs is not None:
                found = compatibility_problems(signature, *specs)
                for problem in found:
                    problems.append(
                        f"{where}: backend '{backend_name}' does not fit the signature: {problem}"
                    )
                if found:
                    return None
        cost = backend_config.cost
        prices[backend_name] = Price(
            cost.usd_per_request, cost.usd_per_1k_input_tokens, cost.usd_per_1k_output_tokens
        )
        return Attempt(adapted, backend_config.timeout_ms / 1000.0, health[backend_name])

    for i, ref in enumerate(model.route.backends):
        backend_name = ref if isinstance(ref, str) else ref.name
        attempt = attempt_for(backend_name, ("models", name, "route", "backends", i))
        if attempt is None:
            ok = False
            continue
        attempts.append(attempt)
        weights.append(1.0 if isinstance(ref, str) else ref.weight)
    route_config = model.route
    shadow = None
    if route_config.shadow is not None:
        if model.kind != "tensor":
            problems.append(
                f"{loaded.where(('models', name, 'route', 'shadow'))}: shadow "
                f"traffic is for tensor models (this one is of kind '{model.kind}')"
            )
            ok = False
        else:
            attempt = attempt_for(
                route_config.shadow.backend, ("models", name, "route", "shadow", "backend")
            )
            if attempt is None:
                ok = False
            else:
                shadow = Shadow(
                    attempt,
                    route_config.shadow.fraction,
                    route_config.shadow.rtol,
                    route_config.shadow.atol,
                )
    policies = []
    for i, policy_config in enumerate(model.policies):
        kind = policy_type(policy_config.type)
        if model.kind not in kind.kinds:
            problems.append(
                f"{loaded.where(('models', name, 'policies', i))}: policy '{kind.name}' "
                f"applies to {' or '.join(sorted(kind.kinds))} models, not {model.kind}"
            )
            ok = False
            continue
        policies.append(kind.build(policy_config))
    if not ok:
        return None
    sticky = route_config.sticky
    route = Route(
        attempts,
        weights if route_config.strategy == "weighted" else None,
        fallback_on=frozenset(route_config.fallback_on),
        sticky_header=sticky.header.lower().encode() if sticky and sticky.header else None,
        sticky_tenant=bool(sticky and sticky.tenant),
        hedge_delay_s=route_config.hedge.delay_ms / 1000.0 if route_config.hedge else None,
        shadow=shadow,
    )
    return ModelEntry(
        name=name,
        version=model.version,
        kind=model.kind,
        signature=signature,
        route=route,
        description=model.description,
        prices=prices,
        cache_ttl_s=model.cache.ttl_s if model.cache else None,
        cache_sampled=bool(model.cache and model.cache.sampled),
        cache_shared_across_tenants=bool(model.cache and model.cache.shared_across_tenants),
        cache_prefix=_cache_prefix(name, model, loaded),
        audit_payload=model.audit_payload,
        policies=tuple(policies),
    )


def _cache_prefix(name: str, model: ModelConfig, loaded: LoadedConfig) -> bytes:
    """What a cached answer depends on besides the request: the model's version,
    signature and route, and what each backend it may come from declares its
    answers depend on (its type's `cache_identity`: a model file, a vendor
    model...), so that a changed one is a different answer."""
    names = list(model.route.backend_names())
    document = {
        "model": name,
        "version": model.version,
        "signature": model.signature.model_dump(mode="json") if model.signature else None,
        "route": model.route.model_dump(mode="json", exclude={"shadow", "hedge", "sticky"}),
        "backends": {
            n: loaded.config.backends[n].model_dump(
                mode="json",
                include=set(backend_type(loaded.config.backends[n].type).cache_identity),
            )
            for n in names
            if n in loaded.config.backends
        },
    }
    return hashlib.blake2b(
        orjson.dumps(document, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).digest()


def _for_kind(
    model: ModelConfig,
    signature: Signature | None,
    backend: ConfiguredBackend,
    config: BackendCommon,
) -> object | str:
    """The backend as this model's kind uses it, or why it cannot serve that kind."""
    kinds = backend_type(config.type).kinds
    if model.kind in kinds:
        return backend
    if model.kind != "embeddings" or "tensor" not in kinds:
        served = " or ".join(sorted(kinds))
        return f"(type {config.type}) serves {served} models, not {model.kind}"
    # embeddings from a local tensor model: text -> vectors through its signature
    if (
        signature is None
        or len(signature.inputs) != 1
        or len(signature.outputs) != 1
        or signature.inputs[0].datatype != "BYTES"
        or signature.outputs[0].datatype != "FP32"
        or len(signature.outputs[0].shape) != 2
    ):
        return (
            "is a local model: the embeddings model needs a signature of one BYTES [-1] "
            "input and one FP32 [-1, dim] output to call it"
        )
    local = cast(Backend, backend)  # a "tensor" type's, behind its queue
    specs = local.io_specs()
    if specs is not None:
        problems = compatibility_problems(signature, *specs)
        if problems:
            return "does not fit the signature: " + "; ".join(problems)
    width = signature.outputs[0].shape[1]
    return TensorEmbedder(
        local,
        signature.inputs[0].name,
        signature.outputs[0].name,
        width if width > 0 else None,
    )


def _close_quietly(backend: ConfiguredBackend) -> None:
    try:
        asyncio.run(backend.close())
    except Exception:  # closing after a failed load must not hide the load errors
        log.debug("closing backend %s failed", backend.name, exc_info=True)
