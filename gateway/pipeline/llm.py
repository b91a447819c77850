"""The chat and embeddings entries' own steps: policies on the request, the
response cache (chat answers only when deterministic, unless the model caches
sampled ones), the route's plan, tokens and cost, policies on the answer or
on each chunk of a stream.
"""

from __future__ import annotations

from typing import Any

from gateway.core.errors import BackendFailed
from gateway.core.llm import (
    ChatBackend,
    ChatRequest,
    ChatResult,
    ChatStream,
    EmbeddingBackend,
    EmbeddingRequest,
    EmbeddingResult,
    EndingStream,
    PrefetchedStream,
)
from gateway.core.types import RequestContext
from gateway.pipeline.entry import ModelEntry
from gateway.pipeline.plan import run_plan
from gateway.pipeline.steps import PipelineSteps
from gateway.policies.base import apply_chunk, apply_request, apply_response, apply_stream_end
from gateway.routing.cache_codecs import CHAT, EMBEDDINGS, json_key

# Fields that change how an answer is delivered or billed, not what it says.
_NOT_IN_CHAT_KEY = frozenset({"stream", "stream_options", "user", "metadata", "store"})


async def _admitted(
    steps: PipelineSteps, request: ChatRequest, ctx: RequestContext
) -> tuple[ModelEntry, ChatRequest]:
    """The chat model and the request as its policies leave it."""
    entry = await steps.entry_of_kind(request.model, "chat", ctx)
    if entry.policies:
        request = apply_request(entry.policies, request, ctx)
    if entry.audit_payload:
        ctx.audit_messages = request.body.get("messages")
    return entry, request


async def chat(steps: PipelineSteps, request: ChatRequest, ctx: RequestContext) -> ChatResult:
    entry, request = await _admitted(steps, request, ctx)

    async def call(backend: ChatBackend, deadline: float) -> ChatResult:
        return await backend.chat(request, deadline)

    async def compute() -> ChatResult:
        result = await run_plan(entry, ctx, call)
        steps.account(entry, ctx, result.usage)
        ctx.backend_model = result.body.get("model")  # the vendor's exact model version
        return result

    cached = steps.cache_for(entry, ctx)
    temperature = request.body.get("temperature", 1.0)  # OpenAI's default samples
    if cached is None or not (entry.cache_sampled or temperature == 0):
        if cached is not None:
            ctx.cache = "bypass"
        result = await compute()
    else:
        cache, ttl_s = cached
        key = json_key(entry.cache_scope(ctx), _chat_cache_document(request.body))
        result, ctx.cache = await cache.fetch(
            entry.name, key, ttl_s, CHAT, compute, ctx.remaining_s()
        )
        if ctx.cache == "hit":
            ctx.cost_usd = 0.0  # answered without a vendor call
    if entry.policies:
        result = apply_response(entry.policies, result, ctx)
    return result


async def chat_stream(
    steps: PipelineSteps, request: ChatRequest, ctx: RequestContext
) -> ChatStream:
    """Falling back is only possible until the first chunk: once chunks flow,
    the caller has them."""
    entry, request = await _admitted(steps, request, ctx)

    async def call(backend: ChatBackend, deadline: float) -> ChatStream:
        stream = await backend.chat_stream(request, deadline)
        # Wait for the first chunk before committing to this backend: until a
        # byte reaches the caller, a failing backend can still be replaced.
        return await PrefetchedStream.start(stream)

    # Never hedged: two live streams would both cost tokens.
    stream = await run_plan(entry, ctx, call, may_hedge=False)
    policies = entry.policies
    return EndingStream(
        stream,
        # What was used counts, however the stream ended.
        lambda: steps.account(entry, ctx, stream.usage),
        (lambda chunk: apply_chunk(policies, chunk, ctx)) if policies else None,
        (lambda: apply_stream_end(policies, ctx)) if policies else None,
    )


async def embed(
    steps: PipelineSteps, request: EmbeddingRequest, ctx: RequestContext
) -> EmbeddingResult:
    entry = await steps.entry_of_kind(request.model, "embeddings", ctx)
    if entry.policies:
        request = apply_request(entry.policies, request, ctx)
    texts, dimensions = request.texts, request.dimensions

    async def call(backend: EmbeddingBackend, deadline: float) -> EmbeddingResult:
        result = await backend.embed(texts, deadline, dimensions)
        if dimensions is not None and result.vectors.shape[1] != dimensions:
            raise BackendFailed(
                f"backend '{backend.name}' returned "
                f"{result.vectors.shape[1]} dimensions, {dimensions} were "
                "asked for",
                reason="bad_output",
            )
        return result

    async def compute() -> EmbeddingResult:
        result = await run_plan(entry, ctx, call)
        steps.account(entry, ctx, result.usage)
        return result

    cached = steps.cache_for(entry, ctx)
    if cached is None:
        result = await compute()
    else:
        cache, ttl_s = cached
        key = json_key(entry.cache_scope(ctx), [texts, dimensions])
        result, ctx.cache = await cache.fetch(
            entry.name, key, ttl_s, EMBEDDINGS, compute, ctx.remaining_s()
        )
        if ctx.cache == "hit":
            ctx.cost_usd = 0.0
    if entry.policies:
        result = apply_response(entry.policies, result, ctx)
    return result


def _chat_cache_document(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _NOT_IN_CHAT_KEY}
