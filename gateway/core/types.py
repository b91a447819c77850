"""Protocol-free request and response types: the contract between transports and the core.

Tensors are numpy arrays (object arrays of `bytes` for BYTES); transports decode
the wire straight into them and encode them back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the caller asked for; `binary` selects the binary tensor extension."""

    name: str
    binary: bool = False


@dataclass(slots=True)
class InferRequest:
    model: str
    version: str | None
    inputs: dict[str, np.ndarray]
    # None means "every output of the signature".
    outputs: tuple[RequestedOutput, ...] | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None


@dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None


class Execution(Protocol):
    """What admission measured of the backend execution whose answer a request
    got (gateway/admission/queue.py), for its model's statistics."""

    waited_s: float  # in the backend's queue, until the execution took it
    ran_s: float  # the execution: the whole batch's, when it was one
    inferences: int  # the request's rows when the backend batches, else 1
    leads: bool  # the first request of its batch: the execution is counted once


@dataclass(slots=True)
class RequestContext:
    """What the pipeline knows and learns about one request, whatever the protocol.

    `deadline` is on the `time.monotonic()` clock. The pipeline fills `backend`,
    `attempts` and `backend_wait_s` so transports can report them in headers.
    """

    request_id: str
    protocol: str
    deadline: float | None = None
    no_cache: bool = False
    started: float = field(default_factory=time.perf_counter)
    backend: str | None = None
    attempts: int = 0
    backend_wait_s: float = 0.0
    cache: str = "bypass"
    model: str | None = None  # the configured model's name, once resolved
    api_key: str | None = None  # as sent; never logged
    # The request's headers (lower-case names), for routes that stick by a header.
    headers: Any = None
    tenant: str | None = None
    cost_usd: float | None = None
    # Tracing and audit (gateway.observe), filled as the pipeline runs:
    span: Any = None  # the request's span, while tracing is on
    trace_parent: Any = None  # the caller's trace context (traceparent), while tracing is on
    failures: list[Any] | None = None  # (backend, GatewayError) per failed attempt of the plan
    backend_model: str | None = None  # the model the answering backend says it ran
    request_bytes: int | None = None  # the request body's size, if the transport counts it
    audit_messages: Any = None  # chat messages, kept only for models with audit_payload
    # (policy, what it did) for each policy that changed or refused the request
    # (gateway/policies/base.py); in the audit record.
    policy_notes: list[tuple[str, str]] | None = None
    # Per-request state of the model's policies, by policy (e.g. the pii policy's
    # placeholder -> value map): lives and dies with the request, never recorded.
    policy_state: dict[object, Any] | None = None
    # Set by admission when a queued backend's execution answered (one store, no
    # copy): read once the request is answered, for the model's statistics.
    execution: Execution | None = None

    def note_policy(self, policy: str, action: str) -> None:
        if self.policy_notes is None:
            self.policy_notes = []
        self.policy_notes.append((policy, action))

    def remaining_s(self) -> float | None:
        """Seconds left before the deadline, None when there is none."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()

    def overhead_s(self) -> float:
        """The gateway's own time so far: elapsed time minus backend waits."""
        return max(0.0, time.perf_counter() - self.started - self.backend_wait_s)
