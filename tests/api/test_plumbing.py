"""The transport plumbing shared by HTTP and gRPC (gateway/api/plumbing.py):
the request context from headers or metadata, the disconnect watch, the 405
answer and the answer to a bug."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
import orjson
import pytest

from gateway.api.http_request import id_only_context, request_context
from gateway.api.plumbing import (
    GRPC_METADATA,
    build_request_context,
    grpc_internal_error,
    http_internal_error,
    method_not_allowed,
    while_connected,
)
from gateway.core.errors import ErrorKind, InvalidInput
from gateway.core.types import RequestContext
from gateway.observe.logs import CURRENT_REQUEST


def http_here(headers: dict[str, str], remaining_s: float | None = None) -> RequestContext:
    """As the HTTP transport builds it: ASGI headers, bytes names and values."""
    raw = {k.encode("latin-1"): v.encode("latin-1") for k, v in headers.items()}
    return request_context(raw, "v2_http")


def grpc_here(headers: dict[str, str], remaining_s: float | None = None) -> RequestContext:
    """As the gRPC transport builds it: str metadata, and the call's deadline."""
    return build_request_context(headers, "v2_grpc", GRPC_METADATA, remaining_s)


def http(headers: dict[str, str]) -> RequestContext:
    return contextvars.Context().run(http_here, headers)  # the context variable set there


def grpc_call(headers: dict[str, str], remaining_s: float | None = None) -> RequestContext:
    return contextvars.Context().run(grpc_here, headers, remaining_s)


BOTH = pytest.mark.parametrize("build", [http, grpc_call], ids=["http", "grpc"])

# -- the request context -------------------------------------------------------------------------


@BOTH
def test_a_callers_request_id_is_echoed(build: Callable[..., RequestContext]) -> None:
    assert build({"x-request-id": "req-42"}).request_id == "req-42"


@BOTH
@pytest.mark.parametrize("given", ["", "x" * 129, "tab\there", "caf\u00e9"])
def test_a_request_id_that_cannot_be_echoed_is_replaced(
    build: Callable[..., RequestContext], given: str
) -> None:
    ctx = build({"x-request-id": given})
    assert ctx.request_id != given and ctx.request_id.isascii() and ctx.request_id.isprintable()


@BOTH
def test_generated_request_ids_differ(build: Callable[..., RequestContext]) -> None:
    assert build({}).request_id != build({}).request_id


@BOTH
@pytest.mark.parametrize(
    "headers, key",
    [
        ({"authorization": "Bearer sk-1 "}, "sk-1"),
        ({"authorization": "bEaReR sk-1"}, "sk-1"),
        ({"x-api-key": "sk-2"}, "sk-2"),
        ({"authorization": "Bearer sk-1", "x-api-key": "sk-2"}, "sk-1"),  # Bearer wins
        ({"authorization": "Basic abc", "x-api-key": "sk-2"}, "sk-2"),
        ({"authorization": "Basic abc"}, None),
        ({}, None),
    ],
)
def test_the_api_key_comes_from_bearer_authorization_else_x_api_key(
    build: Callable[..., RequestContext], headers: dict[str, str], key: str | None
) -> None:
    assert build(headers).api_key == key


@BOTH
@pytest.mark.parametrize(
    "value, bypass",
    [("no-cache", True), ("max-age=0, No-Cache", True), ("max-age=0", False), ("", False)],
)
def test_cache_control_no_cache_bypasses_the_cache(
    build: Callable[..., RequestContext], value: str, bypass: bool
) -> None:
    assert build({"cache-control": value}).no_cache is bypass
    assert build({}).no_cache is False


@pytest.mark.parametrize("build", [http_here, grpc_here], ids=["http", "grpc"])
def test_the_context_is_the_one_log_lines_carry(build: Callable[..., RequestContext]) -> None:
    def run() -> tuple[RequestContext, Any]:
        return build({"x-request-id": "logged"}), CURRENT_REQUEST.get()

    ctx, current = contextvars.Context().run(run)
    assert current is ctx and ctx.request_id == "logged"


