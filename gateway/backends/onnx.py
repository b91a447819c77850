"""Local ONNX Runtime sessions.

Inference runs in a thread pool sized to the backend's `max_concurrency`:
ONNX Runtime releases the GIL while it computes, so the event loop keeps
serving other requests meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gateway.backends.preprocess import TextTokenizer
from gateway.backends.providers import ProviderUnavailable, select_providers, uses_gpu
from gateway.config.schema import OnnxBackendConfig
from gateway.core.datatypes import ONNX_TYPES
from gateway.core.errors import BackendFailed, DeadlineExceeded
from gateway.core.signature import TensorSpec

log = logging.getLogger("gateway.backends.onnx")

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class BackendLoadError(Exception):
    """A backend that cannot be built from its config (file, providers, model)."""


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
    ) -> None:
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
        options = ort.SessionOptions()
        options.graph_optimization_level = _OPTIMIZATION[config.graph_optimization]
        # The cores this process may use (taskset, cgroup cpusets), not the machine's:
        # more compute threads than cores only makes them preempt each other.
        options.intra_op_num_threads = config.intra_op_threads or max(
            1, len(os.sched_getaffinity(0)) // config.max_concurrency
        )
        if config.inter_op_threads:
            options.inter_op_num_threads = config.inter_op_threads
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=providers
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise BackendLoadError(f"onnxruntime cannot load {model_path}: {exc}") from None
        self.providers: list[str] = self.session.get_providers()
        if config.require_gpu and not uses_gpu(self.providers):
            raise BackendLoadError(
                f"require_gpu is set but the session runs on {self.providers} "
                "(no usable GPU: onnxruntime fell back to CPU)"
            )
        log.info(
            "backend %s: %s on providers %s (requested %s, intra_op_threads=%d)",
            name,
            model_path,
            self.providers,
            providers,
            options.intra_op_num_threads,
        )
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

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        with self._executing_lock:
            self._executing += 1
        try:
            return self._execute(feeds, outputs)
        finally:
            with self._executing_lock:
                self._executing -= 1

    def _execute(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        if self._tokenizer is not None:
            feeds.update(self._tokenizer(feeds.pop(self._tokenizer.input)))
        for name in self._string_inputs & feeds.keys():
            # ORT string tensors hold str, the gateway's BYTES hold bytes.
            feeds[name] = np.vectorize(_to_str, otypes=[object])(feeds[name])
        try:
            results = self.session.run(outputs, feeds)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise BackendFailed(f"backend '{self.name}': onnxruntime failed: {exc}") from None
        answer = {}
        for name, value in zip(outputs, results):
            if value.dtype.kind == "U" or value.dtype == object:
                value = np.vectorize(_to_bytes, otypes=[object])(value)
            answer[name] = value
        return answer

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], timeout_s: float | None
    ) -> dict[str, np.ndarray]:
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, self._run, dict(inputs), outputs
        )
        if timeout_s is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"backend '{self.name}' did not answer within the deadline"
            ) from None

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _to_str(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _to_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)
