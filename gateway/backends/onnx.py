"""Local ONNX Runtime sessions.

Inference runs in a thread pool sized to the backend's `max_concurrency`:
ONNX Runtime releases the GIL while it computes, so the event loop keeps
serving other requests meanwhile.

A backend that tokenizes text bounds what one request may cost
(docs/configuration.md#request-limits): at most `tokenizer.max_texts` texts per
request, refused before it is queued (`check_request`), and at most
`max_execution_rows` texts per run of the graph: a larger request or batch is
tokenized as one (so its padding, and its answer, are those of a single run)
and run in chunks of that many rows, which bounds ONNX Runtime's memory.

The config is onnx_config.py's. GPUs (docs/configuration.md#backendsname-with-type-onnx): the `cuda` and
`tensorrt` options go to their providers (onnx_gpu.py) when this onnxruntime
build offers them, and are dropped with them otherwise; onnx_sessions.py
checks which provider and device each session really got. With several
`devices`, a session per device; each execution runs on the least busy one
(onnx_devices.py), within the backend's `max_concurrency` executions in all.
`io_binding` runs through onnx_iobinding.py. With one device and no IO
binding, an execution costs what it did before either existed: one attribute
check picks `self.session.run`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gateway.backends.base import BackendLoadError
from gateway.backends.onnx_config import OnnxBackendConfig
from gateway.backends.onnx_devices import DeviceSpread
from gateway.backends.onnx_gpu import (
    execution_providers,
)
from gateway.backends.onnx_iobinding import IoBindingRunner, NotBindable, binding_device
from gateway.backends.onnx_sessions import check_gpu_options, check_session
from gateway.backends.preprocess import TextTokenizer
from gateway.backends.providers import (
    ProviderUnavailable,
    select_providers,
    uses_gpu,
)
from gateway.backends.registry import BackendType, register
from gateway.backends.threaded import run_on_pool
from gateway.core.datatypes import NUMPY_DTYPES, ONNX_TYPES
from gateway.core.errors import BackendFailed, InvalidInput
from gateway.core.signature import TensorSpec

log = logging.getLogger("gateway.backends.onnx")

# Texts per run of a tokenizing backend without `batching` (with it: max_batch_size).
DEFAULT_TEXT_ROWS = 32

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _spec_of(arg: ort.NodeArg) -> TensorSpec:
    datatype = ONNX_TYPES.get(arg.type, arg.type)
    # Symbolic or unknown dimensions accept any size.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


class OnnxBackend:
    """An ONNX Runtime session behind the Backend protocol."""

    def __init__(
        self,
        name: str,
        config: OnnxBackendConfig,
        model_path: Path,
        tokenizer: TextTokenizer | None = None,
        resolve_path: Callable[[str], Path] = Path,
    ) -> None:
        """`resolve_path` turns the paths of `config.tensorrt` into files, as the
        loader's resolves those of the config (default: as they are written)."""
        self.name = name
        self.config = config
        self.path = model_path
        if not model_path.is_file():
            raise BackendLoadError(f"model file not found: {model_path}")
        available = ort.get_available_providers()
        try:
            providers = select_providers(
                list(config.providers), available, require_gpu=config.require_gpu
            )
        except ProviderUnavailable as exc:
            raise BackendLoadError(str(exc)) from None
        devices = list(config.devices)
        if len(devices) > 1 and not uses_gpu(providers):
            raise BackendLoadError(
                f"devices: {devices} lists {len(devices)} devices, but this onnxruntime build "
                f"offers none of the GPU providers in providers {list(config.providers)} "
                f"(available: {available}); on the CPU a backend runs one session: set "
                "devices: [0], or install the gpu extra"
            )
        check_gpu_options(name, config, providers, available, resolve_path)
        options = ort.SessionOptions()
        options.graph_optimization_level = _OPTIMIZATION[config.graph_optimization]
        # The cores this process may use (taskset, cgroup cpusets), not the machine's:
        # more compute threads than cores only makes them preempt each other.
        options.intra_op_num_threads = config.intra_op_threads or max(
            1, len(os.sched_getaffinity(0)) // config.max_concurrency
        )
        if config.inter_op_threads:
            options.inter_op_num_threads = config.inter_op_threads
        self.sessions: list[ort.InferenceSession] = []
        for device in devices:
            pairs = execution_providers(
                providers, device, config.cuda, config.tensorrt, resolve_path
            )
            try:
                session = ort.InferenceSession(
                    str(model_path), sess_options=options, providers=pairs
                )
            except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
                raise BackendLoadError(f"onnxruntime cannot load {model_path}: {exc}") from None
            check_session(config, session, device)
            self.sessions.append(session)
            log.info(
                "backend %s: %s on providers %s (device %d; requested %s, intra_op_threads=%d)",
                name,
                model_path,
                session.get_providers(),
                device,
                pairs,
                options.intra_op_num_threads,
            )
        # The first device's: what a backend of one device runs on.
        self.session = self.sessions[0]
        self.providers: list[str] = self.session.get_providers()
        # Each device's run (None: `self.session.run`, the one device's, looked up
        # per run) and, with several devices, which one is least busy.
        self._runners: list[Callable[[list[str], dict[str, np.ndarray]], list[np.ndarray]]] | None
        self._runners = None
        if config.io_binding:
            try:
                self._runners = [
                    IoBindingRunner(s, *binding_device(s.get_providers(), d))
                    for d, s in zip(devices, self.sessions)
                ]
            except NotBindable as exc:
                raise BackendLoadError(f"io_binding: {exc}") from None
        elif len(self.sessions) > 1:
            self._runners = [s.run for s in self.sessions]
        self._spread = DeviceSpread(len(devices)) if len(devices) > 1 else None
        graph_inputs = [_spec_of(a) for a in self.session.get_inputs()]
        self._tokenizer = tokenizer
        if tokenizer is not None:
            missing = tokenizer.consumes - {s.name for s in graph_inputs}
            if missing:
                raise BackendLoadError(
                    f"the tokenizer feeds {sorted(missing)}, which the graph does not take "
                    f"(graph inputs: {[s.name for s in graph_inputs]})"
                )
            graph_inputs = [TensorSpec(tokenizer.input, "BYTES", (-1,))] + [
                s for s in graph_inputs if s.name not in tokenizer.consumes
            ]
        self._inputs = graph_inputs
        # Rows per run of the graph (None: any): bounded for text, whose cost per row
        # (max_length tokens through a transformer) is what makes memory grow.
        self.max_execution_rows: int | None = None
        if tokenizer is not None:
            rows = config.batching.max_batch_size if config.batching else DEFAULT_TEXT_ROWS
            self.max_execution_rows = min(rows, tokenizer.max_texts)
        self._outputs = [_spec_of(a) for a in self.session.get_outputs()]
        self._string_inputs = {s.name for s in self._inputs if s.datatype == "BYTES"}
        # Runs executing on the pool's threads, for busy(): a run whose caller's
        # deadline passed goes on until ONNX Runtime returns.
        self._executing = 0
        self._executing_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=config.max_concurrency, thread_name_prefix=f"onnx-{name}"
        )

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return self._inputs, self._outputs

    def ready(self) -> bool:
        return True

    def busy(self) -> bool:
        return self._executing > 0

    def check_request(self, inputs: dict[str, np.ndarray]) -> None:
        """Refuse (400) a request over the per-request bound, before it is queued."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            return
        texts = inputs.get(tokenizer.input)
        if texts is not None and texts.size > tokenizer.max_texts:
            raise InvalidInput(
                f"input '{tokenizer.input}': {texts.size} texts, at most {tokenizer.max_texts} "
                f"per request (backend '{self.name}': tokenizer.max_texts)"
            )

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        spread = self._spread
        with self._executing_lock:
            self._executing += 1
            device = 0 if spread is None else spread.acquire()
        try:
            return self._execute(feeds, outputs, device)
        finally:
            with self._executing_lock:
                self._executing -= 1
                if spread is not None:
                    spread.release(device)

    def _execute(
        self, feeds: dict[str, np.ndarray], outputs: list[str], device: int
    ) -> dict[str, np.ndarray]:
        if self._tokenizer is not None:
            texts = feeds.pop(self._tokenizer.input)
            if texts.size == 0:
                # No text, no run: a transformer graph fails on zero tokens.
                empty = self._empty_answer(outputs)
                if empty is not None:
                    return empty
            feeds.update(self._tokenizer(texts))
        for name in self._string_inputs & feeds.keys():
            # ORT string tensors hold str, the gateway's BYTES hold bytes.
            feeds[name] = np.vectorize(_to_str, otypes=[object])(feeds[name])
        chunk = self.max_execution_rows
        total = None if chunk is None else _rows(feeds, chunk)
        if chunk is not None and total is not None:
            results = self._run_in_chunks(feeds, outputs, chunk, total, device)
        else:
            results = self._run_graph(feeds, outputs, device)
        answer = {}
        for name, value in zip(outputs, results):
            if value.dtype.kind == "U" or value.dtype == object:
                value = np.vectorize(_to_bytes, otypes=[object])(value)
            answer[name] = value
        return answer

    def _empty_answer(self, outputs: list[str]) -> dict[str, np.ndarray] | None:
        """Outputs of zero rows (other unknown dimensions 0), when the graph says how."""
        specs = {s.name: s for s in self._outputs}
        answer = {}
        for name in outputs:
            spec = specs.get(name)
            if spec is None or not spec.shape or spec.datatype not in NUMPY_DTYPES:
                return None
            shape = (0, *(max(d, 0) for d in spec.shape[1:]))
            answer[name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
        return answer

    def _run_graph(
        self, feeds: dict[str, np.ndarray], outputs: list[str], device: int
    ) -> list[np.ndarray]:
        """One run of the graph on the device's session (index into `devices`)."""
        runners = self._runners
        try:
            if runners is None:
                results: list[np.ndarray] = self.session.run(outputs, feeds)
            else:
                results = runners[device](outputs, feeds)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise BackendFailed(f"backend '{self.name}': onnxruntime failed: {exc}") from None
        return results

    def _run_in_chunks(
        self,
        feeds: dict[str, np.ndarray],
        outputs: list[str],
        chunk: int,
        total: int,
        device: int,
    ) -> list[np.ndarray]:
        """Run `chunk` of the `total` rows at a time (row views, no copies); join
        each output's rows."""
        parts = []
        for start in range(0, total, chunk):
            rows = min(chunk, total - start)
            part = self._run_graph(
                {k: v[start : start + rows] for k, v in feeds.items()}, outputs, device
            )
            for name, value in zip(outputs, part):
                if value.ndim == 0 or value.shape[0] != rows:
                    raise BackendFailed(
                        f"backend '{self.name}' returned output '{name}' with shape "
                        f"{list(value.shape)} for {rows} rows; cannot join the chunks of a run "
                        f"of {total} rows (max_execution_rows {chunk})",
                        reason="bad_output",
                    )
            parts.append(part)
        joined = []
        for index, name in enumerate(outputs):
            pieces = [part[index] for part in parts]
            if any(p.shape[1:] != pieces[0].shape[1:] for p in pieces):
                raise BackendFailed(
                    f"backend '{self.name}' returned output '{name}' in chunk shapes "
                    f"{[list(p.shape) for p in pieces]}; cannot join them",
                    reason="bad_output",
                )
            joined.append(np.concatenate(pieces))
        return joined

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        return await run_on_pool(self._pool, self.name, deadline, self._run, dict(inputs), outputs)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _rows(feeds: dict[str, np.ndarray], chunk: int) -> int | None:
    """The rows of `feeds` when there are more than `chunk` and every feed has them
    (so the run can be split), else None."""
    total: int | None = None
    for value in feeds.values():
        if value.ndim == 0 or (total is not None and value.shape[0] != total):
            return None
        total = value.shape[0]
    return total if total is not None and total > chunk else None


def _to_str(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _to_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _build(
    name: str, config: OnnxBackendConfig, resolve_path: Callable[[str], Path]
) -> OnnxBackend:
    tokenizer = None
    if config.tokenizer is not None:
        tokenizer = TextTokenizer(config.tokenizer, resolve_path(config.tokenizer.path))
    return OnnxBackend(name, config, resolve_path(config.path), tokenizer, resolve_path)


BACKEND_TYPE = register(
    BackendType(
        name="onnx",
        config=OnnxBackendConfig,
        build=_build,
        kinds=frozenset({"tensor"}),
        # The graph, the tokenizer that turns text into its inputs, and TensorRT's
        # options (fp16 and int8 change the answers).
        cache_identity=("type", "path", "tokenizer", "tensorrt"),
        admission="queue",
    )
)
