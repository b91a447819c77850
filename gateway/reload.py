"""Hot reload, roll-back and the kill switch: one running config at a time.

A reload (the file changed, SIGHUP, or POST /admin/reload) builds the new
runtime beside the old one, off the event loop (loading ONNX sessions takes
a while), validates it completely, then swaps it in with two attribute
stores on the loop. Requests already running finish on the backends they
started with; backends the new config no longer uses are closed once idle.
Unchanged backends are taken over as they are (sessions, queues, breakers).
A config that fails validation is refused with its reasons and changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.loader import ConfigError, LoadedConfig, load_config
from gateway.config.schema import ServerConfig
from gateway.core.errors import NotFound
from gateway.gcfreeze import freeze_long_lived
from gateway.observe.logs import setup_logging
from gateway.runtime import Runtime, build_runtime

if TYPE_CHECKING:
    from gateway.api.admin import PromotionControl

log = logging.getLogger("gateway.reload")

_HISTORY = 10  # configs kept for roll-back
_DRAIN_POLL_S = 0.05


class ReloadRefused(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ConfigManager:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.version = 1
        self.loaded_at = time.time()
        self._history: list[LoadedConfig] = []
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._file_digest = runtime.loaded.sha256
        # The promotion gate (gateway/promotion/), wired in by app.create_app.
        self.promotions: PromotionControl | None = None

    @property
    def source(self) -> Path | None:
        return self.runtime.loaded.source

    @property
    def admin_key_digest(self) -> bytes | None:
        """The running config's admin key (sha256): a reload that adds, changes or
        removes `server.admin_key_env` applies from the next admin call."""
        return self.runtime.admin_key_digest

    @property
    def config_sha256(self) -> str:
        return self.runtime.loaded.sha256

    def audit_admin(
        self,
        action: str,
        caller: dict[str, Any],
        status: int,
        config_before: str,
        target: str | None = None,
        error: str | None = None,
    ) -> None:
        """An audit record of an admin call or a reload (none without `audit:`)."""
        audit = self.runtime.audit
        if audit is not None:
            audit.admin(action, caller, status, config_before, self.config_sha256, target, error)

    # -- reload and roll-back ------------------------------------------------

    async def reload(self, trigger: str = "admin") -> dict[str, Any]:
        """Reload the config file; ReloadRefused (and nothing changed) if it is bad."""
        if self.source is None:
            raise ReloadRefused(["the running config was not read from a file"])
        async with self._lock:
            try:
                loaded = load_config(self.source)
            except ConfigError as exc:
                log.error("reload (%s) refused: %s", trigger, "; ".join(exc.problems))
                raise ReloadRefused(exc.problems) from None
            self._file_digest = loaded.sha256
            return await self._apply(loaded, trigger, keep_history=True)

    async def rollback(self) -> dict[str, Any]:
        """Go back to the config before the running one."""
        async with self._lock:
            if not self._history:
                raise ReloadRefused(["no earlier config to roll back to"])
            previous = self._history[-1]
            result = await self._apply(previous, "rollback", keep_history=False)
            self._history.pop()
            return result

    async def apply(
        self,
        loaded: LoadedConfig,
        trigger: str,
        *,
        keep_history: bool,
        prepare: Callable[[Runtime], None] | None = None,
        if_running: Runtime | None = None,
    ) -> dict[str, Any]:
        """Serve a config built elsewhere (the promotion gate's canary, and the config
        it promotes); `prepare` may adjust the new runtime before it serves. With
        `if_running`, refused unless that runtime is still the running one (a
        reload meanwhile wins)."""
        async with self._lock:
            if if_running is not None and self.runtime is not if_running:
                raise ReloadRefused(["the running config changed meanwhile"])
            return await self._apply(loaded, trigger, keep_history, prepare)

    def file_written(self, digest: str) -> None:
        """The config file was rewritten on purpose (a promotion): the file watch
        must not reload it a second time."""
        self._file_digest = digest

    async def _apply(
        self,
        loaded: LoadedConfig,
        trigger: str,
        keep_history: bool,
        prepare: Callable[[Runtime], None] | None = None,
    ) -> dict[str, Any]:
        old = self.runtime
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, build_runtime, loaded, old)
        except ConfigError as exc:
            log.error("reload (%s) refused: %s", trigger, "; ".join(exc.problems))
            raise ReloadRefused(exc.problems) from None
        if prepare is not None:
            prepare(new)
        # A kill switch is not undone by a config change: disabled backends stay so.
        for name, health in new.health.items():
            if name in old.health and old.health[name].disabled:
                health.disabled = True
        old.service.replace(new.service)
        new.service = old.service
        self.runtime = new
        if keep_history:
            self._history.append(old.loaded)
            del self._history[:-_HISTORY]
        self.version += 1
        self.loaded_at = time.time()
        kept = frozenset(n for n, b in new.backends.items() if old.backends.get(n) is b)
        self._retire(old, kept)
        self._apply_logging(old.loaded.config.server, loaded.config.server)
        self._report_admin_key(old.admin_key_digest, new.admin_key_digest)
        log.info(
            "config %s applied (%s): version %d, %d model(s), %d backend(s) kept, %d new",
            loaded.sha256[:12],
            trigger,
            self.version,
            len(new.service.models),
            len(kept),
            len(new.backends) - len(kept),
        )
        return self.describe()

    @staticmethod
    def _apply_logging(old: ServerConfig, new: ServerConfig) -> None:
        """`server.log_level` and `log_format` take effect on reload (the other
        server settings, ports and sizes, need a restart)."""
        if (old.log_level, old.log_format) != (new.log_level, new.log_format):
            setup_logging(new.log_level, new.log_format)
            log.info("logging now %s at level %s", new.log_format, new.log_level)

    @staticmethod
    def _report_admin_key(old: bytes | None, new: bytes | None) -> None:
        if old == new:
            return
        if new is None:
            log.warning(
                "the admin endpoints need no key any more (server.admin_key_env was "
                "removed): anyone who reaches the HTTP port can reload, roll back and "
                "disable backends"
            )
        else:
            log.info("admin key %s: the next admin call needs it", "changed" if old else "set")

    def _retire(self, old: Runtime, kept: frozenset[str]) -> None:
        """Close the old runtime's other backends once no request uses them."""
        limit_s = max((b.timeout_ms for b in old.loaded.config.backends.values()), default=0) / 1e3

        redis_kept = old.redis is not None and old.redis is self.runtime.redis

        async def drain_then_close() -> None:
            deadline = time.monotonic() + limit_s + 1.0
            while old.busy(kept) and time.monotonic() < deadline:
                await asyncio.sleep(_DRAIN_POLL_S)
            await old.close(kept, keep_redis=redis_kept)
            freeze_long_lived()  # the old runtime's objects are garbage now; the new one's are not

        task = asyncio.get_running_loop().create_task(drain_then_close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- kill switch ---------------------------------------------------------

    def set_enabled(self, backend: str, enabled: bool) -> dict[str, Any]:
        health = self.runtime.health.get(backend)
        if health is None:
            raise NotFound(
                f"unknown backend '{backend}' (configured: {sorted(self.runtime.health)})"
            )
        health.disabled = not enabled
        log.warning(
            "backend %s %s by the kill switch", backend, "enabled" if enabled else "disabled"
        )
        return {"backend": backend, "enabled": enabled}

    # -- views ---------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        loaded = self.runtime.loaded
        return {
            "version": self.version,
            "sha256": loaded.sha256,
            "source": str(loaded.source) if loaded.source else None,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "rollback_available": bool(self._history),
            "backends": {
                name: {"state": h.state, "enabled": not h.disabled}
                for name, h in sorted(self.runtime.health.items())
            },
        }

    def config_view(self) -> dict[str, Any]:
        """The running config as written (${VAR} references unexpanded: no secrets)."""
        return {**self.describe(), "text": self.runtime.loaded.text}

    # -- triggers: file watch and SIGHUP --------------------------------------

    async def start(self, watch_interval_s: float) -> None:
        """Connect shared state, then watch for reload triggers (on the serving loop)."""
        if self.runtime.redis is not None:
            # Before traffic, so the first requests find Redis up (bounded: it never
            # raises, and gives up after its probe timeout, serving fail-open).
            await self.runtime.redis.connect()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._reload_soon, "SIGHUP")
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / Windows
            log.debug("SIGHUP reload is not available here")
        if watch_interval_s > 0 and self.source is not None:
            self._watcher = loop.create_task(self._watch(watch_interval_s))

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.promotions is not None:
            await self.promotions.stop()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    def _reload_soon(self, trigger: str) -> None:
        async def run() -> None:
            await self._reload_audited(trigger)

        task = asyncio.get_running_loop().create_task(run())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _watch(self, interval_s: float) -> None:
        """Poll the file's content hash: mtime alone misses editors that keep it."""
        assert self.source is not None
        while True:
            await asyncio.sleep(interval_s)
            try:
                digest = hashlib.sha256(self.source.read_bytes()).hexdigest()
            except OSError:
                continue  # being replaced (write to temp + rename): look again next time
            if digest != self._file_digest:
                self._file_digest = digest
                await self._reload_audited("file changed")

    async def _reload_audited(self, trigger: str) -> None:
        """A reload the gateway triggered itself (file watch, SIGHUP), audited
        like one asked for on /admin/reload."""
        before = self.config_sha256
        try:
            await self.reload(trigger)
        except ReloadRefused as refused:  # logged with its reasons; the running config stays
            self.audit_admin("reload", {"trigger": trigger}, 422, before, error=str(refused))
        else:
            self.audit_admin("reload", {"trigger": trigger}, 200, before)
