"""Route plans: which backends to try for a request, in which order.

`fallback` tries the backends in the configured order. `weighted` picks the
first backend by weight (a 95/5 canary) and keeps the others, in configured
order, as fallbacks; with a sticky key (a header or the tenant) the pick is a
hash of the key, so one caller always sees the same variant.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Any

from gateway.core.errors import GatewayError
from gateway.core.types import RequestContext
from gateway.routing.resilience import BackendHealth, BreakerPolicy


@dataclass(frozen=True, slots=True)
class Attempt:
    """One backend of a plan with its own default deadline and its health."""

    backend: Any  # a Backend, ChatBackend or EmbeddingBackend, by the model's kind
    timeout_s: float
    health: BackendHealth = field(
        default_factory=lambda: BackendHealth("-", BreakerPolicy(enabled=False))
    )


@dataclass(frozen=True, slots=True)
class Shadow:
    attempt: Attempt
    fraction: float
    rtol: float = 1e-3
    atol: float = 1e-5


# Which error reasons belong to which configurable fallback class.
_REASON_CLASS = {"deadline_queued": "overloaded", "disabled": "circuit_open"}


def fallback_class(error: GatewayError) -> str:
    return _REASON_CLASS.get(error.reason, error.reason)


class Route:
    def __init__(
        self,
        attempts: list[Attempt],
        weights: list[float] | None = None,
        rng: random.Random | None = None,
        fallback_on: frozenset[str] | None = None,
        sticky_header: bytes | None = None,
        sticky_tenant: bool = False,
        hedge_delay_s: float | None = None,
        shadow: Shadow | None = None,
    ) -> None:
        if not attempts:
            raise ValueError("a route needs at least one backend")
        if weights is not None and len(weights) != len(attempts):
            raise ValueError("one weight per backend")
        self.attempts = tuple(attempts)
        self._cumulative = None
        if weights is not None:
            total, running = sum(weights), 0.0
            self._cumulative = []
            for w in weights:
                running += w / total
                self._cumulative.append(running)
        self._rng = rng or random.Random()
        self.fallback_on = fallback_on
        self.sticky_header = sticky_header
        self.sticky_tenant = sticky_tenant
        self.hedge_delay_s = hedge_delay_s
        self.shadow = shadow

    @property
    def backends(self) -> list[Any]:
        return [a.backend for a in self.attempts]

    def falls_back_on(self, error: GatewayError) -> bool:
        return self.fallback_on is None or fallback_class(error) in self.fallback_on

    def plan(self, sticky_key: str | None = None) -> tuple[Attempt, ...]:
        """The attempts for one request, best first."""
        if self._cumulative is None or len(self.attempts) == 1:
            return self.attempts
        if sticky_key is not None:
            # A stable hash (not Python's per-process one): every replica agrees.
            point = zlib.crc32(sticky_key.encode()) / 2**32
        else:
            point = self._rng.random()
        first = next(
            (i for i, edge in enumerate(self._cumulative) if point < edge), len(self.attempts) - 1
        )
        return (self.attempts[first], *tuple(a for i, a in enumerate(self.attempts) if i != first))


def sticky_key(route: Route, ctx: RequestContext) -> str | None:
    if route.sticky_tenant:
        return ctx.tenant
    if route.sticky_header is not None and ctx.headers is not None:
        value = ctx.headers.get(route.sticky_header)
        if value is None:
            return None
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        # Per tenant: one tenant's callers never pick another's variants by
        # sending the same header value.
        return text if ctx.tenant is None else f"{ctx.tenant}\x00{text}"
    return None


def sticky_variant(route: Route, ctx: RequestContext) -> str | None:
    """The backend a sticky weighted route sends this caller to first (None when
    the route does not stick, or this caller has no sticky key)."""
    if not (route.sticky_tenant or route.sticky_header is not None):
        return None
    key = sticky_key(route, ctx)
    return None if key is None else route.plan(key)[0].backend.name
