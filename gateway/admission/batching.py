"""Dynamic batching: which queued requests may share an execution, and how their
tensors are joined and split along the batch (first) dimension.

Semantics follow Triton's dynamic batcher: requests are gathered up to the
largest preferred batch size (or `max_batch_size`) or until the oldest has
waited `max_queue_delay`; requests whose non-batch shapes, datatypes or
requested outputs differ never share a batch.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from gateway.core.errors import BackendFailed


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_s: float
    preferred_batch_sizes: tuple[int, ...] = ()

    @property
    def target_rows(self) -> int:
        """Rows at which a batch goes without waiting for the delay."""
        fitting = [p for p in self.preferred_batch_sizes if p <= self.max_batch_size]
        return max(fitting) if fitting else self.max_batch_size

    def trim(self, rows: list[int]) -> int:
        """How many of the gathered requests (their row counts, in queue order) to
        take: the longest prefix that reaches the largest preferred size not above
        the rows gathered, else all of them."""
        total = sum(rows)
        goals = sorted((p for p in self.preferred_batch_sizes if p <= total), reverse=True)
        for goal in goals:
            acc = 0
            for count, r in enumerate(rows, start=1):
                acc += r
                if acc == goal:
                    return count
                if acc > goal:
                    break
        return len(rows)


def batch_key(inputs: dict[str, np.ndarray], outputs: list[str]) -> Hashable | None:
    """Requests with equal keys may be batched together; None: never batched."""
    parts: list[Hashable] = [tuple(outputs)]
    rows = -1
    for name in sorted(inputs):
        array = inputs[name]
        if array.ndim == 0:
            return None
        if rows == -1:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            return None
        parts.append((name, array.dtype.str, array.shape[1:]))
    return tuple(parts)


def rows_of(inputs: dict[str, np.ndarray]) -> int:
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 1


def concat_inputs(requests: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    first = requests[0]
    return {name: np.concatenate([r[name] for r in requests]) for name in first}


def split_outputs(
    outputs: dict[str, np.ndarray], rows: list[int], backend: str
) -> list[dict[str, np.ndarray]]:
    """Per-request outputs (views into the batch's arrays)."""
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise BackendFailed(
                f"backend '{backend}' returned output '{name}' with shape {list(array.shape)} "
                f"for a batch of {total} rows; cannot split it between requests",
                reason="bad_output",
            )
    parts = []
    start = 0
    for count in rows:
        parts.append({name: array[start : start + count] for name, array in outputs.items()})
        start += count
    return parts