def test_http_takes_its_deadline_from_x_request_timeout_ms() -> None:
    before = time.monotonic()
    ctx = http({"x-request-timeout-ms": "2500"})
    assert ctx.deadline is not None
    assert before + 2.5 <= ctx.deadline <= time.monotonic() + 2.5
    assert http({}).deadline is None
    assert http({"x-request-timeout-ms": "0.5"}).deadline is not None


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan", "", "1e999"])
def test_a_bad_timeout_header_is_a_400_naming_the_header_and_the_value(value: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        http({"x-request-timeout-ms": value})
    assert refused.value.kind is ErrorKind.INVALID_INPUT
    assert refused.value.message == (
        f"header x-request-timeout-ms: expected a positive number of milliseconds, got {value!r}"
    )


def test_grpc_takes_its_deadline_from_the_call_and_ignores_the_timeout_header() -> None:
    before = time.monotonic()
    ctx = grpc_call({"x-request-timeout-ms": "soon"}, remaining_s=1.5)
    assert ctx.deadline is not None
    assert before + 1.5 <= ctx.deadline <= time.monotonic() + 1.5
    # HTTP only (docs/contracts.md#headers): neither a deadline nor a refusal on gRPC.
    assert grpc_call({"x-request-timeout-ms": "100"}).deadline is None


def test_only_http_keeps_its_headers_for_sticky_routes() -> None:
    # A route's sticky header is HTTP only; gRPC calls get a weighted pick.
    assert http({"x-user-id": "u1"}).headers == {b"x-user-id": b"u1"}
    assert grpc_call({"x-user-id": "u1"}).headers is None


def test_the_protocol_is_the_transports() -> None:
    assert http({}).protocol == "v2_http"
    assert grpc_call({}).protocol == "v2_grpc"


def test_a_refused_requests_context_still_has_its_id() -> None:
    headers = {b"x-request-id": b"req-7", b"x-request-timeout-ms": b"soon"}
    with pytest.raises(InvalidInput):
        request_context(headers, "openai")
    ctx = id_only_context(headers, "openai")
    assert (ctx.request_id, ctx.protocol, ctx.deadline) == ("req-7", "openai", None)


# -- 405 -------------------------------------------------------------------------------------------


def test_405_in_the_v2_shape_names_the_method_the_path_and_what_to_use() -> None:
    status, body, headers = method_not_allowed("GET", "/v2/models/m/infer", "POST", openai=False)
    assert status == 405
    assert orjson.loads(body) == {"error": "method GET not allowed on /v2/models/m/infer: use POST"}
    assert headers == [(b"allow", b"POST")]


def test_405_in_the_openai_shape() -> None:
    status, body, headers = method_not_allowed("GET", "/v1/embeddings", "POST", openai=True)
    assert status == 405
    assert orjson.loads(body) == {
        "error": {
            "message": "method GET not allowed on /v1/embeddings: use POST",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert headers == [(b"allow", b"POST")]


# -- a bug -----------------------------------------------------------------------------------------


def _bug() -> ValueError:
    try:
        raise ValueError("secret internals")
    except ValueError as exc:
        return exc


@pytest.mark.parametrize("openai", [False, True])
def test_a_bug_on_http_is_logged_and_answered_500_without_internals(
    openai: bool, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = RequestContext(request_id="req-9", protocol="openai" if openai else "v2_http")
    with caplog.at_level(logging.ERROR, logger="gateway.api"):
        status, body, headers = http_internal_error(_bug(), ctx, openai=openai)
    assert status == 500
    assert headers == [(b"x-request-id", b"req-9")]  # and nothing else (docs/contracts.md)
    message = "internal error (request id req-9); this is a gateway bug"
    if openai:
        assert orjson.loads(body) == {
            "error": {"message": message, "type": "server_error", "param": None, "code": None}
        }
    else:
        assert orjson.loads(body) == {"error": message}
    assert b"secret" not in body
    [record] = caplog.records
    assert record.exc_info is not None and "req-9" in record.getMessage()


def test_a_bug_before_the_context_exists_is_answered_with_a_placeholder_id() -> None:
    status, body, headers = http_internal_error(_bug(), None, openai=False)
    assert status == 500 and headers == [(b"x-request-id", b"-")]
    assert b"request id -" in body


def test_a_bug_on_grpc_is_logged_and_answered_internal_without_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.api"):
        code, message = grpc_internal_error(_bug(), "req-3")
    assert code is grpc.StatusCode.INTERNAL
    assert message == "internal error (request id req-3); this is a gateway bug"
    [record] = caplog.records
    assert record.exc_info is not None


# -- the disconnect watch --------------------------------------------------------------------------


class Client:
    """An ASGI `receive` after the body: blocks until the client disconnects, and
    may first hand out `extra` messages that are not a disconnect."""

    def __init__(self, extra: int = 0) -> None:
        self.gone = asyncio.Event()
        self.extra = extra
        self.reads = 0

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        if self.extra:
            self.extra -= 1
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}


def test_work_finishes_while_the_client_stays() -> None:
    async def scenario() -> tuple[int | None, int]:
        client = Client()

        async def work() -> int:
            await asyncio.sleep(0.01)
            return 7

        result = await while_connected(client.receive, work(), "req")
        await asyncio.sleep(0)  # the watcher was cancelled, not left reading
        return result, len(asyncio.all_tasks())

    assert asyncio.run(scenario()) == (7, 1)


def test_work_answered_at_once_needs_no_watcher_turn() -> None:
    async def scenario() -> tuple[str | None, int]:
        client = Client()

        async def cached() -> str:
            return "hit"

        return await while_connected(client.receive, cached(), "req"), client.reads

    assert asyncio.run(scenario()) == ("hit", 0)


@pytest.mark.parametrize("extra", [0, 2])
def test_a_disconnect_cancels_the_work_and_answers_none(extra: int) -> None:
    events: list[str] = []

    async def scenario() -> int | None:
        client = Client(extra)

        async def work() -> int:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                events.append("work cancelled")
                raise
            return 1

        async def on_cancel() -> None:
            events.append("on_cancel")

        asyncio.get_running_loop().call_later(0.01, client.gone.set)
        result = await while_connected(client.receive, work(), "req", on_cancel=on_cancel)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the task goes on, uncancelled
        await asyncio.sleep(0)  # and can still await
        return result

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) is None
    assert events == ["work cancelled", "on_cancel"]


def test_a_cancellation_that_is_no_disconnect_propagates() -> None:
    async def scenario() -> None:
        client = Client()
        before = len(asyncio.all_tasks())

        async def served() -> int | None:
            return await while_connected(client.receive, asyncio.sleep(30, 1), "req")

        task = asyncio.get_running_loop().create_task(served())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == before  # the watcher went with it

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_errors_of_the_work_propagate() -> None:
    async def scenario() -> None:
        async def broken() -> int:
            raise InvalidInput("bad")

        with pytest.raises(InvalidInput):
            await while_connected(Client().receive, broken(), "req")

    asyncio.run(scenario())
