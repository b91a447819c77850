"""The policies' end-of-stream hook in process: called once a vendor stream
ran to its end (never when the caller closed it early or it failed), in the
chunk hooks' order, each policy's extra chunks passing the later ones' chunk
hook; and through the pipeline, a `pii` stream that ends without any
`finish_reason` chunk still delivers all of its text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from gateway.core.errors import BackendFailed
from gateway.core.llm import ChatRequest, ChatResult, EndingStream, Usage
from gateway.core.types import RequestContext
from gateway.pipeline.entry import ModelEntry
from gateway.pipeline.service import InferenceService
from gateway.policies.base import Policy, apply_chunk, apply_stream_end
from gateway.policies.pii import Pii, PiiConfig
from gateway.routing.router import Attempt, Route


def _ctx() -> RequestContext:
    return RequestContext(request_id="r", protocol="test", model="m")


def _chunk(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 3,
        "model": "vendor-model",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }


def _content(chunk: dict[str, Any]) -> str:
    content: str = chunk["choices"][0]["delta"].get("content") or ""
    return content


class Mark(Policy):
    """Appends `|name` to each chunk's content and, at the end of a stream,
    adds a chunk `end:name`; logs each call."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(name)
        self.log = log

    def on_chunk(self, chunk: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        self.log.append(f"chunk:{self.name}:{_content(chunk)}")
        return _chunk(_content(chunk) + "|" + self.name)

    def on_stream_end(self, ctx: RequestContext) -> list[dict[str, Any]]:
        self.log.append(f"end:{self.name}")
        return [_chunk(f"end:{self.name}")]


def test_end_hooks_run_in_chunk_order_and_pass_the_later_policies_chunk_hooks() -> None:
    log: list[str] = []
    policies = (Mark("a", log), Policy("plain"), Mark("b", log))
    ctx = _ctx()
    assert _content(apply_chunk(policies, _chunk("x"), ctx)) == "x|b|a"
    log.clear()
    # `b` sees the stream first, so ends first; its chunk then reaches `a`
    # like any other chunk, before `a`'s own end.
    assert [_content(c) for c in apply_stream_end(policies, ctx)] == ["end:b|a", "end:a"]
    assert log == ["end:b", "chunk:a:end:b", "end:a"]


def test_the_base_policy_adds_nothing() -> None:
    assert apply_stream_end((Policy("plain"),), _ctx()) == []


class _Vendor:
    """A vendor stream of the given chunks (none with a finish_reason unless
    given), then a failure when `fail` is set."""

    def __init__(self, chunks: list[dict[str, Any]], fail: bool = False) -> None:
        self.chunks = chunks
        self.fail = fail
        self.tries = 1
        self.usage: Usage | None = None
        self.closed = 0

    async def __aiter__(self) -> AsyncGenerator[dict[str, Any], None]:
        for chunk in self.chunks:
            yield chunk
        if self.fail:
            raise BackendFailed("the vendor stream broke", reason="5xx")

    async def aclose(self) -> None:
        self.closed += 1


def _ending(vendor: _Vendor, ends: list[str]) -> EndingStream:
    def finish() -> list[dict[str, Any]]:
        ends.append("finish")
        return [_chunk("end")]

    return EndingStream(vendor, lambda: ends.append("on_end"), None, finish)


def test_the_finish_chunks_follow_a_stream_that_ran_to_its_end() -> None:
    ends: list[str] = []
    vendor = _Vendor([_chunk("a"), _chunk("b")])

    async def read() -> list[str]:
        return [_content(c) async for c in _ending(vendor, ends)]

    assert asyncio.run(read()) == ["a", "b", "end"]
    assert ends == ["finish", "on_end"] and vendor.closed == 1


def test_a_stream_the_caller_leaves_early_does_not_finish() -> None:
    ends: list[str] = []
    vendor = _Vendor([_chunk("a"), _chunk("b")])

    async def leave_after_one(stream: EndingStream) -> list[str]:
        seen = []
        chunks = stream.__aiter__()
        async for chunk in chunks:
            seen.append(_content(chunk))
            break
        await chunks.aclose()  # what the transport does when the caller goes away
        await stream.aclose()
        return seen

    assert asyncio.run(leave_after_one(_ending(vendor, ends))) == ["a"]
    assert ends == ["on_end"]


def test_a_stream_the_caller_closes_after_the_last_chunk_does_not_finish() -> None:
    """The upstream is exhausted only once asked for the next chunk: a caller
    closing right after the last one never gets (nor causes) the end chunks."""
    ends: list[str] = []
    vendor = _Vendor([_chunk("a")])

    async def read_one(stream: EndingStream) -> None:
        chunks = stream.__aiter__()
        await chunks.__anext__()
        await chunks.aclose()

    asyncio.run(read_one(_ending(vendor, ends)))
    assert ends == ["on_end"]


def test_a_failing_stream_does_not_finish() -> None:
    ends: list[str] = []
    vendor = _Vendor([_chunk("a")], fail=True)

    async def read() -> list[str]:
        return [_content(c) async for c in _ending(vendor, ends)]

    with pytest.raises(BackendFailed):
        asyncio.run(read())
    assert ends == ["on_end"]


# -- through the pipeline ------------------------------------------------------------------


class _Backend:
    """A chat backend whose stream is the chunks it was given (no finish_reason)."""

    name = "scripted"

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    async def chat(self, request: ChatRequest, deadline: float) -> ChatResult:
        raise AssertionError("streams only")

    async def chat_stream(self, request: ChatRequest, deadline: float) -> _Vendor:
        return _Vendor([_chunk(p) for p in self.pieces])


def _service(pieces: list[str], *policies: Policy, **pii: Any) -> InferenceService:
    if not policies:
        policies = (Pii(PiiConfig.model_validate({"type": "pii", **pii})),)
    entry = ModelEntry(
        name="m",
        version="1",
        kind="chat",
        signature=None,
        route=Route([Attempt(_Backend(pieces), 5.0)]),
        policies=policies,
    )
    return InferenceService({"m": entry})


def _streamed(
    service: InferenceService, text: str, leave_after: int | None = None
) -> list[dict[str, Any]]:
    """The chunks the caller reads, `leave_after` of them if given (then it
    closes the stream, as the transport does when the caller goes away)."""
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}

    async def read() -> list[dict[str, Any]]:
        stream = await service.chat_stream(ChatRequest("m", body, stream=True), _ctx())
        chunks = stream.__aiter__()
        seen: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                seen.append(chunk)
                if len(seen) == leave_after:
                    break
        finally:
            await chunks.aclose()
            await stream.aclose()
        return seen

    return asyncio.run(read())


