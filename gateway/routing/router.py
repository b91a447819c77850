"""Route plans: which backends to try for a request, in which order.

`fallback` tries the backends in the configured order. `weighted` picks the
first backend by weight (a 95/5 canary) and keeps the others, in configured
order, as fallbacks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gateway.backends.base import Backend


@dataclass(frozen=True, slots=True)
class Attempt:
    """One backend of a plan with its own default deadline."""

    backend: Backend
    timeout_s: float


class Route:
    def __init__(
        self, attempts: list[Attempt], weights: list[float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not attempts:
            raise ValueError("a route needs at least one backend")
        if weights is not None and len(weights) != len(attempts):
            raise ValueError("one weight per backend")
        self.attempts = tuple(attempts)
        self._weights = weights
        self._rng = rng or random.Random()

    @property
    def backends(self) -> list[Backend]:
        return [a.backend for a in self.attempts]

    def plan(self) -> tuple[Attempt, ...]:
        """The attempts for one request, best first."""
        if self._weights is None or len(self.attempts) == 1:
            return self.attempts
        first = self._rng.choices(range(len(self.attempts)), weights=self._weights)[0]
        return (self.attempts[first],) + tuple(
            a for i, a in enumerate(self.attempts) if i != first
        )
