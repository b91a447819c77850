"""The steps every request kind's entry shares (pipeline/service.py): the
state a config builds (models, tenants, cache, SLOs, audit, rate limits),
admitting a caller and a model, the tenant's rate limit, the cache lookup and
cost accounting. The kinds' own steps are in tensors.py and llm.py.
"""

from __future__ import annotations

import asyncio
import random

from gateway.core.auth import Tenants
from gateway.core.errors import InvalidInput, NotFound
from gateway.core.llm import Usage
from gateway.core.types import RequestContext
from gateway.observe import tracing
from gateway.observe.audit import AuditLog
from gateway.observe.metrics import COST, TOKENS, FastChildren, fast_inc
from gateway.observe.model_stats import ModelStats
from gateway.observe.slo import SloTracker
from gateway.pipeline.entry import ModelEntry
from gateway.routing.budget import Budgets
from gateway.routing.cache import CacheFetch, ResponseCache, count_bypass
from gateway.routing.ratelimit import RateLimiter

# Counted once per vendor answer: bound per label set (tenants are configured names).
_tokens = FastChildren(TOKENS, fast_inc)
_cost = FastChildren(COST, fast_inc)


class PipelineSteps:
    def __init__(
        self,
        models: dict[str, ModelEntry],
        tenants: Tenants | None = None,
        cache: ResponseCache | None = None,
        slo: SloTracker | None = None,
        audit: AuditLog | None = None,
        ratelimit: RateLimiter | None = None,
        budget: Budgets | None = None,
    ) -> None:
        self.models = models
        self.tenants = tenants or Tenants({})
        self.cache = cache
        self.slo = slo or SloTracker({})
        self.audit = audit
        self.ratelimit = ratelimit
        # One per process: a reload reconfigures it in place (runtime_shared.py).
        self.budget = budget
        # Per model: its statistics (Triton's extension), counted in observe().
        self.stats = {name: ModelStats() for name in models}
        # Set once on SIGTERM (gateway/uvicorn_stop.py): readiness fails from then on;
        # kept across reloads, which replace the contents, not this object.
        self.stopping = False
        self.rng = random.Random()
        self._observe_failures = 0
        # Shadow calls and token spending run detached; held here so they are not
        # collected mid-flight.
        self.background: set[asyncio.Task[None]] = set()

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

    def cache_for(self, entry: ModelEntry, ctx: RequestContext) -> tuple[CacheFetch, float] | None:
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

    async def entry_of_kind(self, name: str, kind: str, ctx: RequestContext) -> ModelEntry:
        entry = self.admit(name, ctx)
        await self.rate_limit(ctx)
        if entry.kind != kind:
            served_by = {
                "chat": "/v1/chat/completions",
                "embeddings": "/v1/embeddings",
                "tensor": "/v2/models/{model}/infer",
            }[entry.kind]
            raise InvalidInput(
                f"model '{name}' is of kind '{entry.kind}', not '{kind}': call it on {served_by}"
            )
        budget = self.budget
        if (
            budget is not None
            and ctx.tenant is not None
            and budget.limits(ctx.tenant) is not None
            and _priced(entry)
        ):
            await budget.admit(ctx.tenant)
        return entry

    async def rate_limit(self, ctx: RequestContext) -> None:
        """A tenant over its requests or tokens per minute gets 429 + Retry-After."""
        if self.ratelimit is not None and ctx.tenant is not None:
            await self.ratelimit.admit(ctx.tenant)

    def account(self, entry: ModelEntry, ctx: RequestContext, usage: Usage | None) -> None:
        backend = ctx.backend or ""
        if usage is not None:
            _tokens(entry.name, backend, "input")(usage.prompt_tokens)
            _tokens(entry.name, backend, "output")(usage.completion_tokens)
            if self.ratelimit is not None and ctx.tenant is not None and usage.total_tokens:
                # Off the caller's path: the answer is ready, the quota catches up.
                task = asyncio.get_running_loop().create_task(
                    self.ratelimit.spend_tokens(ctx.tenant, usage.total_tokens)
                )
                self.background.add(task)
                task.add_done_callback(self.background.discard)
        price = entry.prices.get(backend)
        if price is not None:
            cost = price.of(usage)
            ctx.cost_usd = cost
            _cost(entry.name, backend, ctx.tenant or "")(cost)
            budget = self.budget
            if (
                cost > 0.0
                and budget is not None
                and ctx.tenant is not None
                and budget.limits(ctx.tenant) is not None
            ):
                # Off the caller's path, like the tokens: the answer is ready.
                task = asyncio.get_running_loop().create_task(budget.charge(ctx.tenant, cost))
                self.background.add(task)
                task.add_done_callback(self.background.discard)


def _priced(entry: ModelEntry) -> bool:
    """Whether an answer of this model can cost anything (a spent budget refuses only those)."""
    return any(
        p.usd_per_request or p.usd_per_1k_input_tokens or p.usd_per_1k_output_tokens
        for p in entry.prices.values()
    )
