"""The one inference pipeline that every transport calls.

Sequence per request: find the model → validate inputs against its signature
→ choose outputs → ask the route for a plan → for each attempt: call the
backend within the deadline, validate its outputs → answer. Transports only
decode and encode; they never skip or repeat a step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from gateway.core.errors import (
    BackendFailed,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    NotFound,
    Overloaded,
)
from gateway.core.auth import Tenants
from gateway.core.llm import (
    ChatBackend,
    ChatRequest,
    ChatResult,
    ChatStream,
    EmbeddingBackend,
    EmbeddingResult,
    Price,
    Usage,
)
from gateway.core.signature import Signature
from gateway.core.types import InferRequest, InferResponse, RequestContext
from gateway.observe.metrics import COST, TOKENS
from gateway.routing.router import Attempt, Route

T = TypeVar("T")

log = logging.getLogger("gateway.service")

# Failures after which the next backend of the plan is tried. Invalid input
# never falls back: every backend would refuse it alike.
_FALLBACK_ON = (BackendFailed, Overloaded)


@dataclass(frozen=True)
class ModelEntry:
    """A served model: its name, version, kind, signature and route."""

    name: str
    version: str
    kind: str
    signature: Signature | None
    route: Route
    description: str = ""
    # Per backend name: its prices (vendor backends), for cost accounting.
    prices: dict[str, Price] = field(default_factory=dict)

    def ready(self) -> bool:
        return any(b.ready() for b in self.route.backends)


class InferenceService:
    def __init__(self, models: dict[str, ModelEntry], tenants: Tenants | None = None) -> None:
        self.models = models
        self.tenants = tenants or Tenants({})

    def model(self, name: str, version: str | None = None) -> ModelEntry:
        """The model called `name` (at `version`, if given), or NotFound."""
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}' (served: {sorted(self.models)})")
        if version is not None and version != entry.version:
            raise NotFound(
                f"model '{name}' has no version '{version}' (available: {entry.version})"
            )
        return entry

    def ready(self) -> bool:
        return all(m.ready() for m in self.models.values())

    def admit(self, name: str, ctx: RequestContext, version: str | None = None) -> ModelEntry:
        """The model, once the caller is known and allowed to use it."""
        if self.tenants.enabled:
            ctx.tenant = self.tenants.authorize(ctx.api_key, name)
        return self.model(name, version)

    def models_for(self, ctx: RequestContext) -> list[ModelEntry]:
        """The models this caller may use."""
        if not self.tenants.enabled:
            return list(self.models.values())
        tenant = self.tenants.identify(ctx.api_key)
        return [m for m in self.models.values() if tenant is None or tenant.may_use(m.name)]

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        entry = self.admit(request.model, ctx, request.version)
        signature = entry.signature
        if signature is None:
            raise InvalidInput(
                f"model '{entry.name}' is of kind '{entry.kind}' and takes no tensor requests"
            )
        batch = signature.validate_inputs(request.inputs)
        wanted = self._output_names(signature, request)
        outputs = await self._run_plan(entry, signature, request.inputs, wanted, batch, ctx)
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
        last_error: GatewayError | None = None
        all_overloaded = True
        for attempt in entry.route.plan():
            backend = attempt.backend
            remaining = ctx.remaining_s()
            timeout = attempt.timeout_s if remaining is None else min(remaining, attempt.timeout_s)
            if timeout <= 0:
                raise DeadlineExceeded(
                    f"deadline exceeded before model '{entry.name}' could be served"
                )
            ctx.attempts += 1
            ctx.backend = backend.name
            started = time.perf_counter()
            try:
                outputs = await backend.infer(inputs, wanted, timeout)
            except _FALLBACK_ON as exc:
                # Not logged per request: under overload that would flood the log;
                # the metrics count sheds and failures.
                last_error = exc
                all_overloaded = all_overloaded and isinstance(exc, Overloaded)
                continue
            finally:
                ctx.backend_wait_s += time.perf_counter() - started
            try:
                signature.validate_outputs(outputs, batch, backend.name)
            except BackendFailed as exc:
                last_error = exc
                all_overloaded = False
                log.error("model %s: %s", entry.name, exc)
                continue
            return {name: outputs[name] for name in wanted}
        assert last_error is not None
        if ctx.attempts == 1:
            raise last_error
        if all_overloaded:
            raise Overloaded(
                f"every backend of model '{entry.name}' is overloaded", retry_after_s=1.0
            )
        raise BackendFailed(
            f"every backend of model '{entry.name}' failed; last: {last_error.message}"
        )

    # -- chat and embeddings -------------------------------------------------------

    async def chat(self, model: str, request: ChatRequest, ctx: RequestContext) -> ChatResult:
        entry = self._entry_of_kind(model, "chat", ctx)

        async def call(backend: Any, timeout: float) -> ChatResult:
            return await backend.chat(request, timeout)

        result = await self._first_success(entry, ctx, call)
        self._account(entry, ctx, result.usage)
        return result

    async def chat_stream(self, model: str, request: ChatRequest,
                          ctx: RequestContext) -> ChatStream:
        """A stream from the first backend that accepts the request. Falling back
        is only possible until then: once chunks flow, the caller has them."""
        entry = self._entry_of_kind(model, "chat", ctx)

        async def call(backend: Any, timeout: float) -> ChatStream:
            return await backend.chat_stream(request, timeout)

        return await self._first_success(entry, ctx, call)

    def finish_stream(self, model: str, stream: ChatStream, ctx: RequestContext) -> None:
        """Tokens and cost of a stream once it ended (or broke: what was used, counts)."""
        self._account(self.models[model], ctx, stream.usage)

    async def embed(self, model: str, texts: list[str], ctx: RequestContext) -> EmbeddingResult:
        entry = self._entry_of_kind(model, "embeddings", ctx)

        async def call(backend: Any, timeout: float) -> EmbeddingResult:
            return await backend.embed(texts, timeout)

        result = await self._first_success(entry, ctx, call)
        self._account(entry, ctx, result.usage)
        return result

    def _entry_of_kind(self, name: str, kind: str, ctx: RequestContext) -> ModelEntry:
        entry = self.admit(name, ctx)
        if entry.kind != kind:
            served_by = {"chat": "/v1/chat/completions", "embeddings": "/v1/embeddings",
                         "tensor": "/v2/models/{model}/infer"}[entry.kind]
            raise InvalidInput(f"model '{name}' is of kind '{entry.kind}', not '{kind}': "
                               f"call it on {served_by}")
        return entry

    async def _first_success(self, entry: ModelEntry, ctx: RequestContext,
                             call: Callable[[Any, float], Awaitable[T]]) -> T:
        """Try the plan's backends in order until one answers (same fallback rules
        as tensor inference: overload and backend failures move on)."""
        last_error: GatewayError | None = None
        all_overloaded = True
        for attempt in entry.route.plan():
            timeout = self._attempt_timeout(entry, attempt, ctx)
            ctx.backend = attempt.backend.name
            started = time.perf_counter()
            try:
                result = await call(attempt.backend, timeout)
            except _FALLBACK_ON as exc:
                ctx.attempts += 1
                last_error = exc
                all_overloaded = all_overloaded and isinstance(exc, Overloaded)
                log.warning("model %s: backend %s: %s", entry.name, attempt.backend.name,
                            exc.message)
                continue
            finally:
                ctx.backend_wait_s += time.perf_counter() - started
            ctx.attempts += getattr(result, "tries", 1)
            return result
        assert last_error is not None
        if ctx.attempts == 1:
            raise last_error
        if all_overloaded:
            raise Overloaded(f"every backend of model '{entry.name}' is overloaded",
                             retry_after_s=last_error.retry_after_s or 1.0)
        raise BackendFailed(
            f"every backend of model '{entry.name}' failed; last: {last_error.message}")

    @staticmethod
    def _attempt_timeout(entry: ModelEntry, attempt: Attempt, ctx: RequestContext) -> float:
        remaining = ctx.remaining_s()
        timeout = attempt.timeout_s if remaining is None else min(remaining, attempt.timeout_s)
        if timeout <= 0:
            raise DeadlineExceeded(f"deadline exceeded before model '{entry.name}' could be served")
        return timeout

    @staticmethod
    def _account(entry: ModelEntry, ctx: RequestContext, usage: Usage | None) -> None:
        backend = ctx.backend or ""
        if usage is not None:
            TOKENS.labels(entry.name, backend, "input").inc(usage.prompt_tokens)
            TOKENS.labels(entry.name, backend, "output").inc(usage.completion_tokens)
        price = entry.prices.get(backend)
        if price is not None:
            cost = price.of(usage)
            ctx.cost_usd = cost
            COST.labels(entry.name, backend, ctx.tenant or "").inc(cost)
