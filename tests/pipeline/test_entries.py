"""The pipeline's entries in process: policies, the one deadline, the cache's
fast lane and stream accounting, with small in-process backends (real objects
keeping the backend protocols, not mocks of gateway code)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import pytest

from gateway.core.errors import BackendFailed, Forbidden, InvalidInput
from gateway.core.llm import (
    ChatRequest,
    ChatResult,
    EmbeddingRequest,
    EmbeddingResult,
    Price,
    Usage,
)
from gateway.core.signature import Signature, TensorSpec
from gateway.core.types import InferRequest, InferResponse, RequestContext
from gateway.observe.metrics import REGISTRY
from gateway.pipeline.entry import ModelEntry
from gateway.pipeline.service import InferenceService
from gateway.policies.base import Policy
from gateway.routing.cache import ResponseCache
from gateway.routing.router import Attempt, Route
from tests.fakes import LocalBackend

SIGNATURE = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 2)),),
    outputs=(TensorSpec("y", "FP32", (-1, 2)),),
    batched=True,
)


class Doubler(LocalBackend):
    """A tensor backend: y = 2x; remembers the deadlines it was given."""

    def __init__(self, name: str = "doubler", fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.deadlines: list[float | None] = []

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        self.deadlines.append(deadline)
        if self.fail:
            raise BackendFailed(f"backend '{self.name}' failed", reason="5xx")
        return {"y": inputs["x"] * 2}


class Chatter:
    """A chat backend answering with the last message's text, and a stream of
    one chunk per word."""

    name = "chatter"

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.closed = 0

    async def chat(self, request: ChatRequest, deadline: float) -> ChatResult:
        self.bodies.append(request.body)
        text = request.body["messages"][-1]["content"]
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        return ChatResult(body, Usage(3, 4))

    async def chat_stream(self, request: ChatRequest, deadline: float) -> Any:
        self.bodies.append(request.body)
        return _WordStream(request.body["messages"][-1]["content"], self)

    async def embed(
        self, texts: list[str], deadline: float, dimensions: int | None = None
    ) -> EmbeddingResult:
        return EmbeddingResult(np.ones((len(texts), 2), np.float32), Usage(len(texts), 0))


class _WordStream:
    def __init__(self, text: str, backend: Chatter) -> None:
        self.words = text.split()
        self.backend = backend
        self.tries = 1
        self.usage: Usage | None = None

    async def __aiter__(self) -> AsyncGenerator[dict[str, Any], None]:
        for word in self.words:
            yield {"choices": [{"index": 0, "delta": {"content": word}}]}
        self.usage = Usage(1, len(self.words))

    async def aclose(self) -> None:
        self.backend.closed += 1


class Tag(Policy):
    """Appends its name to a list on the request's way in and the answer's way out."""

    def __init__(self, name: str, log: list[str], refuse: bool = False) -> None:
        super().__init__(name)
        self.log = log
        self.refuse = refuse

    def on_request(self, request: Any, ctx: RequestContext) -> Any:
        self.log.append(f"request:{self.name}")
        if self.refuse:
            ctx.note_policy(self.name, "refused")
            raise Forbidden(f"policy {self.name} refuses")
        return request

    def on_response(self, response: Any, ctx: RequestContext) -> Any:
        self.log.append(f"response:{self.name}")
        return response

    def on_chunk(self, chunk: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        delta = chunk["choices"][0]["delta"]
        return {"choices": [{"index": 0, "delta": {"content": delta["content"].upper()}}]}


class Negate(Policy):
    """Changes the request's tensor (y = 2 * -x) and marks the response."""

    def on_request(self, request: InferRequest, ctx: RequestContext) -> InferRequest:
        ctx.note_policy(self.name, "negated")
        return InferRequest(
            request.model, request.version, {"x": -request.inputs["x"]}, request.outputs
        )

    def on_response(self, response: InferResponse, ctx: RequestContext) -> InferResponse:
        response.outputs = {k: v + 1 for k, v in response.outputs.items()}
        return response


def _entry(
    backend: Any,
    kind: str = "tensor",
    policies: tuple[Policy, ...] = (),
    timeout_s: float = 5.0,
    cache_ttl_s: float | None = None,
    extra: tuple[Any, ...] = (),
) -> ModelEntry:
    attempts = [Attempt(backend, timeout_s), *(Attempt(b, timeout_s) for b in extra)]
    return ModelEntry(
        name="m",
        version="1",
        kind=kind,
        signature=SIGNATURE if kind == "tensor" else None,
        route=Route(attempts),
        cache_ttl_s=cache_ttl_s,
        policies=policies,
    )


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"backend": "chatter", **labels}) or 0.0


def _ctx(deadline: float | None = None) -> RequestContext:
    return RequestContext(request_id="r", protocol="test", deadline=deadline)


def _tensor_request() -> InferRequest:
    return InferRequest("m", None, {"x": np.array([[1.0, 2.0]], np.float32)})


