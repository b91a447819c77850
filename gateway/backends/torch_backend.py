"""Local PyTorch models, for those that do not export to ONNX: TorchScript
(torch.jit.save, `.pt`) and torch.export (torch.export.save, `.pt2`) artifacts.

torch is an optional extra (`pip install 'inference-gateway[torch]'`): it is
imported when a torch backend is built, never when this module is, so that
the runtime-only install loads and serves every other config without it.

The config declares the tensors (backends/torch_config.py). At load, one dry
forward on zeros (dynamic dimensions as 1) checks the artifact against that
declaration: a mismatch refuses to load, naming what differs, instead of
failing every request.

Inference runs in a thread pool sized to `max_concurrency` (torch releases the
GIL while it computes), under torch.inference_mode().

Threads: torch.set_num_threads is process-wide in name only. On builds whose
ATen parallel backend is OpenMP (the x86 wheels; torch.__config__.parallel_info()
says) it sets the calling thread's OpenMP thread count, and a process-wide
default that a thread reads once, on its first parallel operation. So each of
the backend's pool threads, as it starts, first settles its own count
(torch.get_num_threads() reads the default, once) and then sets
`intra_op_threads` for itself: a default another backend sets later no longer
reaches it, and two torch backends keep their own counts in one process. The
default such calls leave behind concerns only threads that never set theirs
(none of the gateway's). Builds on ATen's native pool have one count per
process, the first one set. torch's inter-op pool (TorchScript's fork) is one
per process, sized by torch (no backend may size it: it can be set only once).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gateway.backends.base import BackendLoadError
from gateway.backends.registry import BackendType, register
from gateway.backends.threaded import run_on_pool
from gateway.backends.torch_config import ArtifactFormat, TorchBackendConfig
from gateway.core.errors import BackendFailed
from gateway.core.signature import TensorSpec, format_shape

log = logging.getLogger("gateway.backends.torch")

INSTALL_HINT = "pip install 'inference-gateway[torch]'"

# Gateway datatypes -> torch dtypes (attribute names of the torch module). BYTES
# has none: the config refuses it.
TORCH_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}


class TorchLoadError(BackendLoadError):
    """A torch backend that cannot be built from its config (torch, file, device, model)."""


class OutputMismatch(Exception):
    """What the forward returned does not have the declared outputs' structure."""


def import_torch() -> Any:
    """The torch module, or a load error saying how to install it."""
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]  # an extra, absent for make lint
    except ImportError as exc:
        raise TorchLoadError(
            f"type: torch needs PyTorch, which cannot be imported here ({exc}): {INSTALL_HINT}"
        ) from None
    return torch


def _device(torch: Any, name: str) -> Any:
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        build = torch.version.cuda
        why = f"built for CUDA {build}, it sees no GPU" if build else "a CPU-only build"
        raise TorchLoadError(
            f"device {name}: CUDA is not usable here (torch {torch.__version__}: {why}); "
            "use device: cpu, or serve it where a GPU is"
        )
    count = torch.cuda.device_count()
    if (device.index or 0) >= count:
        raise TorchLoadError(
            f"device {name}: this machine has {count} CUDA device(s), 0..{count - 1}"
        )
    return device


def _load(torch: Any, path: Path, artifact: ArtifactFormat, device: Any) -> Any:
    """The artifact as a callable module on `device`."""
    try:
        if artifact == "torchscript":
            module = torch.jit.load(str(path), map_location=device)
            module.eval()  # a module scripted in training mode would run dropout
            return module
        from torch.export.passes import move_to_device_pass  # type: ignore[import-not-found, unused-ignore]  # as in import_torch

        # A file object: torch.export.load insists on the .pt2 suffix for paths.
        with path.open("rb") as file:
            program = torch.export.load(file)
        # Wherever it was exported (its weights and the devices its graph names).
        return move_to_device_pass(program, device).module()
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise TorchLoadError(f"torch cannot load {path} as {artifact}: {exc}") from None


def _set_threads(torch: Any, threads: int) -> None:
    torch.get_num_threads()  # settles this thread's count from the default (module docstring)
    torch.set_num_threads(threads)


