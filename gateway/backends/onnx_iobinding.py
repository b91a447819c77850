"""Runs through ONNX Runtime's IO binding (an onnx backend's `io_binding: true`).

`session.run` allocates every output inside the call and, on a GPU, copies
the inputs in and the outputs out as it goes. Bound instead: the inputs are
placed on the session's device before the run, and each output whose shape is
known once the inputs' are (fixed sizes, and symbolic dimensions an input
also has, such as the batch) is preallocated there: on the CPU as the numpy
array that becomes the answer (nothing is copied out), on a GPU in device
memory, copied out once after the run. Outputs with other unknown dimensions
(or of unknown rank) are bound to the device and ORT allocates them.

String and non-tensor inputs and outputs cannot be bound (string tensors live
on the CPU only, and outputs need a numpy dtype to preallocate): a backend
whose graph has them is refused at load (`check_bindable`).

A graph that declares an output shape its run does not produce fails with IO
binding (ORT cannot write into the preallocated array) where `session.run`
would only have warned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from gateway.backends.providers import GPU_PROVIDERS
from gateway.core.datatypes import NUMPY_DTYPES, ONNX_TYPES

# The shape of an output before the run: ints and the names of symbolic dimensions.
_Dims = tuple[int | str | None, ...]


class NotBindable(Exception):
    """A graph IO binding cannot run (its message says which tensor and why)."""


def binding_device(session_providers: list[str], device_id: int) -> tuple[str, int]:
    """The device ('cuda' or 'cpu', and its id) a session computes on: that of
    the provider it prefers (TensorRT's memory is CUDA's)."""
    if session_providers and session_providers[0] in GPU_PROVIDERS:
        return "cuda", device_id
    return "cpu", 0


def _dtype(arg: Any) -> np.dtype | None:
    datatype = ONNX_TYPES.get(arg.type)
    if datatype is None or datatype == "BYTES":
        return None
    return NUMPY_DTYPES[datatype]


def check_bindable(session: ort.InferenceSession) -> None:
    """Raise NotBindable when an input or output of the graph cannot be bound."""
    for side, args in (("input", session.get_inputs()), ("output", session.get_outputs())):
        for arg in args:
            if _dtype(arg) is None:
                raise NotBindable(
                    f"graph {side} '{arg.name}' is of type {arg.type}, which IO binding cannot "
                    "hold (string tensors live on the CPU only; non-tensor values have no "
                    "preallocated form)"
                )


class IoBindingRunner:
    """`session.run(outputs, feeds)` through IO binding on one device.

    Thread-safe: each run binds a binding of its own.
    """

    def __init__(self, session: ort.InferenceSession, device_type: str, device_id: int) -> None:
        check_bindable(session)
        self._session = session
        self._device_type = device_type
        self._device_id = device_id
        self._on_cpu = device_type == "cpu"
        self._input_dims: dict[str, _Dims] = {
            arg.name: tuple(arg.shape or ()) for arg in session.get_inputs()
        }
        self._outputs: dict[str, tuple[_Dims, np.dtype]] = {}
        for arg in session.get_outputs():
            dtype = _dtype(arg)
            if dtype is not None:  # always: check_bindable refused the others
                self._outputs[arg.name] = (tuple(arg.shape or ()), dtype)

    def __call__(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = self._session.io_binding()
        device_type, device_id = self._device_type, self._device_id
        # Bound values must outlive the run: the CPU ones are views of these arrays.
        keep: list[Any] = []
        sizes: dict[str, int] = {}
        for name, value in feeds.items():
            value = np.ascontiguousarray(value)
            for dim, size in zip(self._input_dims.get(name, ()), value.shape):
                if isinstance(dim, str):
                    sizes.setdefault(dim, size)
            bound = ort.OrtValue.ortvalue_from_numpy(value, device_type, device_id)
            binding.bind_ortvalue_input(name, bound)
            keep.append(bound)
        answers: dict[str, np.ndarray] = {}
        for name in outputs:
            shape = self._known_shape(name, sizes)
            if shape is None:
                binding.bind_output(name, device_type, device_id)
                continue
            dtype = self._outputs[name][1]
            if self._on_cpu:
                answers[name] = array = np.empty(shape, dtype)
                bound = ort.OrtValue.ortvalue_from_numpy(array)
            else:
                bound = ort.OrtValue.ortvalue_from_shape_and_type(
                    list(shape), dtype, device_type, device_id
                )
            binding.bind_ortvalue_output(name, bound)
            keep.append(bound)
        self._session.run_with_iobinding(binding)
        if not self._on_cpu:
            binding.synchronize_outputs()
        values = binding.get_outputs()  # in the order they were bound
        results: list[np.ndarray] = []
        for index, name in enumerate(outputs):
            answer = answers.get(name)
            results.append(answer if answer is not None else values[index].numpy())
        return results

    def _known_shape(self, name: str, sizes: dict[str, int]) -> tuple[int, ...] | None:
        """The output's shape for inputs of these symbolic sizes, if every
        dimension is known (rank 0 counts as unknown: ORT reports an output of
        unknown rank as [] too)."""
        spec = self._outputs.get(name)
        if spec is None or not spec[0]:
            return None
        shape: list[int] = []
        for dim in spec[0]:
            if isinstance(dim, int) and dim >= 0:
                shape.append(dim)
            elif isinstance(dim, str) and dim in sizes:
                shape.append(sizes[dim])
            else:
                return None
        return tuple(shape)
