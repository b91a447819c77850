"""Types registered by name: backend types (backends/registry.py) and policy
types (policies/registry.py) are each one module that registers itself.

The modules of the types that ship with the gateway are named in `builtin`
and imported on first use; other packages add types through an entry-point
group (each entry point names a module, which registers on import).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Generic, Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class TypeRegistry(Generic[T]):
    def __init__(self, what: str, builtin: tuple[str, ...], entry_point_group: str) -> None:
        self.what = what  # "backend type", "policy type": for messages
        self._builtin = builtin
        self._group = entry_point_group
        self._types: dict[str, T] = {}
        self._loaded = False

    def register(self, item: T) -> T:
        """Called once by the module that defines the type."""
        existing = self._types.get(item.name)
        if existing is not None and existing is not item:
            raise ValueError(f"{self.what} {item.name!r} is registered twice")
        self._types[item.name] = item
        return item

    def all(self) -> dict[str, T]:
        """Every registered type by name: the built-in ones and those of installed plugins."""
        if not self._loaded:
            for module in self._builtin:
                importlib.import_module(module)
            for entry in entry_points(group=self._group):
                importlib.import_module(entry.value.partition(":")[0])
            self._loaded = True
        return self._types

    def get(self, name: str) -> T:
        types = self.all()
        found = types.get(name)
        if found is None:
            raise KeyError(f"no {self.what} {name!r} (known: {', '.join(sorted(types))})")
        return found


def check_type_literal(what: str, name: str, config: Any) -> None:
    """A type's config model must narrow `type` to the type's name: the loader
    tells the types apart by it."""
    declared = config.model_fields["type"].annotation
    if getattr(declared, "__args__", None) != (name,):
        raise TypeError(f"{what} {name!r}: its config model needs type: Literal[{name!r}]")
