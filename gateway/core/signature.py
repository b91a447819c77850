"""Model signatures: named, typed, shaped inputs and outputs, enforced at the edge.

A dimension of -1 accepts any size. When a signature is `batched`, the first
dimension of every input and output is the batch dimension and must agree
across the tensors of one request (and of its answer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gateway.core.datatypes import datatype_of
from gateway.core.errors import BackendFailed, InvalidInput

# Caps on the shape of any tensor a caller declares, checked before anything is
# allocated (docs/configuration.md#request-limits). numpy 1 holds at most 32
# dimensions (numpy 2: 64); no request body can carry more elements than
# MAX_ELEMENTS, and a tensor with none (a dimension of 0) is held to the same
# bound on its other dimensions, which numpy could not describe past it.
MAX_RANK = 32
MAX_ELEMENTS = 2**31 - 1


def format_shape(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def check_rank(name: str, rank: int) -> None:
    """Refuse a shape of more than MAX_RANK dimensions (before looking at them)."""
    if rank > MAX_RANK:
        raise InvalidInput(
            f"input '{name}': shape has {rank} dimensions, at most {MAX_RANK} are accepted"
        )


def shape_size(name: str, shape: tuple[int, ...]) -> int:
    """The element count of a caller's shape (non-negative dimensions), refusing
    one that no tensor may have: over MAX_RANK dimensions, or over MAX_ELEMENTS
    elements (counting the dimensions other than 0 when there are none).
    O(rank), on Python ints: nothing is allocated and nothing overflows."""
    if len(shape) > MAX_RANK:
        check_rank(name, len(shape))
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidInput(
            f"input '{name}': shape {format_shape(shape)} holds {count} elements, "
            f"at most {MAX_ELEMENTS} are accepted"
        )
    if count == 0:
        spread = math.prod([d for d in shape if d])
        if spread > MAX_ELEMENTS:
            raise InvalidInput(
                f"input '{name}': shape {format_shape(shape)}: its dimensions other than 0 "
                f"multiply to {spread}, at most {MAX_ELEMENTS} are accepted"
            )
    return count


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    # (axis, size) of each fixed dimension, for accepts() on every request.
    _fixed: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fixed = tuple((axis, size) for axis, size in enumerate(self.shape) if size != -1)
        object.__setattr__(self, "_fixed", fixed)

    def describe(self) -> str:
        return f"{self.datatype} {format_shape(self.shape)}"

    def accepts(self, datatype: str, shape: tuple[int, ...]) -> bool:
        if datatype != self.datatype or len(shape) != len(self.shape):
            return False
        for axis, size in self._fixed:  # noqa: SIM110 - no generator per request (hot path)
            if shape[axis] != size:
                return False
        return True

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool = False
    _inputs_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    _outputs_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Lookup tables built once, used per request.
        object.__setattr__(self, "_inputs_by_name", {s.name: s for s in self.inputs})
        object.__setattr__(self, "_outputs_by_name", {s.name: s for s in self.outputs})

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def input(self, name: str) -> TensorSpec | None:
        return self._inputs_by_name.get(name)

    def output(self, name: str) -> TensorSpec | None:
        return self._outputs_by_name.get(name)

    def check_input(self, name: str, datatype: str, shape: tuple[int, ...]) -> None:
        """Refuse an input the signature does not have, or whose declared datatype
        or shape it does not accept: what `validate_inputs` says of the tensor,
        said by a decoder before the tensor is built."""
        spec = self._inputs_by_name.get(name)
        if spec is None:
            raise InvalidInput(f"unknown input '{name}': expected inputs {self.input_names}")
        if not spec.accepts(datatype, shape):
            raise InvalidInput(
                f"input '{name}': expected {spec.describe()}, got {datatype} {format_shape(shape)}"
            )

    def validate_inputs(self, inputs: dict[str, np.ndarray]) -> int | None:
        """Check a request's tensors; return the batch size (None if not batched).

        Raises InvalidInput naming the input, what was expected and what came.
        """
        specs = self._inputs_by_name
        for name in inputs:
            if name not in specs:
                raise InvalidInput(f"unknown input '{name}': expected inputs {self.input_names}")
        batch: int | None = None
        first: str | None = None
        for spec in self.inputs:
            array = inputs.get(spec.name)
            if array is None:
                raise InvalidInput(f"missing input '{spec.name}': expected {spec.describe()}")
            datatype = datatype_of(array)
            if not spec.accepts(datatype, array.shape):
                raise InvalidInput(
                    f"input '{spec.name}': expected {spec.describe()}, "
                    f"got {datatype} {format_shape(array.shape)}"
                )
            if self.batched:
                if batch is None:
                    batch, first = array.shape[0], spec.name
                elif array.shape[0] != batch:
                    raise InvalidInput(
                        f"input '{spec.name}': batch size {array.shape[0]} differs from "
                        f"input '{first}' batch size {batch}"
                    )
        return batch

    def validate_outputs(
        self,
        outputs: dict[str, np.ndarray],
        batch: int | None,
        backend: str,
        wanted: list[str] | None = None,
    ) -> None:
        """Check a backend's answer (the `wanted` outputs; None: every output of
        the signature); a mismatch is the backend's fault (502)."""
        specs = self._outputs_by_name
        for spec in self.outputs if wanted is None else (specs[name] for name in wanted):
            array = outputs.get(spec.name)
            if array is None:
                raise BackendFailed(
                    f"backend '{backend}' returned no output '{spec.name}' "
                    f"(signature expects {spec.describe()})",
                    reason="bad_output",
                )
            try:
                datatype = datatype_of(array)
            except ValueError:
                datatype = str(array.dtype)
            if not spec.accepts(datatype, array.shape) or (
                batch is not None and array.shape[0] != batch
            ):
                expected = spec.describe()
                if batch is not None:
                    expected += f" with batch size {batch}"
                raise BackendFailed(
                    f"backend '{backend}' returned output '{spec.name}' as "
                    f"{datatype} {format_shape(array.shape)}, signature expects {expected}",
                    reason="bad_output",
                )


