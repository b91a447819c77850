"""Tenants: who is calling (an API key) and which models they may use; and
the admin key.

Keys come from the environment variables the config names, read at load (and
on each reload); with no tenants configured the gateway is open (no key
needed). Keys are held only as their sha256 digests: a presented key is
hashed once and looked up by its digest, and the admin key is compared digest
to digest in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from gateway.core.errors import Forbidden, Unauthenticated


def key_digest(key: str) -> bytes:
    """The sha256 digest a key is held and looked up as."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def admin_key_matches(expected: bytes, presented: str | None) -> bool:
    """Whether `presented` is the admin key whose digest is `expected` (constant time)."""
    return hmac.compare_digest(key_digest(presented or ""), expected) and bool(presented)


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    models: frozenset[str] | None  # None: every model

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


class Tenants:
    def __init__(self, by_digest: dict[bytes, Tenant]) -> None:
        """`by_digest`: each tenant under the sha256 digest of each of its keys."""
        self._by_digest = by_digest
        self._by_name = {tenant.name: tenant for tenant in by_digest.values()}

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def identify(self, key: str | None) -> Tenant | None:
        """The caller's tenant (None when auth is off); Unauthenticated otherwise."""
        if not self._by_digest:
            return None
        if not key:
            raise Unauthenticated(
                "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            )
        tenant = self._by_digest.get(key_digest(key))
        if tenant is None:
            raise Unauthenticated("invalid API key")
        return tenant

    def authorize(self, key: str | None, model: str, identified: str | None = None) -> str | None:
        """The tenant's name if it may use `model`; raises otherwise.

        `identified`: the tenant `identify` already found for this request (the
        transport authenticates before it reads the body), so the key is not
        hashed twice. A tenant a reload removed meanwhile is looked up again.
        """
        tenant = self._by_name.get(identified) if identified is not None else None
        if tenant is None:
            tenant = self.identify(key)
        if tenant is None:
            return None
        if not tenant.may_use(model):
            raise Forbidden(f"tenant '{tenant.name}' may not use model '{model}'")
        return tenant.name
