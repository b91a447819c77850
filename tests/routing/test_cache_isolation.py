"""The response cache keeps tenants and route variants apart, and serves from
Redis only what this deployment signed.

In-process gateways (the real app and backends) in front of real fake vendors
and a real redis-server: a tenant never gets an answer computed for another
tenant (unless the model opts in), a sticky caller never gets an answer
computed by another variant, and a value in Redis that was corrupted, forged
or moved is a counted miss, never an error and never served.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
import redis

from gateway.observe.metrics import REGISTRY
from tests.observe.inprocess import VENDOR_KEY, VENDOR_KEY_ENV, fake_vendor, gateway
from tests.redis_server import RedisServer

TENANTS = [f"tenant-{i}" for i in range(16)]
ADMIN_KEY_ENV = "CACHE_ISOLATION_ADMIN_KEY"
SIGNING_KEY_ENV = "CACHE_ISOLATION_SIGNING_KEY"
SIGNING_KEY = "a-deployment-secret"
TEXT = "what tenant zero asked"


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VENDOR_KEY_ENV, VENDOR_KEY)
    monkeypatch.setenv(ADMIN_KEY_ENV, "admin-key-for-the-cache-tests")
    monkeypatch.setenv(SIGNING_KEY_ENV, SIGNING_KEY)
    for tenant in TENANTS:
        monkeypatch.setenv(env_of(tenant), f"key-of-{tenant}")


def env_of(tenant: str) -> str:
    return "CACHE_ISOLATION_" + tenant.upper().replace("-", "_")


def vendor(url: str) -> dict[str, Any]:
    return {
        "type": "openai",
        "base_url": url,
        "api_key_env": VENDOR_KEY_ENV,
        "model": "fake-embedder",
        "circuit_breaker": {"enabled": False},
    }


def tenants_config(models: dict[str, Any], backends: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"admin_key_env": ADMIN_KEY_ENV},
        "tenants": [{"name": t, "key_env": env_of(t)} for t in TENANTS],
        "backends": backends,
        "models": models,
    }


async def embed(client: Any, model: str, tenant: str, **headers: str) -> tuple[list[float], str]:
    reply = await client.post(
        "/v1/embeddings",
        json={"model": model, "input": [TEXT]},
        headers={"authorization": f"Bearer key-of-{tenant}", **headers},
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["data"][0]["embedding"], reply.headers["x-gateway-cache"]


def test_a_tenant_never_gets_an_answer_cached_for_another_unless_the_model_shares() -> None:
    async def run() -> dict[str, list[str]]:
        async with fake_vendor(seed=1) as one:
            config = tenants_config(
                {
                    "private": {
                        "kind": "embeddings",
                        "route": {"backends": ["one"]},
                        "cache": {"ttl_s": 600},
                    },
                    "shared": {
                        "kind": "embeddings",
                        "route": {"backends": ["one"]},
                        "cache": {"ttl_s": 600, "shared_across_tenants": True},
                    },
                },
                {"one": vendor(one.url)},
            )
            async with gateway(config) as gw:
                seen: dict[str, list[str]] = {}
                for model in ("private", "shared"):
                    seen[model] = [
                        (await embed(gw.client, model, tenant))[1]
                        for tenant in ("tenant-0", "tenant-1", "tenant-0", "tenant-1")
                    ]
                return seen

    seen = asyncio.run(run())
    # B's first ask is a miss: a hit would tell B that A asked the same.
    assert seen["private"] == ["miss", "miss", "hit", "hit"]
    assert seen["shared"] == ["miss", "hit", "hit", "hit"]


def test_a_sticky_caller_never_gets_an_answer_computed_by_another_variant() -> None:
    # Two variants that answer differently (fake vendors with different seeds),
    # sticky by tenant, and a cache shared across tenants: each tenant's cached
    # answer is the one its own variant gives.
    async def run() -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        async with fake_vendor(embedding_dim=4) as one, fake_vendor(embedding_dim=5) as two:
            config = tenants_config(
                {
                    "canary": {
                        "kind": "embeddings",
                        "route": {
                            "strategy": "weighted",
                            "backends": [
                                {"name": "one", "weight": 50},
                                {"name": "two", "weight": 50},
                            ],
                            "sticky": {"tenant": True},
                        },
                        "cache": {"ttl_s": 600, "shared_across_tenants": True},
                    }
                },
                {"one": vendor(one.url), "two": vendor(two.url)},
            )
            async with gateway(config) as gw:
                truth = {
                    t: (await embed(gw.client, "canary", t, **{"cache-control": "no-cache"}))[0]
                    for t in TENANTS
                }
                cached = {t: (await embed(gw.client, "canary", t))[0] for t in TENANTS}
                return truth, cached

    truth, cached = asyncio.run(run())
    variants = {tuple(vector) for vector in truth.values()}
    assert len(variants) == 2, "the tenants should stick to both variants"
    assert cached == truth


def rejected(model: str, reason: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "gateway_cache_rejected_total", {"model": model, "reason": reason}
        )
        or 0.0
    )


def seal(redis_key: bytes, payload: bytes, secret: str) -> bytes:
    """The format docs/operations.md gives for what Redis holds: a format byte,
    a BLAKE2b MAC keyed by sha256(secret) over the Redis key and the value, the value."""
    mac = hashlib.blake2b(redis_key, key=hashlib.sha256(secret.encode()).digest(), digest_size=16)
    mac.update(payload)
    return b"\x01" + mac.digest() + payload


def test_a_value_in_redis_that_does_not_verify_or_decode_is_a_counted_miss(
    redis_server: RedisServer,
) -> None:
    store = redis.Redis.from_url(redis_server.url)
    namespace = b"gw:cache:"

    def entries() -> list[bytes]:
        return sorted(store.scan_iter(match=namespace + b"*", count=1000))

    for key in entries():
        store.delete(key)

    async def run() -> None:
        async with fake_vendor(seed=3) as three:
            config = {
                "redis": {"url": redis_server.url, "timeout_ms": 500},
                # No in-process tier: every lookup reads Redis.
                "cache": {"max_bytes": 0, "signing_key_env": SIGNING_KEY_ENV},
                "backends": {"three": vendor(three.url)},
                "models": {
                    "embed": {
                        "kind": "embeddings",
                        "route": {"backends": ["three"]},
                        "cache": {"ttl_s": 600},
                    }
                },
            }
            async with gateway(config) as gw:
                assert await gw.runtime.redis.connect()  # as the server's start-up does
                first, state = await embed_open(gw.client)
                assert state == "miss"
                (key,) = [k for k in entries() if not k.endswith(b":lock")]
                genuine = store.get(key)
                assert isinstance(genuine, bytes)
                assert (await embed_open(gw.client)) == (first, "hit")

                # Each of these is refused, recomputed (the same answer, from
                # the vendor) and overwritten with a genuine value.
                forged_payload = genuine[17:].replace(b"[", b"[9.0,", 1)
                cases = [
                    ("signature", b"garbage that is no cache value"),  # corrupted
                    ("signature", b"\x01" + b"\x00" * 16 + forged_payload),  # forged
                    ("signature", seal(b"gw:cache:elsewhere", genuine[17:], SIGNING_KEY)),  # moved
                    ("signature", seal(key, forged_payload, "another deployment's secret")),
                    ("decode", seal(key, b"\xff\xfe not a value", SIGNING_KEY)),  # signed, broken
                ]
                for reason, value in cases:
                    before = rejected("embed", reason)
                    store.set(key, value)
                    assert (await embed_open(gw.client)) == (first, "miss")
                    assert rejected("embed", reason) == before + 1
                    assert store.get(key) == genuine
                # The genuine value verifies: served from Redis again.
                assert (await embed_open(gw.client)) == (first, "hit")

    asyncio.run(run())


async def embed_open(client: Any) -> tuple[list[float], str]:
    reply = await client.post("/v1/embeddings", json={"model": "embed", "input": [TEXT]})
    assert reply.status_code == 200, reply.text
    return reply.json()["data"][0]["embedding"], reply.headers["x-gateway-cache"]
