"""The one inference pipeline that every transport calls.

Sequence per request: find the model → validate inputs against its signature
→ choose outputs → ask the route for a plan → for each attempt: call the
backend within the deadline, validate its outputs → answer. Transports only
decode and encode; they never skip or repeat a step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from gateway.core.errors import (
    BackendFailed,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    NotFound,
    Overloaded,
)
from gateway.core.signature import Signature
from gateway.core.types import InferRequest, InferResponse, RequestContext
from gateway.routing.router import Route

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

    def ready(self) -> bool:
        return any(b.ready() for b in self.route.backends)


class InferenceService:
    def __init__(self, models: dict[str, ModelEntry]) -> None:
        self.models = models

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

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        entry = self.model(request.model, request.version)
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
