"""The policy types: one registration per type, read by the config loader
(the schema of `models.<name>.policies[]`) and the runtime (building each
model's chain). The same pattern as backends/registry.py: a policy type is
one module with its config model (a subclass of `config.schema.PolicyCommon`
with `type: Literal["<name>"]`), its `Policy` subclass and
`register(PolicyType(...))`; `_BUILTIN` names the modules that ship with the
gateway, the `gateway.policies` entry-point group adds others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from gateway.config.schema import PolicyCommon
from gateway.policies.base import Policy

_BUILTIN = ("gateway.policies.max_tokens",)
_ENTRY_POINT_GROUP = "gateway.policies"


@dataclass(frozen=True)
class PolicyType:
    name: str  # the `type:` value
    config: type[PolicyCommon]
    build: Callable[[Any], Policy]  # validated config -> the policy
    kinds: frozenset[str]  # the model kinds it applies to

    def __post_init__(self) -> None:
        declared = self.config.model_fields["type"].annotation
        if getattr(declared, "__args__", None) != (self.name,):
            raise TypeError(
                f"policy type {self.name!r}: its config model needs type: Literal[{self.name!r}]"
            )


_TYPES: dict[str, PolicyType] = {}
_loaded = False


def register(policy_type: PolicyType) -> PolicyType:
    existing = _TYPES.get(policy_type.name)
    if existing is not None and existing is not policy_type:
        raise ValueError(f"policy type {policy_type.name!r} is registered twice")
    _TYPES[policy_type.name] = policy_type
    return policy_type


def policy_types() -> dict[str, PolicyType]:
    global _loaded
    if not _loaded:
        for module in _BUILTIN:
            importlib.import_module(module)
        for entry in entry_points(group=_ENTRY_POINT_GROUP):
            importlib.import_module(entry.value.partition(":")[0])
        _loaded = True
    return _TYPES


def policy_type(name: str) -> PolicyType:
    types = policy_types()
    found = types.get(name)
    if found is None:
        raise KeyError(f"no policy type {name!r} (known: {', '.join(sorted(types))})")
    return found