def test_the_pipeline_ends_the_policies_of_a_stream_that_ran_to_its_end_only() -> None:
    log: list[str] = []
    service = _service(["x", "y"], Mark("a", log))
    assert [_content(c) for c in _streamed(service, "hi")] == ["x|a", "y|a", "end:a"]
    log.clear()
    assert [_content(c) for c in _streamed(service, "hi", leave_after=2)] == ["x|a", "y|a"]
    assert log == ["chunk:a:x", "chunk:a:y"]


def test_a_restored_stream_without_finish_reason_delivers_all_its_text() -> None:
    service = _service(["Sent to [EMAIL_1] and ", "[EMA"], action="mask", restore=True)
    chunks = _streamed(service, "mail ann@example.com")
    assert "".join(_content(c) for c in chunks) == "Sent to ann@example.com and [EMA"
    # The last chunk is the stream's own: same id, model and choice.
    assert {(c["id"], c["model"], c["choices"][0]["index"]) for c in chunks} == {
        ("chatcmpl-1", "vendor-model", 0)
    }


def test_a_masked_output_stream_without_finish_reason_delivers_all_its_text() -> None:
    service = _service(
        ["Call ", "(415) 555", "-0132 or mail ", "bob@example.org"], action="allow", outputs="mask"
    )
    chunks = _streamed(service, "hello")
    assert "".join(_content(c) for c in chunks) == "Call [PHONE_1] or mail [EMAIL_1]"
