"""What a runtime shares beyond its own backends, built from the config and
taken over from the previous runtime while its settings are unchanged (so a
reload keeps the cache warm, the rate limits' memory and the audit file): the
Redis client, the response cache and the key that signs what it keeps in
Redis, the tenants' rate limiter and budgets, and the audit log."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from gateway.backends.registry import backend_type
from gateway.config.loader import LoadedConfig
from gateway.observe.audit import AuditLog, audit_log
from gateway.routing.budget import Budgets
from gateway.routing.cache import ResponseCache
from gateway.routing.ratelimit import RateLimiter

if TYPE_CHECKING:
    from gateway.runtime import Runtime


def build_shared_state(
    loaded: LoadedConfig, previous: Runtime | None, problems: list[str]
) -> tuple[Any, ResponseCache | None]:
    """The Redis client and the response cache: taken over from the previous
    runtime when their settings did not change, so a reload keeps the cache warm."""
    config = loaded.config
    cached = any(m.cache for m in config.models.values())
    signing_key = cache_signing_key(loaded, problems) if cached else None
    if (
        previous is not None
        and previous.loaded.config.redis == config.redis
        and previous.loaded.config.cache == config.cache
        and (previous.cache is not None) == cached
        and (previous.cache is None or previous.cache.signing_key == signing_key)
    ):
        return previous.redis, previous.cache
    redis = None
    if config.redis is not None:
        from gateway.redis_client import SharedRedis

        redis = SharedRedis(config.redis.url, timeout_ms=config.redis.timeout_ms)
    if not cached:
        return redis, None
    return redis, ResponseCache(
        config.cache.max_bytes, redis, config.cache.lock_ttl_ms, signing_key=signing_key
    )


def cache_signing_key(loaded: LoadedConfig, problems: list[str]) -> bytes | None:
    """The secret that signs cached values in Redis (None: a key of this process's
    own, enough for the in-process tier alone)."""
    config = loaded.config
    env = config.cache.signing_key_env
    if env is None:
        if config.redis is not None:
            problems.append(
                f"{loaded.where(('cache',))}: signing_key_env is required when answers are "
                "cached in Redis: replicas sign and check shared values with that key, so a "
                "value written to Redis by anyone else is never served"
            )
        return None
    value = os.environ.get(env)
    if not value:
        problems.append(
            f"{loaded.where(('cache', 'signing_key_env'))}: environment variable {env} is not set"
        )
        return None
    return value.encode()


def build_rate_limiter(
    loaded: LoadedConfig, redis: Any, previous: Runtime | None
) -> RateLimiter | None:
    """Tenant limits (shared through Redis when configured); the previous
    runtime's while tenants and Redis are unchanged, so a reload does not reset
    the per-replica fallback's memory."""
    config = loaded.config
    if not any(t.rate_limit for t in config.tenants):
        return None
    if (
        previous is not None
        and previous.service.ratelimit is not None
        and previous.loaded.config.tenants == config.tenants
        and previous.redis is redis
    ):
        return previous.service.ratelimit
    return RateLimiter.for_tenants(config.tenants, redis)


def build_budget(loaded: LoadedConfig, redis: Any, previous: Runtime | None) -> Budgets:
    """Tenant spend budgets: one object for the process's life, which a reload
    reconfigures (the running service keeps it, and what it knows of the spend)."""
    tenants = loaded.config.tenants
    budget = previous.service.budget if previous is not None else None
    if budget is None:
        return Budgets.for_tenants(tenants, redis)
    budget.configure({t.name: t.budget for t in tenants if t.budget}, redis)
    return budget


def build_audit(loaded: LoadedConfig, previous: Runtime | None) -> AuditLog | None:
    """The audit log `audit:` asks for: the previous runtime's while unchanged."""
    config = loaded.config
    if (
        previous is not None
        and previous.audit is not None
        and previous.loaded.config.audit == config.audit
    ):
        audit: AuditLog | None = previous.audit.retain()
    else:
        section = config.audit
        audit = audit_log(
            section.sink,
            str(loaded.resolve_path(section.path)) if section.path else None,
            section.max_bytes,
            section.backups,
            section.flush_interval_ms / 1000.0,
            max_unwritten_records=section.max_unwritten_records,
            fsync_interval_s=section.fsync_interval_ms / 1000.0,
            payload_retention_s=None
            if section.payload_retention_days is None
            else section.payload_retention_days * 86_400.0,
        )
    if audit is not None:
        # What a vendor backend runs unless its answer names a more exact version.
        served = {n: backend_type(b.type).served_model(b) for n, b in config.backends.items()}
        audit.backend_models = {n: m for n, m in served.items() if m is not None}
    return audit
