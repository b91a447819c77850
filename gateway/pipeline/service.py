"""The one inference pipeline that every transport calls.

Sequence per request: find the model → validate inputs against its signature
→ choose outputs → ask the route for a plan → for each attempt: call the
backend within the deadline, validate its outputs → answer. Transports only
decode and encode; they never skip or repeat a step.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, TypeVar

import numpy as np

from gateway.core.auth import Tenants
from gateway.core.errors import (
    BackendFailed,
    GatewayError,
    InvalidInput,
    NotFound,
)
from gateway.core.llm import (
    ChatBackend,
    ChatRequest,
    ChatResult,
    ChatStream,
    EmbeddingBackend,
    EmbeddingResult,
    PrefetchedStream,
    Usage,
)
from gateway.core.signature import Signature
from gateway.core.types import InferRequest, InferResponse, RequestContext
from gateway.observe import tracing
from gateway.observe.audit import AuditLog
from gateway.observe.metrics import COST, TOKENS, FastChildren, fast_inc
from gateway.observe.requests import observe_request
from gateway.observe.slo import SloTracker, availability_of
from gateway.pipeline.entry import ModelEntry
from gateway.pipeline.plan import mirror, run_plan
from gateway.routing.cache import CacheFetch, ResponseCache, count_bypass, count_local_hit
from gateway.routing.cache_codecs import CHAT, EMBEDDINGS, TENSORS, json_key, tensor_key
from gateway.routing.ratelimit import RateLimiter

T = TypeVar("T")

# Counted once per vendor answer: bound per label set (tenants are configured names).
_tokens = FastChildren(TOKENS, fast_inc)
_cost = FastChildren(COST, fast_inc)


log = logging.getLogger("gateway.service")


class InferenceService:
    def __init__(
        self,
        models: dict[str, ModelEntry],
        tenants: Tenants | None = None,
        cache: ResponseCache | None = None,
        slo: SloTracker | None = None,
        audit: AuditLog | None = None,
        ratelimit: RateLimiter | None = None,
    ) -> None:
        self.models = models
        self.tenants = tenants or Tenants({})
        self.cache = cache
        self.slo = slo or SloTracker({})
        self.audit = audit
        self.ratelimit = ratelimit
        self._rng = random.Random()
        self._observe_failures = 0
        # Shadow calls run detached; held here so they are not collected mid-flight.
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    def replace(self, other: InferenceService) -> None:
        """Serve `other`'s models and tenants from now on (a config reload).

        Two attribute stores on the event loop's thread: a request sees either
        the old or the new config, never a mix, and requests already running
        keep the model entries (and backends) they started with.
        """
        self.models = other.models
        self.tenants = other.tenants
        self.cache = other.cache
        self.slo = other.slo
        self.ratelimit = other.ratelimit
        self.audit = other.audit

    def observe(self, ctx: RequestContext, code: int) -> None:
        """The transport answered `code`: count the request (metrics, SLOs), end its
        trace span and write its audit record."""
        total = observe_request(ctx, code)
        if ctx.model is not None:
            self.slo.record(ctx.model, total, availability_of(code))
        if tracing.ENABLED or self.audit is not None:
            entry = self.models.get(ctx.model) if ctx.model is not None else None
            try:
                if tracing.ENABLED:
                    tracing.finish_request(ctx, code, entry.kind if entry else None)
                if self.audit is not None:
                    self.audit.record(
                        ctx,
                        code,
                        total,
                        entry.version if entry else None,
                        entry is not None and entry.audit_payload,
                    )
            except Exception:  # the answer stands; its trace or record is what is lost
                self._observe_failures += 1
                if self._observe_failures & (self._observe_failures - 1) == 0:  # 1, 2, 4...
                    log.exception(
                        "recording the trace or audit record of a request failed "
                        "(%d time(s) so far)",
                        self._observe_failures,
                    )

    def model(self, name: str, version: str | None = None) -> ModelEntry:
        """The model called `name` (at `version`, if given), or NotFound."""
        entry = self.models.get(name)
        if entry is None:
            # Names no model: the caller may not be allowed to know the others.
            raise NotFound(f"unknown model '{name}'")
        if version is not None and version != entry.version:
            raise NotFound(
                f"model '{name}' has no version '{version}' (available: {entry.version})"
            )
        return entry

    def ready(self) -> bool:
        return all(m.ready() for m in self.models.values())

    def admit(self, name: str, ctx: RequestContext, version: str | None = None) -> ModelEntry:
        """The model, once the caller is known and allowed to use it.

        Once per request: the transports admit early (an unknown model or key is
        refused before the body is read) and the pipeline's steps find it done.
        """
        if ctx.model == name:
            return self.model(name, version)
        if self.tenants.enabled:
            if ctx.tenant is None:
                # Known before the model is judged: a 403's audit record names the tenant.
                self.authenticate(ctx)
            ctx.tenant = self.tenants.authorize(ctx.api_key, name, ctx.tenant)
        entry = self.model(name, version)
        ctx.model = entry.name
        return entry

    def authenticate(self, ctx: RequestContext) -> None:
        """Who is calling, when tenants are configured: Unauthenticated for a
        missing or unknown key. Transports call it before they read the body;
        `admit` then only checks the model."""
        if self.tenants.enabled:
            tenant = self.tenants.identify(ctx.api_key)
            ctx.tenant = tenant.name if tenant is not None else None

    def models_for(self, ctx: RequestContext) -> list[ModelEntry]:
        """The models this caller may use."""
        if not self.tenants.enabled:
            return list(self.models.values())
        tenant = self.tenants.identify(ctx.api_key)
        return [m for m in self.models.values() if tenant is None or tenant.may_use(m.name)]

    def cached_answer(self, request: InferRequest, ctx: RequestContext) -> InferResponse | None:
        """The answer from the in-process cache tier, found without awaiting
        anything (so the transport need not set up the rest of the request), or
        None: then `infer` goes on from what was checked here.

        Only when nothing asynchronous must happen first (tenant rate limits
        talk to Redis) and no trace is being recorded.
        """
        entry = self.models.get(request.model)
        if (
            entry is None
            or entry.cache_ttl_s is None
            or self.cache is None
            or ctx.no_cache
            or entry.signature is None
            or entry.kind != "tensor"
            or tracing.ENABLED
            or (self.ratelimit is not None and self.tenants.enabled)
        ):
            return None
        entry = self.admit(request.model, ctx, request.version)
        signature = entry.signature
        assert signature is not None
        batch = signature.validate_inputs(request.inputs)
        wanted = self._output_names(signature, request)
        key = tensor_key(entry.cache_scope(ctx), request.inputs, wanted)
        outputs = self.cache.local.get(key)
        if outputs is None:
            ctx.prepared = (batch, wanted, key)
            return None
        count_local_hit(entry.name)
        ctx.cache = "hit"
        return InferResponse(
            model=entry.name, version=entry.version, outputs=outputs, id=request.id
        )

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        entry = self.admit(request.model, ctx, request.version)
        await self._rate_limit(ctx)
        signature = entry.signature
        if signature is None or entry.kind != "tensor":  # an embeddings model has one too
            raise InvalidInput(
                f"model '{entry.name}' is of kind '{entry.kind}' and takes no tensor requests"
            )
        prepared = ctx.prepared
        if prepared is not None:  # checked by cached_answer already
            batch, wanted, key = prepared
        else:
            started_ns = time.time_ns() if tracing.ENABLED else 0
            try:
                batch = signature.validate_inputs(request.inputs)
                wanted = self._output_names(signature, request)
            except GatewayError as exc:
                if started_ns:
                    tracing.step(ctx, "validate", started_ns, exc)
                raise
            if started_ns:
                tracing.step(ctx, "validate", started_ns)
            key = None
        cached = self._cache_for(entry, ctx)
        if cached is None:
            outputs = await self._run_plan(entry, signature, request.inputs, wanted, batch, ctx)
        else:
            cache, ttl_s = cached
            key = key or tensor_key(entry.cache_scope(ctx), request.inputs, wanted)
            outputs, ctx.cache = await cache.fetch(
                entry.name,
                key,
                ttl_s,
                TENSORS,
                lambda: self._run_plan(entry, signature, request.inputs, wanted, batch, ctx),
                ctx.remaining_s(),
            )
        return InferResponse(
            model=entry.name, version=entry.version, outputs=outputs, id=request.id
        )

    @staticmethod
    def _output_names(signature: Signature, request: InferRequest) -> list[str]:
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

    async def _run_plan(
        self,
        entry: ModelEntry,
        signature: Signature,
        inputs: dict[str, np.ndarray],
        wanted: list[str],
        batch: int | None,
        ctx: RequestContext,
    ) -> dict[str, np.ndarray]:
        async def call(backend: Any, deadline: float) -> dict[str, np.ndarray]:
            outputs = await backend.infer(inputs, wanted, deadline)
            # A backend that breaks the signature failed: the next one may not.
            signature.validate_outputs(outputs, batch, backend.name, wanted)
            return {name: outputs[name] for name in wanted}

        outputs = await run_plan(entry, ctx, call)
        shadow = entry.route.shadow
        if shadow is not None and self._rng.random() < shadow.fraction:
            mirror(entry, shadow, call, outputs, self._shadow_tasks)
        return outputs

    # -- chat and embeddings -------------------------------------------------------

    async def chat(self, model: str, request: ChatRequest, ctx: RequestContext) -> ChatResult:
        entry = await self._entry_of_kind(model, "chat", ctx)
        if entry.audit_payload:
            ctx.audit_messages = request.body.get("messages")

        async def call(backend: ChatBackend, deadline: float) -> ChatResult:
            return await backend.chat(request, deadline)

        async def compute() -> ChatResult:
            result = await run_plan(entry, ctx, call)
            self._account(entry, ctx, result.usage)
            ctx.backend_model = result.body.get("model")  # the vendor's exact model version
            return result

        cached = self._cache_for(entry, ctx)
        temperature = request.body.get("temperature", 1.0)  # OpenAI's default samples
        if cached is None or not (entry.cache_sampled or temperature == 0):
            if cached is not None:
                ctx.cache = "bypass"
            return await compute()
        cache, ttl_s = cached
        key = json_key(entry.cache_scope(ctx), _chat_cache_document(request.body))
        result, ctx.cache = await cache.fetch(
            entry.name,
            key,
            ttl_s,
            CHAT,
            compute,
            ctx.remaining_s(),
        )
        if ctx.cache == "hit":
            ctx.cost_usd = 0.0  # answered without a vendor call
        return result

    async def chat_stream(
        self, model: str, request: ChatRequest, ctx: RequestContext
    ) -> ChatStream:
        """A stream from the first backend that accepts the request. Falling back
        is only possible until then: once chunks flow, the caller has them."""
        entry = await self._entry_of_kind(model, "chat", ctx)
        if entry.audit_payload:
            ctx.audit_messages = request.body.get("messages")

        async def call(backend: ChatBackend, deadline: float) -> ChatStream:
            stream = await backend.chat_stream(request, deadline)
            # Wait for the first chunk before committing to this backend: until a
            # byte reaches the caller, a failing backend can still be replaced.
            return await PrefetchedStream.start(stream)

        # Never hedged: two live streams would both cost tokens.
        return await run_plan(entry, ctx, call, may_hedge=False)

    def finish_stream(self, model: str, stream: ChatStream, ctx: RequestContext) -> None:
        """Tokens and cost of a stream once it ended (or broke: what was used, counts)."""
        self._account(self.models[model], ctx, stream.usage)

    async def embed(
        self, model: str, texts: list[str], ctx: RequestContext, dimensions: int | None = None
    ) -> EmbeddingResult:
        entry = await self._entry_of_kind(model, "embeddings", ctx)

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
            self._account(entry, ctx, result.usage)
            return result

        cached = self._cache_for(entry, ctx)
        if cached is None:
            return await compute()
        cache, ttl_s = cached
        key = json_key(entry.cache_scope(ctx), [texts, dimensions])
        result, ctx.cache = await cache.fetch(
            entry.name,
            key,
            ttl_s,
            EMBEDDINGS,
            compute,
            ctx.remaining_s(),
        )
        if ctx.cache == "hit":
            ctx.cost_usd = 0.0
        return result

    def _cache_for(self, entry: ModelEntry, ctx: RequestContext) -> tuple[CacheFetch, float] | None:
        """The cache and the model's TTL, if this request may use the cache
        (x-gateway-cache says which way)."""
        ttl_s = entry.cache_ttl_s
        if ttl_s is None or self.cache is None:
            return None
        if ctx.no_cache:
            count_bypass(entry.name)
            return None
        if tracing.ENABLED:
            return tracing.CacheLookup(self.cache, ctx), ttl_s
        return self.cache, ttl_s

    async def _entry_of_kind(self, name: str, kind: str, ctx: RequestContext) -> ModelEntry:
        entry = self.admit(name, ctx)
        await self._rate_limit(ctx)
        if entry.kind != kind:
            served_by = {
                "chat": "/v1/chat/completions",
                "embeddings": "/v1/embeddings",
                "tensor": "/v2/models/{model}/infer",
            }[entry.kind]
            raise InvalidInput(
                f"model '{name}' is of kind '{entry.kind}', not '{kind}': call it on {served_by}"
            )
        return entry

    async def _rate_limit(self, ctx: RequestContext) -> None:
        """A tenant over its requests or tokens per minute gets 429 + Retry-After."""
        if self.ratelimit is not None and ctx.tenant is not None:
            await self.ratelimit.admit(ctx.tenant)

    def _account(self, entry: ModelEntry, ctx: RequestContext, usage: Usage | None) -> None:
        backend = ctx.backend or ""
        if usage is not None:
            _tokens(entry.name, backend, "input")(usage.prompt_tokens)
            _tokens(entry.name, backend, "output")(usage.completion_tokens)
            if self.ratelimit is not None and ctx.tenant is not None and usage.total_tokens:
                # Off the caller's path: the answer is ready, the quota catches up.
                task = asyncio.get_running_loop().create_task(
                    self.ratelimit.spend_tokens(ctx.tenant, usage.total_tokens)
                )
                self._shadow_tasks.add(task)
                task.add_done_callback(self._shadow_tasks.discard)
        price = entry.prices.get(backend)
        if price is not None:
            cost = price.of(usage)
            ctx.cost_usd = cost
            _cost(entry.name, backend, ctx.tenant or "")(cost)


# Fields that change how an answer is delivered or billed, not what it says.
_NOT_IN_CHAT_KEY = frozenset({"stream", "stream_options", "user", "metadata", "store"})


def _chat_cache_document(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _NOT_IN_CHAT_KEY}
