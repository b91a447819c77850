"""The backend protocols: what the runtime and the routing layer need from any
model server.

`ConfiguredBackend` is what the runtime holds for each entry of `backends:`,
whatever it serves: reloads and shutdown rely on `busy()` and `close()`.
`Backend` adds tensor inference. Chat and embeddings backends keep the
protocols of `core/llm.py` besides `ConfiguredBackend`.

A backend type is one module: its config model, a class that keeps these
contracts, and its registration (backends/registry.py). Backends only do
I/O: queues, slots and deadlines while waiting are admission's
(gateway/admission/), which the runtime puts in front of every backend.
Deadlines are absolute, on the `time.monotonic()` clock, computed once per
attempt by the pipeline (pipeline/plan.py). Behind a queue a backend gets
`deadline=None` (the queue answers at the deadline itself) unless it sets
`takes_deadline = True`: a remote server that can act on it (backends/triton.py).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from gateway.core.signature import TensorSpec


class BackendLoadError(Exception):
    """A backend that cannot be built from its config (file, providers, remote
    model, missing extra): the config is refused with this message."""


class ConfiguredBackend(Protocol):
    """One configured backend, as the runtime holds it."""

    name: str

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
        """What the backend itself declares (dynamic dims as -1), for compatibility
        checks against a signature; None when it cannot tell before serving."""
        ...

    def ready(self) -> bool: ...

    def busy(self) -> bool:
        """True while work is queued or running on it: a reload closes a backend
        it replaced only once that backend is no longer busy."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class Backend(ConfiguredBackend, Protocol):
    """One place a tensor model can run.

    `infer` receives validated inputs (numpy arrays, batch dimension first when
    the signature is batched) and the output names wanted, and returns those
    outputs. It raises `GatewayError`s: `BackendFailed` for its own failures,
    `DeadlineExceeded` when `deadline` passes (None: no deadline).
    """

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]: ...
