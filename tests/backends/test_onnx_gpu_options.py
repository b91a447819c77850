"""The GPU keys of an onnx backend (issue 19): the provider options each maps to,
the values its config refuses, and what this CPU build of onnxruntime does with
them (drops them with their providers, or refuses what needs a GPU).

There is no GPU here: the GPU side of a session is checked on a GPU machine by
`make gpu-check` (loadtests/gpu_check.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from pydantic import ValidationError

from gateway.backends.base import BackendLoadError
from gateway.backends.onnx import BACKEND_TYPE, OnnxBackend, OnnxBackendConfig
from gateway.backends.onnx_devices import DeviceSpread
from gateway.backends.onnx_gpu import (
    CudaOptions,
    TensorrtOptions,
    cuda_provider_options,
    execution_providers,
    tensorrt_provider_options,
)
from gateway.backends.providers import select_providers
from gateway.config.loader import ConfigError, parse_config
from tests.conftest import DIGITS_MODEL

CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
ALL = ["tensorrt", "cuda", "cpu"]

cpu_build_only = pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="checks what a CPU build of onnxruntime does with GPU keys",
)


def pixels(rows: int) -> np.ndarray:
    return np.random.default_rng(rows).uniform(0, 16, (rows, 64)).astype(np.float32)


def digits_config(**keys: object) -> OnnxBackendConfig:
    return OnnxBackendConfig.model_validate(
        {"type": "onnx", "path": str(DIGITS_MODEL), "intra_op_threads": 1, **keys}
    )


# -- the mapping to ONNX Runtime's provider options ----------------------------------


def test_without_options_a_gpu_provider_is_only_told_its_device() -> None:
    assert cuda_provider_options(None, 3) == {"device_id": "3"}
    assert tensorrt_provider_options(None, 3, Path) == {"device_id": "3"}


def test_cuda_options_map_to_their_ort_keys_and_values() -> None:
    defaults = cuda_provider_options(CudaOptions(), 0)
    assert defaults == {
        "device_id": "0",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": "1",
    }
    options = CudaOptions(
        gpu_mem_limit=2 * 1024**3,
        arena_extend_strategy="same_as_requested",
        cudnn_conv_algo_search="heuristic",
        do_copy_in_default_stream=False,
    )
    assert cuda_provider_options(options, 1) == {
        "device_id": "1",
        "gpu_mem_limit": "2147483648",
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": "0",
    }
    default_search = CudaOptions(cudnn_conv_algo_search="default")
    assert cuda_provider_options(default_search, 0)["cudnn_conv_algo_search"] == "DEFAULT"


def test_tensorrt_options_map_to_their_ort_keys_with_resolved_paths(tmp_path: Path) -> None:
    assert tensorrt_provider_options(TensorrtOptions(), 0, Path) == {
        "device_id": "0",
        "trt_fp16_enable": "0",
        "trt_int8_enable": "0",
    }
    options = TensorrtOptions(
        fp16=True,
        int8=True,
        int8_calibration_table="calibration.flatbuffers",
        engine_cache_dir="engines",
        timing_cache_dir="timings",
        max_workspace_size=1 << 30,
    )
    mapped = tensorrt_provider_options(options, 2, lambda p: tmp_path / p)
    assert mapped == {
        "device_id": "2",
        "trt_fp16_enable": "1",
        "trt_int8_enable": "1",
        # Absolute: ORT would join a relative name to the engine cache directory.
        "trt_int8_calibration_table_name": str(tmp_path / "calibration.flatbuffers"),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(tmp_path / "engines"),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(tmp_path / "timings"),
        "trt_max_workspace_size": "1073741824",
    }


def test_each_chosen_provider_gets_its_own_options_for_the_device() -> None:
    cuda, trt = CudaOptions(gpu_mem_limit=1000), TensorrtOptions(fp16=True)
    chosen = select_providers(ALL, GPU_BUILD, require_gpu=False)
    pairs = execution_providers(chosen, 1, cuda, trt)
    assert [name for name, _ in pairs] == GPU_BUILD
    assert pairs[0][1] == tensorrt_provider_options(trt, 1, Path)
    assert pairs[1][1] == cuda_provider_options(cuda, 1)
    assert pairs[2] == ("CPUExecutionProvider", {})


def test_options_of_providers_the_build_lacks_are_dropped_with_them() -> None:
    chosen = select_providers(ALL, CPU_ONLY, require_gpu=False)
    pairs = execution_providers(chosen, 0, CudaOptions(), TensorrtOptions(int8=True))
    assert pairs == [("CPUExecutionProvider", {})]


# -- what the config refuses -------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"providers": ["cuda"], "cuda": {"gpu_mem_limit": 0}}, "cuda.gpu_mem_limit"),
        (
            {"providers": ["cuda"], "cuda": {"arena_extend_strategy": "kSameAsRequested"}},
            "cuda.arena_extend_strategy",
        ),
        (
            {"providers": ["cuda"], "cuda": {"cudnn_conv_algo_search": "EXHAUSTIVE"}},
            "cuda.cudnn_conv_algo_search",
        ),
        ({"providers": ["cuda"], "cuda": {"gpu_mem_limt": 1}}, "cuda.gpu_mem_limt"),
        (
            {"providers": ["tensorrt"], "tensorrt": {"max_workspace_size": -1}},
            "tensorrt.max_workspace_size",
        ),
        ({"providers": ["tensorrt"], "tensorrt": {"fp16": "maybe"}}, "tensorrt.fp16"),
        ({"devices": []}, "devices"),
        ({"devices": [-1]}, "devices.0"),
        ({"io_binding": "sometimes"}, "io_binding"),
    ],
)
def test_bad_values_are_refused_naming_the_field(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        digits_config(**keys)
    located = [".".join(str(p) for p in error["loc"]) for error in caught.value.errors()]
    assert message in located, located


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"cuda": {}}, r"cuda: options of a provider that providers \['cpu'\] does not list"),
        ({"providers": ["cuda"], "tensorrt": {}}, "tensorrt: options of a provider"),
        (
            {"providers": ["tensorrt"], "tensorrt": {"int8_calibration_table": "t.cache"}},
            "int8_calibration_table: only read in int8 mode",
        ),
        (
            {"providers": ["cuda"], "devices": [0, 1, 0], "max_concurrency": 3},
            r"devices: \[0\] listed more than once",
        ),
        ({"devices": [0, 1], "max_concurrency": 2}, "devices: 2 devices need a GPU provider"),
        (
            {"providers": ["cuda"], "devices": [0, 1], "max_concurrency": 1},
            "max_concurrency: 1 is below the number of devices",
        ),
    ],
)
def test_keys_that_cannot_work_together_are_refused(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        digits_config(**keys)


def test_the_loader_names_the_yaml_path_of_a_bad_gpu_key() -> None:
    text = yaml.safe_dump(
        {
            "backends": {
                "d": {
                    "type": "onnx",
                    "path": str(DIGITS_MODEL),
                    "providers": ["cuda", "cpu"],
                    "cuda": {"cudnn_conv_algo_search": "fastest"},
                    "devices": [0, 1],
                    "max_concurrency": 1,
                }
            },
            "models": {"m": {"kind": "embeddings", "route": {"backends": ["d"]}}},
        }
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    report = caught.value.report()
    assert "backends.d.cuda.cudnn_conv_algo_search" in report
    assert "'exhaustive', 'heuristic' or 'default'" in report


# -- on this CPU build ---------------------------------------------------------------


@cpu_build_only
def test_gpu_options_load_and_serve_on_cpu_with_the_options_dropped(tmp_path: Path) -> None:
    table = tmp_path / "calibration.flatbuffers"
    table.write_bytes(b"not read on CPU")
    config = digits_config(
        providers=ALL,
        cuda={"gpu_mem_limit": 1 << 30, "cudnn_conv_algo_search": "heuristic"},
        tensorrt={
            "fp16": True,
            "int8": True,
            "int8_calibration_table": str(table),
            "engine_cache_dir": str(tmp_path / "engines"),
            "timing_cache_dir": str(tmp_path / "timings"),
        },
    )
    gpu = OnnxBackend("gpu-options", config, DIGITS_MODEL)
    plain = OnnxBackend("plain", digits_config(), DIGITS_MODEL)
    assert gpu.providers == ["CPUExecutionProvider"]
    # TensorRT is not there to use its cache directories: none is made.
    assert not (tmp_path / "engines").exists() and not (tmp_path / "timings").exists()

    async def answers() -> tuple[np.ndarray, np.ndarray]:
        try:
            got = await gpu.infer({"pixels": pixels(5)}, ["probabilities"], None)
            expected = await plain.infer({"pixels": pixels(5)}, ["probabilities"], None)
            return got["probabilities"], expected["probabilities"]
        finally:
            await gpu.close()
            await plain.close()

    got, expected = asyncio.run(answers())
    np.testing.assert_array_equal(got, expected)


@cpu_build_only
def test_require_gpu_still_refuses_to_load_on_cpu() -> None:
    config = digits_config(providers=["cuda", "cpu"], cuda={}, require_gpu=True)
    with pytest.raises(BackendLoadError, match="require_gpu is set"):
        OnnxBackend("needs-gpu", config, DIGITS_MODEL)


@cpu_build_only
def test_several_devices_are_refused_on_a_cpu_build() -> None:
    config = digits_config(providers=["cuda", "cpu"], devices=[0, 1], max_concurrency=2)
    with pytest.raises(BackendLoadError, match=r"devices: \[0, 1\] lists 2 devices, but this"):
        OnnxBackend("two-gpus", config, DIGITS_MODEL)


@cpu_build_only
def test_a_missing_calibration_table_is_refused_on_any_build(tmp_path: Path) -> None:
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "backends": {
                    "d": {
                        "type": "onnx",
                        "path": str(DIGITS_MODEL),
                        "providers": ALL,
                        "tensorrt": {"int8": True, "int8_calibration_table": "tables/d.cache"},
                    }
                },
                "models": {"m": {"kind": "embeddings", "route": {"backends": ["d"]}}},
            }
        )
    )
    loaded = parse_config(config_file.read_text(), source=config_file)
    backend_config = loaded.config.backends["d"]
    with pytest.raises(BackendLoadError, match=r"tensorrt\.int8_calibration_table: file not found"):
        BACKEND_TYPE.build("d", backend_config, loaded.resolve_path)
    # Resolved like `path`: relative to the config file's directory once it is there.
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "d.cache").write_bytes(b"table")
    backend = BACKEND_TYPE.build("d", backend_config, loaded.resolve_path)
    asyncio.run(backend.close())


# -- spreading runs over devices -------------------------------------------------------


def test_runs_go_to_the_least_busy_device_and_ties_take_turns() -> None:
    spread = DeviceSpread(3)
    # One at a time: each device in turn.
    turns = []
    for _ in range(6):
        device = spread.acquire()
        turns.append(device)
        spread.release(device)
    assert turns == [0, 1, 2, 0, 1, 2]
    # Runs in flight: the next goes where fewest are running.
    first, second = spread.acquire(), spread.acquire()
    assert {first, second} == {0, 1}
    assert spread.acquire() == 2
    spread.release(first)
    assert spread.acquire() == first
    assert spread.running == [1, 1, 1]


def test_a_spread_needs_a_device() -> None:
    with pytest.raises(ValueError, match="devices"):
        DeviceSpread(0)
