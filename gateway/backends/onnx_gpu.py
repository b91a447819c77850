"""The GPU execution providers' options: their config keys (`cuda`, `tensorrt` of
an onnx backend) and the (provider name, options) pairs a session on one
device is created with.

Option names and values are ONNX Runtime's, every value a string (its Python
API turns whatever it is given into one with `str()`):
https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#configuration-options
https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html#configurations
Flags are sent as "1" and "0": ORT parses some of them as bool and others (the
TensorRT flags of older releases) as int, and both parsers take these.

Options of a provider the installed onnxruntime does not offer are dropped
with the provider (`select_providers` never chooses it), never sent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from gateway.config.schema import Section

ArenaExtendStrategy = Literal["next_power_of_two", "same_as_requested"]
CudnnConvAlgoSearch = Literal["exhaustive", "heuristic", "default"]

# Our lower-case config words -> ORT's enum names.
_ARENA_EXTEND = {"next_power_of_two": "kNextPowerOfTwo", "same_as_requested": "kSameAsRequested"}
_CONV_ALGO_SEARCH = {"exhaustive": "EXHAUSTIVE", "heuristic": "HEURISTIC", "default": "DEFAULT"}

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


class CudaOptions(Section):
    """CUDAExecutionProvider's options. The defaults are ORT's own."""

    # Bytes the device memory arena may hold (None: no limit). Other CUDA
    # allocations (cuDNN workspaces, the CUDA context) come on top of it.
    gpu_mem_limit: int | None = Field(None, ge=1)
    # next_power_of_two rounds each extension up (fewer, larger allocations);
    # same_as_requested allocates what is asked (tighter when memory is short).
    arena_extend_strategy: ArenaExtendStrategy = "next_power_of_two"
    # exhaustive benchmarks the convolution algorithms once per new input shape:
    # the fastest runs, but a slow first run of every shape (batch size).
    cudnn_conv_algo_search: CudnnConvAlgoSearch = "exhaustive"
    # ORT warns that separate copy streams (false) may race in some models.
    do_copy_in_default_stream: bool = True


class TensorrtOptions(Section):
    """TensorrtExecutionProvider's options. Paths resolve like the backend's `path`."""

    fp16: bool = False
    int8: bool = False
    # A calibration table for a non-QDQ model in int8 (a QDQ model carries its
    # scales and must have none). Checked to exist when the backend loads.
    int8_calibration_table: str | None = None
    # Set: built engines are kept there and reused by the next load (building
    # one takes seconds to minutes). Created at load if missing.
    engine_cache_dir: str | None = None
    # Set: TensorRT's kernel timings are kept there, which speeds up building
    # engines for other shapes and models.
    timing_cache_dir: str | None = None
    # Bytes of device memory TensorRT may use to build an engine (None: ORT's default).
    max_workspace_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _table_needs_int8(self) -> TensorrtOptions:
        if self.int8_calibration_table is not None and not self.int8:
            raise ValueError(
                "int8_calibration_table: only read in int8 mode; set int8: true or remove it"
            )
        return self


def _flag(value: bool) -> str:
    return "1" if value else "0"


def cuda_provider_options(options: CudaOptions | None, device_id: int) -> dict[str, str]:
    """CUDAExecutionProvider's options for a session on `device_id`; without
    `cuda` in the config, ORT's defaults (only the device is named)."""
    mapped = {"device_id": str(device_id)}
    if options is None:
        return mapped
    if options.gpu_mem_limit is not None:
        mapped["gpu_mem_limit"] = str(options.gpu_mem_limit)
    mapped["arena_extend_strategy"] = _ARENA_EXTEND[options.arena_extend_strategy]
    mapped["cudnn_conv_algo_search"] = _CONV_ALGO_SEARCH[options.cudnn_conv_algo_search]
    mapped["do_copy_in_default_stream"] = _flag(options.do_copy_in_default_stream)
    return mapped


def tensorrt_provider_options(
    options: TensorrtOptions | None, device_id: int, resolve_path: Callable[[str], Path]
) -> dict[str, str]:
    """TensorrtExecutionProvider's options for a session on `device_id`, paths
    made absolute with `resolve_path` (ORT joins a relative calibration table
    name to the engine cache directory; an absolute one is taken as it is)."""
    mapped = {"device_id": str(device_id)}
    if options is None:
        return mapped
    mapped["trt_fp16_enable"] = _flag(options.fp16)
    mapped["trt_int8_enable"] = _flag(options.int8)
    if options.int8_calibration_table is not None:
        mapped["trt_int8_calibration_table_name"] = str(
            resolve_path(options.int8_calibration_table)
        )
    if options.engine_cache_dir is not None:
        mapped["trt_engine_cache_enable"] = "1"
        mapped["trt_engine_cache_path"] = str(resolve_path(options.engine_cache_dir))
    if options.timing_cache_dir is not None:
        mapped["trt_timing_cache_enable"] = "1"
        mapped["trt_timing_cache_path"] = str(resolve_path(options.timing_cache_dir))
    if options.max_workspace_size is not None:
        mapped["trt_max_workspace_size"] = str(options.max_workspace_size)
    return mapped


def execution_providers(
    chosen: list[str],
    device_id: int,
    cuda: CudaOptions | None,
    tensorrt: TensorrtOptions | None,
    resolve_path: Callable[[str], Path] = Path,
) -> list[tuple[str, dict[str, str]]]:
    """What `ort.InferenceSession(providers=...)` takes for a session on
    `device_id`: each chosen provider (`select_providers`) with its options."""
    pairs: list[tuple[str, dict[str, str]]] = []
    for name in chosen:
        if name == CUDA:
            pairs.append((name, cuda_provider_options(cuda, device_id)))
        elif name == TENSORRT:
            pairs.append((name, tensorrt_provider_options(tensorrt, device_id, resolve_path)))
        else:
            pairs.append((name, {}))
    return pairs
