"""The config of `type: onnx` backends (docs/configuration.md#backendsname-with-type-onnx),
validated once at load without ONNX Runtime: what `gateway check` can say
about a config written for another machine (a GPU one) where it is written.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from gateway.backends.onnx_gpu import CudaOptions, TensorrtOptions
from gateway.backends.providers import GPU_PROVIDERS, PROVIDER_NAMES
from gateway.config.schema import (
    BackendCommon,
    BatchingConfig,
    ProviderName,
    TokenizerConfig,
    cpu_only,
)


class OnnxBackendConfig(BackendCommon):
    keys_of_other_types: ClassVar[dict[str, str]] = {
        "retries": "an execution that failed fails the same way again; to try elsewhere, "
        "add a fallback backend to the model's route",
    }

    type: Literal["onnx"]
    path: str
    # Optional latency bound on the queue: refuse at once what would wait longer
    # (predicted from the running executions and the recent execution time).
    max_queue_wait_ms: float | None = Field(None, ge=0)
    # Tried in order, keeping those this onnxruntime build offers.
    providers: list[ProviderName] = Field(default_factory=cpu_only, min_length=1)
    # Refuse to load rather than fall back to CPU when no GPU provider is usable.
    require_gpu: bool = False
    # None: cores / max_concurrency, so concurrent runs do not oversubscribe the CPU.
    intra_op_threads: int | None = Field(None, ge=1)
    inter_op_threads: int | None = Field(None, ge=1)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    batching: BatchingConfig | None = None
    tokenizer: TokenizerConfig | None = None
    # Options of the GPU providers (onnx_gpu.py); each needs its provider in `providers`.
    cuda: CudaOptions | None = None
    tensorrt: TensorrtOptions | None = None
    # GPU device ids: a session on each, executions spread over them. More than
    # one needs a GPU provider; `max_concurrency` stays the backend's total.
    devices: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0], min_length=1)
    # Run through IO binding: outputs of known shape preallocated on the device.
    io_binding: bool = False

    @model_validator(mode="after")
    def _gpu_keys_fit(self) -> OnnxBackendConfig:
        for key, provider in (("cuda", self.cuda), ("tensorrt", self.tensorrt)):
            if provider is not None and key not in self.providers:
                raise ValueError(
                    f"{key}: options of a provider that providers {list(self.providers)} does not "
                    f"list; add {key} to providers or remove {key}"
                )
        devices = self.devices
        twice = sorted({d for d in devices if devices.count(d) > 1})
        if twice:
            raise ValueError(f"devices: {twice} listed more than once")
        if len(devices) > 1:
            if not any(PROVIDER_NAMES[p] in GPU_PROVIDERS for p in self.providers):
                raise ValueError(
                    f"devices: {len(devices)} devices need a GPU provider (cuda or tensorrt) in "
                    f"providers {list(self.providers)}; on the CPU a backend runs one session "
                    "(devices: [0])"
                )
            if self.max_concurrency < len(devices):
                raise ValueError(
                    f"max_concurrency: {self.max_concurrency} is below the number of devices "
                    f"({len(devices)}): it counts the backend's executions on all its devices, "
                    "so each device needs at least one"
                )
        return self