def test_request_policies_run_in_order_and_response_policies_in_reverse() -> None:
    log: list[str] = []
    chatter = Chatter()
    service = InferenceService({"m": _entry(chatter, "chat", (Tag("a", log), Tag("b", log)))})
    request = ChatRequest("m", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    result = asyncio.run(service.chat(request, _ctx()))
    assert log == ["request:a", "request:b", "response:b", "response:a"]
    assert result.body["choices"][0]["message"]["content"] == "hi"


def test_a_refusing_policy_stops_the_request_before_any_backend() -> None:
    log: list[str] = []
    chatter = Chatter()
    policies = (Tag("a", log, refuse=True), Tag("b", log))
    service = InferenceService({"m": _entry(chatter, "chat", policies)})
    ctx = _ctx()
    request = ChatRequest("m", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(Forbidden):
        asyncio.run(service.chat(request, ctx))
    assert log == ["request:a"]
    assert chatter.bodies == []
    assert ctx.policy_notes == [("a", "refused")]


def test_policies_change_what_the_backend_sees_and_what_the_caller_gets() -> None:
    backend = Doubler()
    service = InferenceService({"m": _entry(backend, policies=(Negate("negate"),))})
    ctx = _ctx()
    response = asyncio.run(service.infer(_tensor_request(), ctx))
    # the backend doubled the negated input; the response policy added one
    assert response.outputs["y"].tolist() == [[-1.0, -3.0]]
    assert ctx.policy_notes == [("negate", "negated")]


def test_each_stream_chunk_passes_the_policies_and_tokens_count_once() -> None:
    chatter = Chatter()
    log: list[str] = []
    entry = _entry(chatter, "chat", (Tag("upper", log),))
    entry = dataclasses.replace(entry, name="streamed", prices={"chatter": Price(0.0, 0.0, 1.0)})
    service = InferenceService({"streamed": entry})
    ctx = _ctx()
    tokens_before = _sample("gateway_tokens_total", model="streamed", direction="output")
    request = ChatRequest(
        "streamed",
        {"model": "streamed", "messages": [{"role": "user", "content": "one two"}]},
        stream=True,
    )

    async def scenario() -> list[str]:
        stream = await service.chat_stream(request, ctx)
        words = [c["choices"][0]["delta"]["content"] async for c in stream]
        await stream.aclose()  # a transport closes it again: counted once all the same
        return words

    assert asyncio.run(scenario()) == ["ONE", "TWO"]
    assert chatter.closed >= 1
    # two output tokens at $1 per thousand, counted once although closed twice
    assert _sample("gateway_tokens_total", model="streamed", direction="output") == (
        tokens_before + 2
    )
    assert ctx.cost_usd == pytest.approx(0.002)


def test_the_attempt_deadline_is_the_callers_when_it_comes_first() -> None:
    backend = Doubler()
    service = InferenceService({"m": _entry(backend, timeout_s=3600.0)})
    deadline = time.monotonic() + 60.0
    asyncio.run(service.infer(_tensor_request(), _ctx(deadline)))
    assert backend.deadlines == [deadline]  # the same value, not recomputed


def test_the_attempt_deadline_is_the_backends_timeout_when_that_comes_first() -> None:
    backend = Doubler()
    service = InferenceService({"m": _entry(backend, timeout_s=5.0)})
    before = time.monotonic()
    asyncio.run(service.infer(_tensor_request(), _ctx(before + 3600.0)))
    after = time.monotonic()
    (given,) = backend.deadlines
    assert given is not None and before + 5.0 <= given <= after + 5.0


def test_a_fallback_gets_its_own_deadline_within_the_callers() -> None:
    first, second = Doubler("first", fail=True), Doubler("second")
    service = InferenceService({"m": _entry(first, timeout_s=5.0, extra=(second,))})
    caller = time.monotonic() + 1.0
    ctx = _ctx(caller)
    response = asyncio.run(service.infer(_tensor_request(), ctx))
    assert response.outputs["y"].tolist() == [[2.0, 4.0]]
    assert first.deadlines == [caller] and second.deadlines == [caller]
    assert ctx.backend == "second"


def test_the_fast_lane_answers_a_cached_request_without_awaiting() -> None:
    backend = Doubler()
    cache = ResponseCache(max_bytes=1 << 20)
    service = InferenceService({"m": _entry(backend, cache_ttl_s=60.0)}, cache=cache)
    first = asyncio.run(service.infer(_tensor_request(), _ctx()))
    call = service.infer_call(_tensor_request(), _ctx())
    assert call.answer is not None
    assert call.answer.outputs["y"].tobytes() == first.outputs["y"].tobytes()
    assert len(backend.deadlines) == 1  # the second answer came from the cache


def test_tensor_policies_apply_to_cached_answers_too() -> None:
    backend = Doubler()
    cache = ResponseCache(max_bytes=1 << 20)
    entry = _entry(backend, policies=(Negate("negate"),), cache_ttl_s=60.0)
    service = InferenceService({"m": entry}, cache=cache)
    first = asyncio.run(service.infer(_tensor_request(), _ctx()))
    again = service.infer_call(_tensor_request(), _ctx()).answer
    assert again is not None
    assert first.outputs["y"].tolist() == again.outputs["y"].tolist() == [[-1.0, -3.0]]


def test_embeddings_take_a_typed_request() -> None:
    chatter = Chatter()
    service = InferenceService({"m": _entry(chatter, "embeddings")})
    result = asyncio.run(service.embed(EmbeddingRequest("m", ["a", "b"]), _ctx()))
    assert result.vectors.shape == (2, 2)


def test_a_model_of_another_kind_is_refused_by_each_entry() -> None:
    service = InferenceService({"m": _entry(Chatter(), "chat")})
    with pytest.raises(InvalidInput, match="of kind 'chat'"):
        asyncio.run(service.infer(_tensor_request(), _ctx()))
    with pytest.raises(InvalidInput, match="not 'embeddings'"):
        asyncio.run(service.embed(EmbeddingRequest("m", ["a"]), _ctx()))
