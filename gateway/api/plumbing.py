"""What every transport does around the pipeline, written once: the request
context from headers or metadata, the disconnect watch, the 405 answer and the
answer to a bug.

The transports adapt their own sources to it: HTTP (api/http_request.py) hands
over the ASGI headers as a bytes dict, gRPC (api/v2_grpc.py) its call's metadata
as a str dict and its deadline. Header names and meanings are the contract of
docs/contracts.md#headers; error shapes are api/http_errors.py's and
docs/contracts.md#errors.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, AnyStr, Generic, TypeVar

import grpc
from starlette.types import Receive

from gateway.api.http_errors import message_body
from gateway.core.errors import InvalidInput
from gateway.core.types import RequestContext
from gateway.observe import tracing
from gateway.observe.logs import CURRENT_REQUEST

log = logging.getLogger("gateway.api")

T = TypeVar("T")
HeaderList = list[tuple[bytes, bytes]]

# -- the request context -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderNames(Generic[AnyStr]):
    """The request headers the context reads, spelled as one transport's lookup
    keys: ASGI gives bytes, gRPC metadata str. Reading them in their native type
    means neither transport converts its headers per request (the HTTP path is
    benchmarked); only the values kept as text are decoded."""

    request_id: AnyStr
    authorization: AnyStr
    bearer: AnyStr  # the authorization scheme, lower-case, with its space
    api_key: AnyStr
    cache_control: AnyStr
    no_cache: AnyStr
    traceparent: AnyStr
    # The deadline header (HTTP); None: the deadline is the call's own (gRPC).
    timeout: AnyStr | None
    # Whether the context keeps the headers, for routes that stick by one (HTTP
    # only: docs/contracts.md#headers; gRPC calls get a weighted pick).
    sticky: bool


HTTP_HEADERS = HeaderNames(
    request_id=b"x-request-id",
    authorization=b"authorization",
    bearer=b"bearer ",
    api_key=b"x-api-key",
    cache_control=b"cache-control",
    no_cache=b"no-cache",
    traceparent=b"traceparent",
    timeout=b"x-request-timeout-ms",
    sticky=True,
)
GRPC_METADATA = HeaderNames(
    request_id="x-request-id",
    authorization="authorization",
    bearer="bearer ",
    api_key="x-api-key",
    cache_control="cache-control",
    no_cache="no-cache",
    traceparent="traceparent",
    timeout=None,
    sticky=False,
)

_MAX_REQUEST_ID = 128
# Generated ids: a random per-process prefix and a counter. Unique across
# replicas without a syscall per request (os.urandom is one).
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def request_id_of(headers: Mapping[AnyStr, AnyStr], names: HeaderNames[AnyStr]) -> str:
    """The caller's x-request-id if it is one we can echo (at most 128 printable
    ASCII characters: it goes back in a header, in logs and in audit records),
    else a new one."""
    given = headers.get(names.request_id)
    if given and len(given) <= _MAX_REQUEST_ID:
        text = given.decode("latin-1") if isinstance(given, bytes) else given
        if text.isascii() and text.isprintable():
            return text
    return new_request_id()


def build_request_context(
    headers: Mapping[AnyStr, AnyStr],
    protocol: str,
    names: HeaderNames[AnyStr],
    remaining_s: float | None = None,
) -> RequestContext:
    """The request's context from its headers (or metadata), read by `names`:
    request id, trace parent, deadline, API key and cache bypass.

    The deadline is `remaining_s` from now when the transport has one of its own
    (a gRPC call's), else the timeout header of `names` if sent; a bad timeout
    header is InvalidInput (400) naming it. The context becomes the one this
    request's log lines carry (observe/logs.py)."""
    ctx = RequestContext(
        request_id=request_id_of(headers, names),
        protocol=protocol,
        headers=headers if names.sticky else None,
    )
    CURRENT_REQUEST.set(ctx)  # log lines of this request carry its id (and trace id)
    if tracing.ENABLED and names.traceparent in headers:
        ctx.trace_parent = tracing.context_from_headers(headers)
    if remaining_s is not None:
        ctx.deadline = time.monotonic() + remaining_s
    elif names.timeout is not None:
        timeout = headers.get(names.timeout)
        if timeout is not None:
            ctx.deadline = time.monotonic() + _timeout_ms(timeout, names.timeout) / 1000.0
    # A Bearer authorization wins over x-api-key (docs/contracts.md#headers).
    authorization = headers.get(names.authorization)
    if authorization is not None and authorization[:7].lower() == names.bearer:
        bearer = authorization[7:].strip()
        ctx.api_key = bearer.decode("latin-1") if isinstance(bearer, bytes) else bearer
    else:
        key = headers.get(names.api_key)
        if key is not None:
            ctx.api_key = key.decode("latin-1") if isinstance(key, bytes) else key
    cache_control = headers.get(names.cache_control)
    if cache_control and names.no_cache in cache_control.lower():
        ctx.no_cache = True
    return ctx


def _timeout_ms(value: AnyStr, name: AnyStr) -> float:
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not 0 < ms < float("inf"):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        header = name.decode("latin-1") if isinstance(name, bytes) else name
        raise InvalidInput(
            f"header {header}: expected a positive number of milliseconds, got {text!r}"
        )
    return ms


# -- the disconnect watch --------------------------------------------------------------
#
# HTTP only. ASGI reports a caller who went away only as an `http.disconnect`
# from `receive()`, which nobody reads once the body is in: hence a watcher.
# gRPC signals it itself: grpc.aio cancels the handler's task when the call
# ends, and the threaded engine does so through the call's callback
# (api/grpc_threads.py, LoopHandoff.cancel); there is nothing to watch there.


async def while_connected(
    receive: Receive,
    work: Awaitable[T],
    request_id: str,
    on_cancel: Callable[[], Awaitable[None]] | None = None,
) -> T | None:
    """`work`'s result, or None when the client disconnected first: the work is
    then cancelled (and `on_cancel` awaited), so a caller who gave up stops
    holding a queue slot, a vendor call or a stream.

    The work runs in the calling task, not a task of its own; the watcher, a
    task reading `receive`, cancels the calling task on a disconnect. That is one
    task per request, none on a cache hit answered before the watcher runs."""
    loop = asyncio.get_running_loop()  # once: each lookup is a getpid() on Python 3.11
    task = asyncio.current_task(loop)
    assert task is not None
    watcher = loop.create_task(_cancel_on_disconnect(receive, task))
    try:
        return await work
    except asyncio.CancelledError:
        # The watcher ends normally only once it has cancelled us; any other
        # cancellation (the server stopping, a deadline) is not ours to absorb.
        if not watcher.done() or watcher.cancelled() or watcher.exception() is not None:
            raise
        task.uncancel()
        if on_cancel is not None:
            await on_cancel()
        log.info("request %s: client disconnected, work dropped", request_id)
        return None
    finally:
        watcher.cancel()


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass  # more body after its end: not a disconnect, keep watching
    task.cancel()


# -- answers the transports give the same way ----------------------------------------


def method_not_allowed(
    method: str, path: str, allow: str, openai: bool
) -> tuple[int, bytes, HeaderList]:
    """405 for a wrong method: status, body in the surface's error shape (OpenAI's
    under /v1/, `{"error": "..."}` elsewhere) and the `allow` header."""
    message = f"method {method} not allowed on {path}: use {allow}"
    return 405, message_body(message, openai), [(b"allow", allow.encode("latin-1"))]


def internal_error_message(exc: BaseException, request_id: str) -> str:
    """A bug: logged with its traceback; the text the caller gets, without internals."""
    log.error("internal error on request %s", request_id, exc_info=exc)
    return f"internal error (request id {request_id}); this is a gateway bug"


def http_internal_error(
    exc: BaseException, ctx: RequestContext | None, openai: bool
) -> tuple[int, bytes, HeaderList]:
    """A bug on HTTP: 500, the message in the surface's error shape (OpenAI type
    `server_error`), and only `x-request-id` (docs/contracts.md#headers). `ctx`
    is None when building it failed: the id is then "-"."""
    request_id = ctx.request_id if ctx is not None else "-"
    body = message_body(internal_error_message(exc, request_id), openai, "server_error")
    return 500, body, [(b"x-request-id", request_id.encode("latin-1"))]


def grpc_internal_error(exc: BaseException, request_id: str) -> tuple[grpc.StatusCode, str]:
    """A bug on gRPC: INTERNAL and its message (a stream answers the message in
    `error_message` and goes on)."""
    return grpc.StatusCode.INTERNAL, internal_error_message(exc, request_id)
