"""Request and response policies: the hook point of the pipeline.

A model's `policies:` form an ordered chain (docs/configuration.md). Before
routing, each policy in order sees the request and may return a changed one
or refuse it by raising a `GatewayError` (its kind is the caller's status:
`invalid_input` 400, `forbidden` 403...). After the answer, each policy in
reverse order (the first one sees the final answer, as in MLServer's
middlewares and Envoy's filters) may return a changed response, or a
changed chunk of a stream; when a stream ends without the caller or an
error cutting it short, each may add chunks of its own (what it still held
back). A policy notes what it did with `ctx.note_policy`,
and the audit record lists those notes (never the content it acted on).

A hook returns a new object rather than changing the one it was given: a
response may be the cache's own copy, shared by every caller that hits it.
Hooks are synchronous: they run on the event loop, inline on the request
path (the in-process cache's fast lane included), so a policy does CPU work
only, bounded by the request's size. A policy type is one module that
registers itself (policies/registry.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

from gateway.core.llm import ChatRequest, ChatResult, EmbeddingRequest, EmbeddingResult
from gateway.core.types import InferRequest, InferResponse, RequestContext

# What a policy may see and return, by the model's kind.
Request = InferRequest | ChatRequest | EmbeddingRequest
Response = InferResponse | ChatResult | EmbeddingResult


class Policy:
    """Base of every policy: each hook passes its argument through unchanged."""

    # The model kinds this policy applies to (a model of another kind refuses it at load).
    kinds: ClassVar[frozenset[str]] = frozenset({"tensor", "chat", "embeddings"})

    def __init__(self, name: str) -> None:
        self.name = name

    def on_request(self, request: Any, ctx: RequestContext) -> Any:
        """The request as the next policy (then routing) sees it; raise to refuse."""
        return request

    def on_response(self, response: Any, ctx: RequestContext) -> Any:
        """The response as the previous policy (then the caller) sees it."""
        return response

    def on_chunk(self, chunk: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        """One chunk of a chat stream (OpenAI's chat.completion.chunk shape)."""
        return chunk

    def on_stream_end(self, ctx: RequestContext) -> list[dict[str, Any]]:
        """Chunks to send after the last one, once the vendor's stream ended.

        Not called when the caller left or the stream failed. A vendor may end
        a stream without a choice's `finish_reason` chunk: a policy holding
        text back until that chunk releases it here instead.
        """
        return []


def apply_request(policies: tuple[Policy, ...], request: Any, ctx: RequestContext) -> Any:
    for policy in policies:
        request = policy.on_request(request, ctx)
    return request


def apply_response(policies: tuple[Policy, ...], response: Any, ctx: RequestContext) -> Any:
    for policy in reversed(policies):
        response = policy.on_response(response, ctx)
    return response


def apply_chunk(
    policies: tuple[Policy, ...], chunk: dict[str, Any], ctx: RequestContext
) -> dict[str, Any]:
    for policy in reversed(policies):
        chunk = policy.on_chunk(chunk, ctx)
    return chunk


def apply_stream_end(policies: tuple[Policy, ...], ctx: RequestContext) -> list[dict[str, Any]]:
    """The chunks the policies add at the end of a stream, in chunk-hook order:
    to each policy, the chunks added by those that ran before it are more
    chunks of the stream (through its `on_chunk`) before its own end."""
    chunks: list[dict[str, Any]] = []
    for policy in reversed(policies):
        if chunks:
            chunks = [policy.on_chunk(chunk, ctx) for chunk in chunks]
        chunks.extend(policy.on_stream_end(ctx))
    return chunks
