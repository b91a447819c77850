"""A served model as the pipeline sees it: name, version, kind, signature,
route, prices, cache and audit settings. Built by the runtime from config."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.llm import Price
from gateway.core.signature import Signature
from gateway.core.types import RequestContext
from gateway.policies.base import Policy
from gateway.routing.router import Route, sticky_variant


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
    # Response cache: TTL (None: not cached), whether sampled chat answers are, and
    # the key prefix that ties entries to this model's signature and route.
    cache_ttl_s: float | None = None
    cache_sampled: bool = False
    cache_prefix: bytes = b""
    # False: each tenant has its own entries (one tenant's answer reveals its request).
    cache_shared_across_tenants: bool = False
    # Audit records of this model hold the request's size and chat messages too.
    audit_payload: bool = False
    # Request/response policies, in order (gateway/policies/base.py).
    policies: tuple[Policy, ...] = ()

    def ready(self) -> bool:
        return any(b.ready() for b in self.route.backends)

    def cache_scope(self, ctx: RequestContext) -> bytes:
        """The key prefix of this request's cache entries: the model's, narrowed
        to the caller's tenant (unless the model shares answers across tenants)
        and, on a sticky weighted route, to the variant the caller sticks to, so
        that no answer crosses tenants or variants."""
        scope = self.cache_prefix
        if ctx.tenant is not None and not self.cache_shared_across_tenants:
            scope += b"\x00tenant:" + ctx.tenant.encode()
        variant = sticky_variant(self.route, ctx)
        if variant is not None:
            scope += b"\x00variant:" + variant.encode()
        return scope
