"""Response cache: an in-process LRU bounded in bytes, then Redis, with
single-flight so a burst of identical requests makes one backend call.

Keys are computed by the pipeline (`tensor_key`, `json_key` in
routing/cache_codecs.py, prefixed with the model's route fingerprint and the
caller's scope: see ModelEntry.cache_scope). Values are kept as objects in the
local tier (no copy, no decoding on a hit) and as bytes in Redis (the codecs of
routing/cache_codecs.py).

What Redis holds is signed: a format byte, a keyed MAC (BLAKE2b, 16 bytes,
keyed by the deployment's `cache.signing_key_env` secret) over the Redis key
and the value, then the value. A value that does not verify (written by
someone without the key, moved to another key, or from an older format) or
does not decode is never served: it counts as a miss
(`gateway_cache_rejected_total{reason}`) and is recomputed and overwritten.

Redis trouble never fails a request: an unavailable Redis is skipped, and a
request never waits on it longer than the client's time budget.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from gateway.observe.metrics import (
    CACHE_LOCAL_BYTES,
    CACHE_REJECTED,
    CACHE_REQUESTS,
    FastChildren,
    fast_inc,
)
from gateway.routing.cache_codecs import Codec

V = TypeVar("V")

_LOCK_POLL_S = 0.002
# What Redis holds: this format byte, the MAC, then the codec's bytes.
_FORMAT = b"\x01"
_MAC_BYTES = 16
_ENTRY_OVERHEAD = 200  # bytes of bookkeeping per local entry, roughly


class RedisLike(Protocol):
    """What the cache needs from gateway.redis_client.SharedRedis: values as bytes,
    None for "not there", anything else for "Redis unavailable right now"."""

    async def get(self, key: str) -> Any: ...

    async def set(self, key: str, value: bytes, ttl_ms: int) -> Any: ...

    async def set_nx(self, key: str, value: bytes, ttl_ms: int) -> Any: ...

    async def delete(self, key: str) -> Any: ...


class CacheFetch(Protocol):
    """What the pipeline asks of a cache: `ResponseCache.fetch`, or
    tracing.CacheLookup's around it."""

    async def fetch(
        self,
        model: str,
        key: bytes,
        ttl_s: float,
        codec: Codec[V],
        compute: Callable[[], Awaitable[V]],
        wait_s: float | None,
    ) -> tuple[V, str]: ...


class _Abandoned(Exception):
    """The request computing a shared value was cancelled."""


