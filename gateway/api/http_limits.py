"""HTTP/1.1 limits at the edge, enforced by uvicorn's httptools protocol subclassed.

uvicorn's httptools protocol has no limit on a request head's size and no
timeout for it: a 64 MB header line is read whole (httptools joins its pieces
in memory) and answered, and a client trickling a header byte every few
seconds holds its connection forever. `LimitedHttpToolsProtocol` adds, per
process (each `--workers` process has its own):

* `max_header_bytes`: request line + headers; a head that goes past it is
  answered 431 and the connection closed, having read at most the limit (a
  head pipelined behind another request in the same read may run past it by
  what that read held).
* `header_timeout_s`: a head must be complete this long after the connection
  opened, or after its first byte on a kept-alive connection (the idle wait
  before that is `keep_alive_timeout_s`, uvicorn's own timer). Past it: 408
  and close, or just close when no byte of it came.
* `body_timeout_s`: a body that receives no byte for this long (while the
  server is reading it) is answered 408 (or the connection closed once an
  answer has started).
* `max_connections`: connections open at once; one more is answered 503 and
  closed as soon as it is accepted, so the process never runs out of file
  descriptors and the connections it has go on.
* `max_concurrent_requests`: requests in progress at once; beyond it a
  request is answered 503 without reaching the application.

The request path pays a few attribute updates and one `time.monotonic()` per
read (measured: +0.6 us per keep-alive request over uvicorn's protocol, in
process): the timeouts are checked by one timer per connection (`_watch`),
which fires at most once per the shorter timeout and re-arms itself at the
next deadline, instead of a timer set and cancelled per request.

Relies on uvicorn internals (see docs/development.md#dependencies): the
protocol's callbacks `data_received`, `on_headers_complete`,
`on_message_complete`, `connection_made`, `connection_lost`, and its
attributes `loop`, `transport`, `flow.read_paused`, `cycle` (`response_started`,
`response_complete`, `disconnected`, `message_event`), `app`, `connections`,
`tasks` and `server_state.default_headers`. Verified with uvicorn 0.29-0.55
(tests/edge/).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config.schema import HttpServerConfig
from gateway.fd_budget import connection_budget

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

log = logging.getLogger("gateway.api.http_limits")


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    max_concurrent_requests: int

    @classmethod
    def from_config(cls, config: HttpServerConfig, grpc: bool) -> HttpLimits:
        """The limits of `server.http`, the automatic connection limit resolved."""
        connections = config.max_connections or connection_budget(grpc)[0]
        return cls(
            max_header_bytes=config.max_header_bytes,
            header_timeout_s=config.header_timeout_s,
            body_timeout_s=config.body_timeout_s,
            max_connections=connections,
            max_concurrent_requests=config.max_concurrent_requests,
        )


def configure(limits: HttpLimits) -> None:
    """Set the limits of every connection accepted from now on in this process
    (`gateway serve` before it listens; each worker in `app_from_env`)."""
    LimitedHttpToolsProtocol.limits = limits
    log.info(
        "HTTP limits: heads %d bytes in %g s, bodies stalling %g s, %d connections, "
        "%d requests at once",
        limits.max_header_bytes,
        limits.header_timeout_s,
        limits.body_timeout_s,
        limits.max_connections,
        limits.max_concurrent_requests,
    )


def _response(
    status: bytes, message: str, default_headers: list[tuple[bytes, bytes]], extra: bytes = b""
) -> bytes:
    """A whole response that closes the connection, the body in the v2 error shape."""
    body = orjson.dumps({"error": message})
    head = [b"HTTP/1.1 ", status, b"\r\n"]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: application/json\r\ncontent-length: ",
        str(len(body)).encode(),
        b"\r\nconnection: close\r\n",
        extra,
        b"\r\n",
    ]
    return b"".join(head) + body


class _RateLimitedWarning:
    """One warning per `every_s` at most, saying how many times it happened."""

    def __init__(self, text: str, every_s: float = 60.0) -> None:
        self.text = text
        self.every_s = every_s
        self.count = 0
        self.last = -every_s

    def __call__(self, *args: object) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            log.warning(self.text, self.count, *args)
            self.count, self.last = 0, now


_refused_connection = _RateLimitedWarning(
    "refused %d connection(s) past server.http.max_connections (%d)"
)
_refused_request = _RateLimitedWarning(
    "answered %d request(s) 503 past server.http.max_concurrent_requests (%d)"
)


async def _over_concurrency(scope: Scope, receive: Receive, send: Send) -> None:
    """What a request past max_concurrent_requests gets instead of the application."""
    limit = LimitedHttpToolsProtocol.limits.max_concurrent_requests
    _refused_request(limit)
    body = orjson.dumps(
        {
            "error": f"the gateway is serving {limit} requests at once, its limit "
            "(server.http.max_concurrent_requests); retry later"
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# The base class's callbacks, called directly: cheaper than super() per request.
_data_received = HttpToolsProtocol.data_received
_on_headers_complete = HttpToolsProtocol.on_headers_complete
_on_message_complete = HttpToolsProtocol.on_message_complete
_monotonic = time.monotonic  # the timestamps of reads; ~50 ns


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `limits` (see the module)."""

    limits: ClassVar[HttpLimits] = HttpLimits.from_config(HttpServerConfig(), grpc=True)

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.limits
        self._max_head = limits.max_header_bytes
        self._head_timeout = limits.header_timeout_s
        self._body_timeout = limits.body_timeout_s
        # The longest the timer may sleep: a head or a body can start meanwhile.
        self._tick = min(limits.header_timeout_s, limits.body_timeout_s)
        self._max_requests = limits.max_concurrent_requests
        # Between requests and in a head: True; in a body: False.
        self._head_open = True
        self._head_bytes = 0  # of the head being read
        self._idle = False  # no byte of the next request yet (after a complete one)
        self._head_since = 0.0  # when the head being read started (time.monotonic)
        self._received_at = 0.0  # the last read (time.monotonic)
        self._watchdog: asyncio.TimerHandle | None = None

    # -- connections -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn narrows BaseTransport the same way
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            _refused_connection(self.limits.max_connections)
            transport.write(
                _response(
                    b"503 Service Unavailable",
                    f"the gateway has {self.limits.max_connections} connections open, its "
                    "limit (server.http.max_connections); retry later",
                    self.server_state.default_headers,
                    b"retry-after: 1\r\n",
                )
            )
            transport.close()
            return
        self._head_since = self._received_at = _monotonic()
        self._watchdog = self.loop.call_later(self._tick, self._watch)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        super().connection_lost(exc)

    # -- the request path ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        now = self._received_at = _monotonic()
        if self._head_open:
            if self._idle:  # the first byte of the next request: its head's time starts
                self._idle = False
                self._head_since = now
            seen = self._head_bytes + len(data)
            if seen > self._max_head:
                self._feed_past_head_limit(data)
                return
            self._head_bytes = seen
        _data_received(self, data)

    def _feed_past_head_limit(self, data: bytes) -> None:
        """Feed `data` in pieces, none taking an open head past the limit: a head
        still open once the limit is fed is refused, the rest unread."""
        feed = super().data_received  # (not per request)
        view = memoryview(data)
        while view:
            if not self._head_open:
                feed(view)  # type: ignore[arg-type]  # httptools reads any buffer
                return
            room = self._max_head - self._head_bytes
            if len(view) <= room:
                self._head_bytes += len(view)
                feed(view)  # type: ignore[arg-type]  # httptools reads any buffer
                return
            self._head_bytes = self._max_head  # on_message_complete resets it
            feed(view[:room])  # type: ignore[arg-type]  # httptools reads any buffer
            if self.transport.is_closing():
                return
            if self._head_open and self._head_bytes >= self._max_head:
                self._refuse_head()
                return
            view = view[room:]  # past a whole request: the next one's head is counted

    def on_headers_complete(self) -> None:
        self._head_open = False
        if len(self.tasks) < self._max_requests:
            _on_headers_complete(self)
            return
        app, self.app = self.app, _over_concurrency
        try:
            _on_headers_complete(self)
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        self._head_open = True
        self._head_bytes = 0
        self._idle = True
        _on_message_complete(self)

    # -- refusals --------------------------------------------------------------------

    def _close_with(self, status: bytes, message: str, in_body: bool = False) -> None:
        """Answer `status` and close. The answer is the next thing the client reads:
        for a head, when no request is being answered; for a body, when its own
        answer has not started (the application's, if any, is then dropped)."""
        cycle = self.cycle
        if in_body and cycle is not None and not cycle.response_started:
            cycle.disconnected = True
            cycle.message_event.set()  # a read of the body ends: the client is gone
            self.transport.write(_response(status, message, self.server_state.default_headers))
        elif not in_body and (cycle is None or cycle.response_complete):
            self.transport.write(_response(status, message, self.server_state.default_headers))
        self.transport.close()

    def _refuse_head(self) -> None:
        self._close_with(
            b"431 Request Header Fields Too Large",
            f"the request line and headers exceed {self._max_head} bytes "
            "(server.http.max_header_bytes)",
        )

    def _watch(self) -> None:
        """The connection's one timer: closes a head or body past its timeout, else
        re-arms itself for the earliest time either could be (a body that starts
        now times out `body_timeout` from now at the earliest, a head `header_timeout`)."""
        self._watchdog = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed, or upgraded to a WebSocket (its protocol has its own timers)
        now = _monotonic()
        cycle = self.cycle
        if not self._head_open:  # reading a body
            if self.flow.read_paused:  # the server stopped reading, not the client
                self._received_at = now
            elif now - self._received_at >= self._body_timeout:
                self._close_with(
                    b"408 Request Timeout",
                    f"the request body received nothing for {self._body_timeout:g} s "
                    "(server.http.body_timeout_s)",
                    in_body=True,
                )
                return
            wake = min(self._received_at + self._body_timeout, now + self._head_timeout)
        elif cycle is not None and not cycle.response_complete:
            # Answering: a head pipelined meanwhile gets its time from now.
            if not self._idle:
                self._head_since = now
            wake = now + self._tick
        elif self._idle:
            wake = now + self._tick  # idle: uvicorn's keep-alive timer closes it
        elif now - self._head_since >= self._head_timeout:
            if self._head_bytes:
                self._close_with(
                    b"408 Request Timeout",
                    f"the request line and headers did not arrive within "
                    f"{self._head_timeout:g} s (server.http.header_timeout_s)",
                )
            else:  # nothing sent at all: no answer to misread as another request's
                self.transport.close()
            return
        else:
            wake = min(self._head_since + self._head_timeout, now + self._body_timeout)
        self._watchdog = self.loop.call_later(wake - now, self._watch)