def compatibility_problems(
    signature: Signature, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> list[str]:
    """Why a backend declaring `inputs`/`outputs` cannot serve `signature` (empty: it can).

    The signature may be narrower than the backend (a fixed size where the model
    is dynamic) but never wider: every request the signature admits must be one
    the backend accepts, and every answer the backend can give must fit the
    signature's outputs.
    """
    problems: list[str] = []
    model_inputs = {s.name: s for s in inputs}
    model_outputs = {s.name: s for s in outputs}
    for spec in signature.inputs:
        problems += _spec_problems("input", spec, model_inputs.get(spec.name), model_inputs)
    for name in model_inputs.keys() - {s.name for s in signature.inputs}:
        problems.append(f"model input '{name}' is not in the signature (the model requires it)")
    for spec in signature.outputs:
        problems += _spec_problems("output", spec, model_outputs.get(spec.name), model_outputs)
    return problems


def _spec_problems(
    side: str, want: TensorSpec, have: TensorSpec | None, offered: dict[str, TensorSpec]
) -> list[str]:
    if have is None:
        return [f"{side} '{want.name}': the model has no such {side} (it has {sorted(offered)})"]
    if have.datatype != want.datatype:
        return [
            f"{side} '{want.name}': signature declares {want.describe()}, "
            f"the model has {have.describe()}"
        ]
    if len(have.shape) != len(want.shape):
        return [
            f"{side} '{want.name}': signature declares rank {len(want.shape)} "
            f"{format_shape(want.shape)}, the model has rank {len(have.shape)} "
            f"{format_shape(have.shape)}"
        ]
    problems = []
    for axis, (w, h) in enumerate(zip(want.shape, have.shape)):
        if h == -1 or w == h:
            continue
        if w == -1:
            problems.append(
                f"{side} '{want.name}': signature allows any size in dimension {axis}, "
                f"the model fixes it to {h}"
            )
        else:
            problems.append(
                f"{side} '{want.name}': signature declares size {w} in dimension {axis}, "
                f"the model has {h}"
            )
    return problems