class TorchBackend:
    """A TorchScript or torch.export module behind the Backend protocol."""

    def __init__(self, name: str, config: TorchBackendConfig, model_path: Path) -> None:
        self.name = name
        self.config = config
        self.path = model_path
        if not model_path.is_file():
            raise TorchLoadError(f"model file not found: {model_path}")
        torch = import_torch()
        self._torch = torch
        self.device = _device(torch, config.device)
        self.format = config.artifact_format()
        self._module = _load(torch, model_path, self.format, self.device)
        self._inputs = [TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in config.inputs]
        self._outputs = [TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in config.outputs]
        self._output_names = [s.name for s in self._outputs]
        # The cores this process may use (taskset, cgroup cpusets), not the machine's.
        self.intra_op_threads = config.intra_op_threads or max(
            1, len(os.sched_getaffinity(0)) // config.max_concurrency
        )
        # Set by the dry run: a model that writes into its inputs gets copies, so
        # that a fallback, hedge or shadow attempt sees the caller's tensors.
        self.copies_inputs = False
        # Runs executing on the pool's threads, for busy(): a run whose caller's
        # deadline passed goes on until torch returns.
        self._executing = 0
        self._executing_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=config.max_concurrency,
            thread_name_prefix=f"torch-{name}",
            initializer=_set_threads,
            initargs=(torch, self.intra_op_threads),
        )
        try:
            # On a pool thread: with the threads the runs will have.
            self._pool.submit(self._dry_run).result()
        except BaseException:
            self._pool.shutdown(wait=False, cancel_futures=True)
            raise
        log.info(
            "backend %s: %s (%s) on %s, intra_op_threads=%d%s",
            name,
            model_path,
            self.format,
            self.device,
            self.intra_op_threads,
            ", copying its inputs (the model writes into them)" if self.copies_inputs else "",
        )

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return list(self._inputs), list(self._outputs)

    def ready(self) -> bool:
        return True

    def busy(self) -> bool:
        return self._executing > 0

    def _dry_run(self) -> None:
        torch = self._torch
        zeros = [
            torch.zeros(
                [1 if d == -1 else d for d in spec.shape],
                dtype=getattr(torch, TORCH_DTYPES[spec.datatype]),
                device=self.device,
            )
            for spec in self._inputs
        ]
        described = ", ".join(f"{s.name} {s.describe()}" for s in self._inputs)
        try:
            with torch.inference_mode():
                result = self._module(*zeros)
            named = self._named(result)
        except OutputMismatch as exc:
            raise TorchLoadError(f"the model does not return the declared outputs: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - whatever the model raises, the load fails
            raise TorchLoadError(
                f"a dry run on zeros failed (the declared inputs, in the forward's order, "
                f"dynamic dimensions as 1: {described}): {exc}"
            ) from None
        problems = [p for spec in self._outputs for p in self._problems(spec, named[spec.name])]
        if problems:
            raise TorchLoadError(
                "the model's outputs differ from those declared (dry run on zeros, dynamic "
                f"dimensions as 1): {'; '.join(problems)}"
            )
        # In-place operations bump a tensor's version counter, inference mode or not.
        self.copies_inputs = any(t._version != 0 for t in zeros)

    def _problems(self, spec: TensorSpec, tensor: Any) -> list[str]:
        datatype = _datatype_of(tensor.dtype)
        shape = tuple(tensor.shape)
        fits = len(shape) == len(spec.shape) and all(
            d == -1 or d == s for d, s in zip(spec.shape, shape)
        )
        if datatype == spec.datatype and fits:
            return []
        return [
            f"output '{spec.name}' is declared {spec.describe()}, "
            f"the model returned {datatype} {format_shape(shape)}"
        ]

    def _named(self, result: Any) -> dict[str, Any]:
        """The forward's result by declared output name; OutputMismatch if its
        structure is not that of the declared outputs."""
        tensor = self._torch.Tensor
        names = self._output_names
        if isinstance(result, dict):
            if set(result) != set(names):
                raise OutputMismatch(
                    f"it returned a dict of {sorted(map(str, result))}, the declared outputs "
                    f"are {sorted(names)}"
                )
            values = [result[name] for name in names]
        elif isinstance(result, (tuple, list)):
            values = list(result)
        else:
            values = [result]
        if len(values) != len(names):
            raise OutputMismatch(
                f"it returned {len(values)} outputs, the config declares {len(names)} ({names})"
            )
        for name, value in zip(names, values):
            if not isinstance(value, tensor):
                raise OutputMismatch(f"output '{name}' is a {type(value).__name__}, not a tensor")
        return dict(zip(names, values))

    def _tensor(self, array: np.ndarray) -> Any:
        # A request body's buffer is read-only (torch may not share it), and a model
        # that writes into its inputs must not write into the caller's.
        if self.copies_inputs or not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, order="C", copy=True)
        return self._torch.from_numpy(array).to(self.device)

    def _run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        with self._executing_lock:
            self._executing += 1
        try:
            return self._execute(inputs, outputs)
        finally:
            with self._executing_lock:
                self._executing -= 1

    def _execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        torch = self._torch
        try:
            with torch.inference_mode():
                result = self._module(*(self._tensor(inputs[s.name]) for s in self._inputs))
                named = self._named(result)
                return {name: named[name].cpu().numpy() for name in outputs}
        except OutputMismatch as exc:
            raise BackendFailed(
                f"backend '{self.name}': the model's answer does not have the declared outputs: "
                f"{exc}",
                reason="bad_output",
            ) from None
        except Exception as exc:  # noqa: BLE001 - torch raises its own exception types
            raise BackendFailed(f"backend '{self.name}': torch failed: {exc}") from None

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        return await run_on_pool(self._pool, self.name, deadline, self._run, inputs, outputs)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _datatype_of(dtype: Any) -> str:
    """The gateway datatype of a torch dtype, else torch's name for it."""
    name = str(dtype).removeprefix("torch.")
    for datatype, torch_name in TORCH_DTYPES.items():
        if torch_name == name:
            return datatype
    return name


def _build(
    name: str, config: TorchBackendConfig, resolve_path: Callable[[str], Path]
) -> TorchBackend:
    return TorchBackend(name, config, resolve_path(config.path))


BACKEND_TYPE = register(
    BackendType(
        name="torch",
        config=TorchBackendConfig,
        build=_build,
        kinds=frozenset({"tensor"}),
        # The artifact and how it is read; the tensors' order, which names each
        # result; the device, whose kernels round differently.
        cache_identity=("type", "path", "format", "device", "inputs", "outputs"),
        admission="queue",
    )
)
