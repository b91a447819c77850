"""The one inference pipeline that every transport calls: one entry per
request kind (infer, chat, chat stream, embed), typed requests in, typed
answers out (core/types.py, core/llm.py).

Sequence per request: admit (the tenant from its key, then the model) → the
tenant's rate limit → the model's policies on the request → validate against
the signature → the response cache → the route's plan (pipeline/plan.py: for
each attempt, call the backend through its admission within the one deadline,
validate its outputs) → the policies on the answer → answer. The kinds' own
steps are in pipeline/tensors.py and pipeline/llm.py; transports only decode,
call an entry and encode.
"""

from __future__ import annotations

import logging

from gateway.core.errors import NotFound
from gateway.core.llm import (
    ChatRequest,
    ChatResult,
    ChatStream,
    EmbeddingRequest,
    EmbeddingResult,
)
from gateway.core.types import InferRequest, InferResponse, RequestContext
from gateway.observe import tracing
from gateway.observe.model_stats import ModelStats
from gateway.observe.requests import observe_request
from gateway.observe.slo import availability_of
from gateway.pipeline import llm, tensors
from gateway.pipeline.entry import ModelEntry
from gateway.pipeline.steps import PipelineSteps
from gateway.pipeline.tensors import InferCall

log = logging.getLogger("gateway.service")


class InferenceService(PipelineSteps):
    def replace(self, other: InferenceService) -> None:
        """Serve `other`'s models and tenants from now on (a config reload).

        Two attribute stores on the event loop's thread: a request sees either
        the old or the new config, never a mix, and requests already running
        keep the model entries (and backends) they started with. A model that
        keeps its name and version keeps its statistics.
        """
        old = self.models
        self.stats = {
            name: (
                self.stats[name]
                if name in old and old[name].version == entry.version and name in self.stats
                else other.stats[name]
            )
            for name, entry in other.models.items()
        }
        self.models = other.models
        self.tenants = other.tenants
        self.cache = other.cache
        self.slo = other.slo
        self.ratelimit = other.ratelimit
        self.audit = other.audit

    def ready(self) -> bool:
        """Every model can be served, and the process is not stopping."""
        return not self.stopping and all(m.ready() for m in self.models.values())

    def observe(self, ctx: RequestContext, code: int) -> None:
        """The transport answered `code`: count the request (metrics, SLOs), end its
        trace span and write its audit record."""
        total = observe_request(ctx, code)
        model = ctx.model
        if model is not None:
            self.slo.record(model, total, availability_of(code))
            stats = self.stats.get(model)
            if stats is not None:  # None: the model went away in a reload meanwhile
                stats.record(ctx, code, total)
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

    def statistics(
        self, name: str | None = None, version: str | None = None
    ) -> list[tuple[ModelEntry, ModelStats]]:
        """The statistics of the model called `name` (at `version`, if given; NotFound
        otherwise), or of every model, in config order."""
        if name is None:
            if version is not None:
                raise NotFound("statistics of a version need the model's name")
            return [(entry, self.stats[n]) for n, entry in self.models.items()]
        entry = self.model(name, version)
        return [(entry, self.stats[entry.name])]

    def infer_call(self, request: InferRequest, ctx: RequestContext) -> InferCall:
        """A tensor request admitted, through its model's policies and checked
        against the signature, without awaiting anything: its `answer` is set
        when the in-process cache tier had it (the transport then need not set
        up the rest of the request), otherwise `run()` serves it."""
        return tensors.prepare(self, request, ctx)

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        call = tensors.prepare(self, request, ctx)
        return call.answer if call.answer is not None else await call.run()

    async def chat(self, request: ChatRequest, ctx: RequestContext) -> ChatResult:
        return await llm.chat(self, request, ctx)

    async def chat_stream(self, request: ChatRequest, ctx: RequestContext) -> ChatStream:
        """A stream from the first backend that accepts the request, through the
        model's policies chunk by chunk; its tokens and cost are counted once it
        ends or is closed."""
        return await llm.chat_stream(self, request, ctx)

    async def embed(self, request: EmbeddingRequest, ctx: RequestContext) -> EmbeddingResult:
        return await llm.embed(self, request, ctx)