class LocalLru:
    """Entries with an expiry, evicted least-recently-used past `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, tuple[float, int, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, size, value = entry
        if expires <= time.monotonic():
            del self._entries[key]
            self.bytes -= size
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: Any, size: int, ttl_s: float) -> None:
        size += _ENTRY_OVERHEAD + len(key)
        if size > self.max_bytes:
            return  # would evict everything else for one entry
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (time.monotonic() + ttl_s, size, value)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted, _) = self._entries.popitem(last=False)
            self.bytes -= evicted
        CACHE_LOCAL_BYTES.set(self.bytes)


class ResponseCache:
    def __init__(
        self,
        max_bytes: int,
        redis: RedisLike | None = None,
        lock_ttl_ms: int = 10_000,
        namespace: str = "gw:cache:",
        signing_key: bytes | None = None,
    ) -> None:
        self.local = LocalLru(max_bytes)
        self.redis = redis
        self.lock_ttl_ms = lock_ttl_ms
        self.namespace = namespace
        # None: a key of this process's own (its values verify only here).
        self.signing_key = signing_key
        self._mac_key = hashlib.sha256(
            signing_key if signing_key is not None else os.urandom(32)
        ).digest()
        self._flights: dict[bytes, asyncio.Future[Any]] = {}

    async def fetch(
        self,
        model: str,
        key: bytes,
        ttl_s: float,
        codec: Codec[V],
        compute: Callable[[], Awaitable[V]],
        wait_s: float | None,
    ) -> tuple[V, str]:
        """The cached value or the computed one, and "hit" or "miss".

        `wait_s` bounds how long this request waits for another replica's
        identical request to finish (None: the default lock TTL).
        """
        value: V | None = self.local.get(key)
        if value is not None:
            _count(model, "local", "hit")
            return value, "hit"
        flight = self._flights.get(key)
        if flight is not None:  # the same request is being answered here: share it
            try:
                shared: V = await asyncio.shield(flight)
            except _Abandoned:  # its caller went away mid-way: answer it ourselves
                return await self.fetch(model, key, ttl_s, codec, compute, wait_s)
            _count(model, "local", "hit")
            return shared, "hit"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        try:
            computed, source = await self._fetch_shared(model, key, ttl_s, codec, compute, wait_s)
            future.set_result(computed)
            return computed, source
        except BaseException as exc:
            # The waiters get the same failure (the next request tries afresh); if
            # this caller was cancelled, that is no answer for the others.
            if not future.done():
                future.set_exception(
                    _Abandoned() if isinstance(exc, asyncio.CancelledError) else exc
                )
                future.exception()
            raise
        finally:
            del self._flights[key]

    async def _fetch_shared(
        self,
        model: str,
        key: bytes,
        ttl_s: float,
        codec: Codec[V],
        compute: Callable[[], Awaitable[V]],
        wait_s: float | None,
    ) -> tuple[V, str]:
        _count(model, "local", "miss")
        redis = self.redis
        if redis is None:
            value = await compute()
            self.local.put(key, value, codec.size(value), ttl_s)
            return value, "miss"
        redis_key = self.namespace + key.hex()
        stored = await redis.get(redis_key)
        if isinstance(stored, bytes):
            found = self._open(model, redis_key, stored, codec)
            if found is not None:
                value = found[0]
                _count(model, "redis", "hit")
                self.local.put(key, value, codec.size(value), ttl_s)
                return value, "hit"
            stored = None  # not served: recomputed and overwritten, as a miss
        _count(model, "redis", "miss" if stored is None else "unavailable")
        locked = False
        if stored is None:  # Redis answers: ask for the right to compute
            lock = redis_key + ":lock"
            got = await redis.set_nx(lock, b"1", self.lock_ttl_ms)
            locked = got is True
            if got is False:
                waited = await self._wait_for_other(redis, redis_key, wait_s)
                opened = None if waited is None else self._open(model, redis_key, waited, codec)
                if opened is not None:
                    value = opened[0]
                    _count(model, "redis", "hit")
                    self.local.put(key, value, codec.size(value), ttl_s)
                    return value, "hit"
        try:
            value = await compute()
        finally:
            if locked:
                await redis.delete(redis_key + ":lock")
        self.local.put(key, value, codec.size(value), ttl_s)
        await redis.set(redis_key, self._seal(redis_key, codec.encode(value)), int(ttl_s * 1000))
        return value, "miss"

    def _mac(self, redis_key: str, payload: bytes) -> bytes:
        mac = hashlib.blake2b(redis_key.encode(), key=self._mac_key, digest_size=_MAC_BYTES)
        mac.update(payload)
        return mac.digest()

    def _seal(self, redis_key: str, payload: bytes) -> bytes:
        """What Redis keeps for `payload` under `redis_key`: signed for this deployment."""
        return _FORMAT + self._mac(redis_key, payload) + payload

    def _open(self, model: str, redis_key: str, stored: bytes, codec: Codec[V]) -> tuple[V] | None:
        """The value Redis held, if it verifies and decodes (in a 1-tuple, since a
        value may be falsy); None (counted) if it must not be served."""
        head = len(_FORMAT) + _MAC_BYTES
        payload = stored[head:]
        if (
            len(stored) < head
            or stored[:1] != _FORMAT
            or not hmac.compare_digest(stored[1:head], self._mac(redis_key, payload))
        ):
            _rejected(model, "signature")(1)
            return None
        try:
            return (codec.decode(payload),)
        except Exception:  # noqa: BLE001 - a signed value that does not decode (a bug, or an old format) is a miss, never an error
            _rejected(model, "decode")(1)
            return None

    async def _wait_for_other(
        self, redis: RedisLike, redis_key: str, wait_s: float | None
    ) -> bytes | None:
        """Another replica computes this value: poll for it, within a bound."""
        limit = (
            self.lock_ttl_ms / 1000.0 if wait_s is None else min(wait_s, self.lock_ttl_ms / 1000.0)
        )
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            await asyncio.sleep(_LOCK_POLL_S)
            stored = await redis.get(redis_key)
            if isinstance(stored, bytes):
                return stored
            if stored is not None:
                return None  # Redis went away: compute it ourselves
        return None


_lookups = FastChildren(CACHE_REQUESTS, fast_inc)  # on every lookup: bound per label set
_rejected = FastChildren(CACHE_REJECTED, fast_inc)


def _count(model: str, tier: str, result: str) -> None:
    _lookups(model, tier, result)(1)


def count_local_hit(model: str) -> None:
    _count(model, "local", "hit")


def count_bypass(model: str) -> None:
    _count(model, "none", "bypass")
