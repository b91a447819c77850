import pytest

from gateway.backends.providers import ProviderUnavailable, select_providers

CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_keeps_the_configured_order_of_the_providers_the_build_offers() -> None:
    assert select_providers(["tensorrt", "cuda", "cpu"], GPU_BUILD, require_gpu=False) == GPU_BUILD
    assert select_providers(["cuda", "tensorrt"], GPU_BUILD, require_gpu=False) == [
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_missing_gpu_providers_fall_back_to_cpu_unless_a_gpu_is_required() -> None:
    assert select_providers(["tensorrt", "cuda", "cpu"], CPU_ONLY, require_gpu=False) == [
        "CPUExecutionProvider"
    ]
    with pytest.raises(ProviderUnavailable, match="require_gpu"):
        select_providers(["cuda", "cpu"], CPU_ONLY, require_gpu=True)


def test_cpu_is_always_available_as_the_last_resort() -> None:
    assert select_providers(["cuda"], GPU_BUILD, require_gpu=True) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
