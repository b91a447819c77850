"""OTLP/HTTP (protobuf) export: posts encoded span batches (otlp.Encoder) to a
collector with aiohttp. Configured by the standard variables, read as the
Python SDK reads them: `OTEL_EXPORTER_OTLP_[TRACES_]` `ENDPOINT`, `HEADERS`,
`TIMEOUT` (seconds), `COMPRESSION` (gzip|none), `CERTIFICATE`,
`CLIENT_CERTIFICATE`, `CLIENT_KEY`; `PROTOCOL` must be http/protobuf.
Connection errors, 429 and 502-504 are retried with backoff within the
timeout; a batch that cannot be delivered is dropped and counted
(`undelivered`), with one warning per outage.

Where it runs. An aiohttp session belongs to one event loop, so there is one
per loop the exporter posts from, made on first use and kept (its connector
keeps the connection alive between batches):

- `post`, a coroutine on the serving loop: what the recorder uses. The gateway
  serves from one core, and a sender thread there cost more in GIL hand-offs
  and switches than the post itself (about 7 us per request at 8,000 requests
  a second, against under 1 us on the loop);
- `send`, blocking, for spans handed over off the loop (gRPC's thread engine),
  a synchronous flush and the last spans at shutdown: it runs the same
  coroutine on a loop of the exporter's own, in a thread started on first
  use. A served gateway posting from its loop never starts it.

A session is closed on its loop by `aclose` (the recorder calls it as the
gateway stops), else by `close`.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import ssl
import threading
import time
import urllib.parse

import aiohttp

log = logging.getLogger("gateway.observe.otlp")

DEFAULT_ENDPOINT = "http://localhost:4318"
_RETRYABLE = frozenset({429, 502, 503, 504})
_TRIES = 3


def _env(name: str, default: str | None = None) -> str | None:
    return (
        os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}")
        or default
    )


def _headers(text: str) -> dict[str, str]:
    headers = {}
    for pair in text.split(","):
        name, sep, value = pair.partition("=")
        name, value = urllib.parse.unquote(name.strip()), urllib.parse.unquote(value.strip())
        if not sep or not name:
            continue
        if any(c in name + value for c in "\r\n\0") or any(c in name for c in " :"):
            raise RuntimeError(
                f"OTEL_EXPORTER_OTLP_HEADERS: header {name!r} has a character a header cannot carry"
            )
        headers[name.lower()] = value
    return headers


class OtlpHttpExporter:
    """One collector endpoint, posted to from the event loop (`post`) or from
    any thread (`send`)."""

    def __init__(self) -> None:
        protocol = _env("PROTOCOL", "http/protobuf")
        if protocol != "http/protobuf":
            raise RuntimeError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported, got {protocol!r}"
            )
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if not endpoint:
            base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT
            endpoint = base.rstrip("/") + "/v1/traces"
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise RuntimeError(f"OTLP endpoint: expected an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint
        self._timeout = float(_env("TIMEOUT", "10") or 10)
        self._gzip = (_env("COMPRESSION", "none") or "none").lower() == "gzip"
        self._headers = {
            "content-type": "application/x-protobuf",
            **_headers(_env("HEADERS", "") or ""),
        }
        if self._gzip:
            self._headers["content-encoding"] = "gzip"
        self._ssl: ssl.SSLContext | bool = True  # http: unused
        if url.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=_env("CERTIFICATE"))
            certificate = _env("CLIENT_CERTIFICATE")
            if certificate:
                self._ssl.load_cert_chain(certificate, _env("CLIENT_KEY"))
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._lock = threading.Lock()  # the sessions and the own loop: two threads may post
        self._own: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None
        self._failing = False
        self.undelivered = 0  # batches given up on (their spans are dropped)

    # -- the two ways in ----------------------------------------------------------------

    async def post(self, body: bytes) -> bool:
        """Post one ExportTraceServiceRequest from the running loop; False when it
        could not be delivered."""
        if self._gzip:  # off the loop: compressing a batch takes milliseconds
            body = await asyncio.get_running_loop().run_in_executor(None, gzip.compress, body)
        return await self._deliver(body)

    def send(self, body: bytes) -> bool:
        """Post one ExportTraceServiceRequest, blocking (from any thread but the
        exporter's own); False when it could not be delivered."""
        if self._gzip:
            body = gzip.compress(body)
        delivering = asyncio.run_coroutine_threadsafe(self._deliver(body), self._own_loop())
        try:
            # _deliver ends within the timeout (its last try takes at least 0.1 s);
            # the margin is for a loop that close() stopped under this send.
            return delivering.result(self._timeout + 1)
        except TimeoutError:
            delivering.cancel()
            return False

    # -- delivery and the retry policy --------------------------------------------------

    async def _deliver(self, body: bytes) -> bool:
        deadline = time.monotonic() + self._timeout
        for attempt in range(_TRIES):
            status = await self._post_once(body, max(0.1, deadline - time.monotonic()))
            if status is not None and 200 <= status < 300:
                if self._failing:
                    self._failing = False
                    log.info("OTLP export to %s works again", self.endpoint)
                return True
            pause = 0.5 * 2**attempt
            if (
                (status is not None and status not in _RETRYABLE)
                or attempt + 1 == _TRIES
                or time.monotonic() + pause >= deadline
            ):
                break
            await asyncio.sleep(pause)
        self.undelivered += 1
        if not self._failing:  # once per outage, not once per batch
            self._failing = True
            log.warning(
                "OTLP export to %s failed (status %s): its spans are dropped "
                "(said once, until an export succeeds)",
                self.endpoint,
                status,
            )
        return False

    async def _post_once(self, body: bytes, timeout: float) -> int | None:
        """One try: the status, or None when there was no answer."""
        try:
            async with self._session().post(
                self.endpoint,
                data=body,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                await response.read()  # to the end: the connection goes back to the pool
                return response.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None  # aiohttp has closed the connection: the next try opens another

    def _session(self) -> aiohttp.ClientSession:
        """The running loop's session, made on first use."""
        loop = asyncio.get_running_loop()
        with self._lock:
            session = self._sessions.get(loop)
            if session is not None and not session.closed:
                return session
            # Sessions of loops that have ended (tests run several): closed now.
            for ended in [other for other in self._sessions if other.is_closed()]:
                _dispose(ended, self._sessions.pop(ended))
            session = self._sessions[loop] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl), headers=self._headers
            )
            return session

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._own is None:
                loop = asyncio.new_event_loop()
                # A daemon: a process that never calls close() must still be able to exit.
                thread = threading.Thread(target=loop.run_forever, name="otlp-export", daemon=True)
                thread.start()
                self._own = (loop, thread)
            return self._own[0]

    # -- closing -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the running loop's session (a later post opens another)."""
        with self._lock:
            session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()

    def close(self) -> None:
        """Close every session and stop the own loop (blocking: at most about one
        export timeout, if a send is still in flight)."""
        with self._lock:
            own, self._own = self._own, None
            sessions, self._sessions = self._sessions, {}
        for loop, session in sessions.items():
            if own is None or loop is not own[0]:
                _dispose(loop, session)
        if own is not None:
            loop, thread = own
            if loop in sessions:
                closing = asyncio.run_coroutine_threadsafe(sessions[loop].close(), loop)
                try:
                    closing.result(self._timeout)
                except TimeoutError:
                    log.warning("OTLP export: its connections did not close in time")
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self._timeout)
            if not thread.is_alive():
                loop.close()


def _dispose(loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession) -> None:
    """Close `session` from outside its loop, without waiting for it."""
    closing = session.close()
    if not loop.is_closed():
        try:
            asyncio.run_coroutine_threadsafe(closing, loop)
            return
        except RuntimeError:  # closed in the meantime
            pass
    # Its loop has ended, and with it the connections' use: what is left to close
    # is the session's bookkeeping, which never waits, so no loop need run it.
    try:
        closing.send(None)
    except StopIteration:
        return
    closing.close()
