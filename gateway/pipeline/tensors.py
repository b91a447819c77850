"""The tensor entry's own steps: policies on the request, validation against
the signature, the in-process cache's fast lane, then (in `InferCall.run`)
the rate limit, the cache and the route's plan, with each backend's outputs
checked against the signature and shadow traffic mirrored.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from gateway.admission.queue import QueuedBackend
from gateway.core.errors import GatewayError, InvalidInput
from gateway.core.signature import Signature
from gateway.core.types import InferRequest, InferResponse, RequestContext
from gateway.observe import tracing
from gateway.pipeline.entry import ModelEntry
from gateway.pipeline.plan import mirror, run_plan
from gateway.pipeline.steps import PipelineSteps
from gateway.policies.base import apply_request, apply_response
from gateway.routing.cache import count_local_hit
from gateway.routing.cache_codecs import TENSORS, tensor_key


class InferCall:
    """One tensor request, admitted and checked: `answer` is set when the
    in-process cache tier had it; otherwise `run()` serves it."""

    __slots__ = (
        "answer",
        "batch",
        "ctx",
        "entry",
        "key",
        "request",
        "signature",
        "steps",
        "wanted",
    )

    def __init__(
        self,
        steps: PipelineSteps,
        entry: ModelEntry,
        signature: Signature,
        request: InferRequest,
        batch: int | None,
        wanted: list[str],
        ctx: RequestContext,
    ) -> None:
        self.steps = steps
        self.entry = entry
        self.signature = signature
        self.request = request
        self.batch = batch
        self.wanted = wanted
        self.ctx = ctx
        self.key: bytes | None = None  # the cache key, once computed
        self.answer: InferResponse | None = None

    async def run(self) -> InferResponse:
        steps, entry, ctx = self.steps, self.entry, self.ctx
        await steps.rate_limit(ctx)
        cached = steps.cache_for(entry, ctx)
        if cached is None:
            outputs = await self._run_plan()
        else:
            cache, ttl_s = cached
            key = self.key or tensor_key(entry.cache_scope(ctx), self.request.inputs, self.wanted)
            outputs, ctx.cache = await cache.fetch(
                entry.name, key, ttl_s, TENSORS, self._run_plan, ctx.remaining_s()
            )
        return respond(entry, self.request, outputs, ctx)

    async def _run_plan(self) -> dict[str, np.ndarray]:
        entry = self.entry
        outputs = await run_plan(entry, self.ctx, self._caller(self.ctx))
        shadow = entry.route.shadow
        if shadow is not None and self.steps.rng.random() < shadow.fraction:
            # Without the request's context: the shadow's execution is not its answer's.
            mirror(entry, shadow, self._caller(None), outputs, self.steps.background)
        return outputs

    def _caller(
        self, ctx: RequestContext | None
    ) -> Callable[[Any, float], Awaitable[dict[str, np.ndarray]]]:
        """How the plan calls a backend; with `ctx`, admission leaves the measures
        of the execution that answered in it (the model's statistics)."""
        inputs, wanted, batch, signature = (
            self.request.inputs,
            self.wanted,
            self.batch,
            self.signature,
        )

        async def call(backend: Any, deadline: float) -> dict[str, np.ndarray]:
            if ctx is not None and isinstance(backend, QueuedBackend):
                outputs = await backend.infer(inputs, wanted, deadline, ctx)
            else:
                outputs = await backend.infer(inputs, wanted, deadline)
            # A backend that breaks the signature failed: the next one may not.
            signature.validate_outputs(outputs, batch, backend.name, wanted)
            return {name: outputs[name] for name in wanted}

        return call


def prepare(steps: PipelineSteps, request: InferRequest, ctx: RequestContext) -> InferCall:
    """Admit, apply the request policies, validate; look in the in-process cache
    tier when nothing asynchronous must happen first (a tenant's rate limit
    talks to Redis) and no trace is being recorded."""
    entry = steps.admit(request.model, ctx, request.version)
    signature = entry.signature
    if signature is None or entry.kind != "tensor":  # an embeddings model has one too
        raise InvalidInput(
            f"model '{entry.name}' is of kind '{entry.kind}' and takes no tensor requests"
        )
    if entry.policies:
        request = apply_request(entry.policies, request, ctx)
    started_ns = time.time_ns() if tracing.ENABLED else 0
    try:
        batch = signature.validate_inputs(request.inputs)
        wanted = output_names(signature, request)
    except GatewayError as exc:
        if started_ns:
            tracing.step(ctx, "validate", started_ns, exc)
        raise
    if started_ns:
        tracing.step(ctx, "validate", started_ns)
    call = InferCall(steps, entry, signature, request, batch, wanted, ctx)
    cache = steps.cache
    if (
        entry.cache_ttl_s is None
        or cache is None
        or ctx.no_cache
        or tracing.ENABLED
        or (steps.ratelimit is not None and steps.tenants.enabled)
    ):
        return call
    call.key = key = tensor_key(entry.cache_scope(ctx), request.inputs, wanted)
    outputs = cache.local.get(key)
    if outputs is not None:
        count_local_hit(entry.name)
        ctx.cache = "hit"
        call.answer = respond(entry, request, outputs, ctx)
    return call


def respond(
    entry: ModelEntry, request: InferRequest, outputs: dict[str, np.ndarray], ctx: RequestContext
) -> InferResponse:
    response = InferResponse(
        model=entry.name, version=entry.version, outputs=outputs, id=request.id
    )
    if entry.policies:
        response = apply_response(entry.policies, response, ctx)
    return response


def output_names(signature: Signature, request: InferRequest) -> list[str]:
    if request.outputs is None:
        return signature.output_names
    names = []
    for out in request.outputs:
        if signature.output(out.name) is None:
            raise InvalidInput(
                f"unknown output '{out.name}': model '{request.model}' has outputs "
                f"{signature.output_names}"
            )
        if out.name in names:
            raise InvalidInput(f"output '{out.name}' is requested twice")
        names.append(out.name)
    return names
