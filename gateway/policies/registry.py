"""The policy types: one registration per type, read by the config loader
(the schema of `models.<name>.policies[]`) and the runtime (building each
model's chain). The same pattern as backends/registry.py: a policy type is
one module with its config model (a subclass of `config.schema.PolicyCommon`
with `type: Literal["<name>"]`), its `Policy` subclass and
`register(PolicyType(...))`; the registry's `builtin` names the modules that
ship with the gateway, the `gateway.policies` entry-point group adds others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config.schema import PolicyCommon
from gateway.core.registry import TypeRegistry, check_type_literal
from gateway.policies.base import Policy


@dataclass(frozen=True)
class PolicyType:
    name: str  # the `type:` value
    config: type[PolicyCommon]
    build: Callable[[Any], Policy]  # validated config -> the policy
    kinds: frozenset[str]  # the model kinds it applies to

    def __post_init__(self) -> None:
        check_type_literal("policy type", self.name, self.config)


_REGISTRY: TypeRegistry[PolicyType] = TypeRegistry(
    "policy type",
    builtin=("gateway.policies.max_tokens", "gateway.policies.pii"),
    entry_point_group="gateway.policies",
)
register = _REGISTRY.register
policy_types = _REGISTRY.all
policy_type = _REGISTRY.get
