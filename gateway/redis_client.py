"""Shared state in Redis that never takes the gateway down with it.

Replicas share rate limits, locks and cached responses through one Redis; a
slow or absent Redis must cost a request at most a few milliseconds, never an
error. `SharedRedis` wraps one `redis.asyncio.Redis` to keep that promise.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.observe.metrics import REGISTRY

log = logging.getLogger("gateway.redis")

REDIS_UP = Gauge(
    "gateway_redis_up",
    "1 while the shared Redis answers, 0 while calls to it are skipped",
    registry=REGISTRY,
    multiprocess_mode="livemin",
)
REDIS_ERRORS = Counter(
    "gateway_redis_errors_total",
    "Calls to the shared Redis that failed or ran out of time",
    ["op"],
    registry=REGISTRY,
)

T = TypeVar("T")


class Unavailable(enum.Enum):
    """The type of `UNAVAILABLE`. Falsy, so `if value:` treats it like a miss."""

    UNAVAILABLE = "unavailable"

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "UNAVAILABLE"

    __str__ = __repr__


UNAVAILABLE = Unavailable.UNAVAILABLE
"""Returned instead of a value when Redis could not answer in time (test with `is`)."""

MaybeUnavailable = Literal[Unavailable.UNAVAILABLE]


class SharedRedis:
    """A fail-open client for one Redis, shared by every coroutine of a process.

    Contract:

    * No call raises a Redis error, a socket error or a timeout: it returns its
      value, or `UNAVAILABLE` when Redis could not give one. Callers decide what
      "unavailable" means for them (a cache miss, a per-replica limit...).
    * A call takes at most `timeout_ms` (default 5 ms) plus event-loop
      scheduling: waiting for a pooled connection, sending and reading all
      count against one `asyncio.timeout`. redis-py's own retries are off: a
      retry could only spend time the budget lacks. At most `max_connections`
      commands are in flight per process; `connect()` opens them all.
      A command over budget is abandoned, not cancelled: it still completes
      and hands its connection back intact (cancelling would close it, and on
      a busy loop the next call would pay for a new one). So a write that
      returned UNAVAILABLE may still land: e.g. a `set_nx` lock may be taken
      — its TTL frees it.
    * Calls go to Redis only while it is *up*. A lost connection (refused,
      reset, closed, Redis loading) marks it *down* at once. A call that runs
      out of time, or gets an error reply, returns `UNAVAILABLE` and starts a
      *probe* in the background: a PING on the pool with the longer
      `probe_timeout_ms` (250 ms). On a busy event loop a call can overrun
      5 ms while Redis is fine, and going down for that would flap shared
      state exactly under load; the probe marks Redis down only if it too
      fails. Meanwhile each call still returns within its budget.
    * While down, calls return `UNAVAILABLE` at once, without touching the
      network. After a back-off (1 s at first, doubling after each failed
      probe up to 10 s) the next call starts a probe — on a fresh connection —
      and still returns at once; the probe's success marks Redis up again. So
      the client reconnects by itself, and no request waits for a probe.
    * It starts neither up nor down: the first call starts the first probe.
      `await connect()` once at start-up, before traffic, so that the first
      requests find Redis up.
    * One log line on each transition (connected, down, up again); the gauge
      `gateway_redis_up` says which state it is in (it is per process: run one
      `SharedRedis` per process) and `gateway_redis_errors_total{op}` counts
      the calls and probes (`op="ping"`) that failed, not the calls skipped.
    * The connection is made lazily, on the running loop (again if a later
      call runs on another loop), so the object can be built before any loop.

    `clock` (seconds, monotonic) is injectable so tests can step the back-off.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_ms: float = 5.0,
        probe_timeout_ms: float = 250.0,
        max_connections: int = 16,
        backoff_s: float = 1.0,
        max_backoff_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parse_url(url)  # a malformed URL is a config error, raised now, not per call
        self.url = url
        self.timeout_s = timeout_ms / 1000.0
        self.probe_timeout_s = max(probe_timeout_ms, timeout_ms) / 1000.0
        self.max_connections = max_connections
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._where = _describe(url)
        self._client: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._probe_task: asyncio.Task[None] | None = None
        self._up: bool | None = None  # None: not probed yet
        self._backoff = backoff_s
        self._retry_at = 0.0

    @property
    def available(self) -> bool:
        """True while calls go to Redis."""
        return self._up is True

    @property
    def degraded(self) -> bool:
        """True once Redis failed, until a probe succeeds."""
        return self._up is False

    @property
    def probing(self) -> bool:
        """True while a probe is in flight."""
        return self._probe_task is not None and not self._probe_task.done()

    async def connect(self) -> bool:
        """Probe now (or wait for the probe in flight): True if Redis answered.

        Call it once at start-up, before traffic: it also opens the pool's
        connections. It ignores the back-off, may take up to twice
        `probe_timeout_ms`, and never raises.
        """
        if not self._up:
            probe = self._probe_task
            if probe is None or probe.done():  # not probing
                probe = self._start_probe()
            await asyncio.shield(probe)
        if self._up:
            await self._open_pool()
        return self._up is True

    async def get(self, key: str) -> bytes | str | MaybeUnavailable | None:
        """The value, None if the key does not exist, or UNAVAILABLE. Bytes,
        unless the URL asks for `decode_responses`."""
        return await self._call("get", lambda r: r.get(key))

    async def set(
        self, key: str, value: bytes | str | int | float, ttl_ms: int | None = None
    ) -> bool | MaybeUnavailable:
        """Store `value` (expiring after `ttl_ms` if given): True, or UNAVAILABLE."""
        return await self._call("set", lambda r: _as_bool(r.set(key, value, px=ttl_ms)))

    async def set_nx(
        self, key: str, value: bytes | str | int | float, ttl_ms: int
    ) -> bool | MaybeUnavailable:
        """Store only if `key` is absent — a lock that expires after `ttl_ms`.

        True: the caller holds it; False: someone else does; UNAVAILABLE: nobody
        can tell (the caller chooses between proceeding alone and waiting).
        """
        return await self._call("set_nx", lambda r: _as_bool(r.set(key, value, px=ttl_ms, nx=True)))

    async def delete(self, *keys: str) -> int | MaybeUnavailable:
        """Remove keys: how many existed, or UNAVAILABLE."""
        return await self._call("delete", lambda r: r.delete(*keys))

    async def eval_script(
        self, script: str, keys: Sequence[str], args: Sequence[bytes | str | int | float]
    ) -> Any | MaybeUnavailable:
        """Run a Lua script atomically: its reply, or UNAVAILABLE.

        Sent as EVALSHA (the script text only once per server: redis-py loads
        it again after a NOSCRIPT reply, e.g. when Redis restarted). Pass the
        same `script` string each time: it is the cache key.
        """

        def run(client: aioredis.Redis) -> Awaitable[Any]:
            registered = self._scripts.get(script)
            if registered is None:
                registered = self._scripts[script] = client.register_script(script)
            return registered(keys=list(keys), args=list(args))

        return await self._call("eval", run)

    async def close(self) -> None:
        """Stop probing and release the connections (a later call probes anew)."""
        probe, self._probe_task = self._probe_task, None
        if probe is not None and not probe.done():
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
        client = self._detach()
        if client is not None:
            await _close_quietly(client)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        self._up, self._retry_at = None, 0.0

    async def _call(
        self, op: str, command: Callable[[aioredis.Redis], Awaitable[T]]
    ) -> T | MaybeUnavailable:
        if not self._up:
            if not self.probing and self._clock() >= self._retry_at:
                self._start_probe()
            return UNAVAILABLE
        # Shielded: over budget, the command is abandoned, not cancelled.
        task = asyncio.ensure_future(command(self._connection()))
        try:
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.shield(task)
        except (RedisError, OSError, TimeoutError) as exc:
            REDIS_ERRORS.labels(op).inc()
            log.debug("redis %s: %s", self._where, _why(op, exc))
            if not self._up:
                pass  # type: ignore[unreachable]  # a call in flight when Redis went down (mypy keeps _up narrowed across the await)
            elif _lost_connection(exc):
                self._went_down(_why(op, exc))
            elif not self.probing:
                # Slow, or an error reply: maybe Redis, maybe this busy event
                # loop. A probe with time to spare tells them apart.
                self._start_probe()
            return UNAVAILABLE
        finally:
            if not task.done():  # abandoned (over budget, or the caller went away)
                task.add_done_callback(_ignore_outcome)

    def _start_probe(self) -> asyncio.Task[None]:
        self._probe_task = asyncio.get_running_loop().create_task(self._probe())
        return self._probe_task

    async def _probe(self) -> None:
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                await self._connection().ping()
        except (RedisError, OSError, TimeoutError) as exc:
            REDIS_ERRORS.labels("ping").inc()
            if self._up is False:  # a retry after the back-off
                self._backoff = min(self._backoff * 2, self.max_backoff_s)
                self._retry_at = self._clock() + self._backoff
                log.debug(
                    "redis %s still unavailable (%s); next try in %.1f s",
                    self._where,
                    type(exc).__name__,
                    self._backoff,
                )
                client = self._detach()
                if client is not None:
                    await _close_quietly(client)
            else:  # the first probe, or one checking a suspicious call
                self._went_down(_why("ping", exc))
            return
        if self._up:
            return  # a call was slow, Redis is not
        if self._up is False:
            log.info("redis %s answers again: shared state restored", self._where)
        else:
            log.info("redis %s connected: shared state on", self._where)
        self._up = True
        self._backoff = self.backoff_s
        REDIS_UP.set(1)

    async def _open_pool(self) -> None:
        """Open all the pool's connections now, before traffic (best effort).

        Each costs a millisecond or more of this loop's time: a first burst of
        calls finding none open would spend its budgets connecting. (After a
        recovery the pool refills as calls need it: opening it all at once
        would hold every connection while calls wait.)
        """
        client = self._connection()
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                await asyncio.gather(
                    *(client.ping() for _ in range(self.max_connections)), return_exceptions=True
                )
        except TimeoutError:
            pass  # the calls open what is missing

    def _went_down(self, why: str) -> None:
        self._up = False
        self._backoff = self.backoff_s
        self._retry_at = self._clock() + self._backoff
        REDIS_UP.set(0)
        log.warning(
            "redis %s unavailable (%s): shared state is per-replica until it "
            "answers again; next try in %.1f s",
            self._where,
            why,
            self._backoff,
        )
        # Its sockets may be half-dead (a restarted server, a timed-out read):
        # the probe starts afresh. Closing is awaited off the caller's path.
        client = self._detach()
        if client is not None:
            task = asyncio.get_running_loop().create_task(_close_quietly(client))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _connection(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A client is bound to the loop that made it, and that loop is gone.
            self._client = None
            self._loop = loop
        if self._client is None:
            self._scripts.clear()
            # A bounded pool, opened after each successful probe: a burst of
            # calls waits (within its budget) for an open connection instead
            # of opening more.
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=None,  # the asyncio timeout bounds the wait
                # The sockets' own timeouts only back up the asyncio ones: they
                # must let a probe connect, so they are the probe's.
                socket_timeout=self.probe_timeout_s,
                socket_connect_timeout=self.probe_timeout_s,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
            self._client = aioredis.Redis.from_pool(pool)
        return self._client

    def _detach(self) -> aioredis.Redis | None:
        """Forget the client; return it if it can still be closed on this loop."""
        client, self._client = self._client, None
        self._scripts.clear()
        try:
            same_loop = self._loop is asyncio.get_running_loop()
        except RuntimeError:
            same_loop = False
        return client if same_loop else None


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned call's failure is not news


async def _as_bool(reply: Awaitable[Any]) -> bool:
    return bool(await reply)


async def _close_quietly(client: aioredis.Redis) -> None:
    try:
        await client.aclose()
    except (RedisError, OSError, RuntimeError):
        pass


def _lost_connection(exc: BaseException) -> bool:
    """Refused, reset, closed, or loading: Redis cannot answer, no need to ask twice."""
    if isinstance(exc, TimeoutError):  # the builtin one is an OSError too
        return False
    return isinstance(exc, (RedisConnectionError, OSError))


def _why(op: str, exc: BaseException) -> str:
    return f"{type(exc).__name__} on {op}: {str(exc) or 'no answer in time'}"


def _describe(url: str) -> str:
    """host:port/db of a Redis URL, without the credentials it may carry."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path if parts.hostname else ''}"
