"""Tenants: who is calling (an API key) and which models they may use.

Keys come from the environment variables the config names, read once at
load; with no tenants configured the gateway is open (no key needed).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.errors import Forbidden, Unauthenticated


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    models: frozenset[str] | None  # None: every model

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


class Tenants:
    def __init__(self, by_key: dict[str, Tenant]) -> None:
        self._by_key = by_key

    @property
    def enabled(self) -> bool:
        return bool(self._by_key)

    def identify(self, key: str | None) -> Tenant | None:
        """The caller's tenant (None when auth is off); Unauthenticated otherwise."""
        if not self._by_key:
            return None
        if not key:
            raise Unauthenticated(
                "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            )
        tenant = self._by_key.get(key)
        if tenant is None:
            raise Unauthenticated("invalid API key")
        return tenant

    def authorize(self, key: str | None, model: str) -> str | None:
        """The tenant's name if it may use `model`; raises otherwise."""
        tenant = self.identify(key)
        if tenant is None:
            return None
        if not tenant.may_use(model):
            raise Forbidden(f"tenant '{tenant.name}' may not use model '{model}'")
        return tenant.name
