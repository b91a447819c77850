"""The Backend protocol: what the routing layer needs from any model server.

Adding a backend type is adding a module with a class that keeps this contract
and registering its config type in `backends/__init__.py`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from gateway.core.signature import TensorSpec


@runtime_checkable
class Backend(Protocol):
    """One place a model can run.

    `infer` receives validated inputs (numpy arrays, batch dimension first when
    the signature is batched) and the output names wanted, and returns those
    outputs. It raises `GatewayError`s: `BackendFailed` for its own failures,
    `DeadlineExceeded` when `timeout_s` runs out.
    """

    name: str

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], timeout_s: float | None
    ) -> dict[str, np.ndarray]: ...

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
        """What the backend itself declares (dynamic dims as -1), for compatibility
        checks against a signature; None when it cannot tell before serving."""
        ...

    def ready(self) -> bool: ...

    async def close(self) -> None: ...
