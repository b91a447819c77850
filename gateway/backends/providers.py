"""Execution provider selection for ONNX Runtime.

The config names providers by short name in order of preference; we keep the
ones this onnxruntime build offers. What a session *really* uses is read back
from the session afterwards (a GPU build without a GPU silently falls back to
CPU), see `OnnxBackend`.
"""

from __future__ import annotations

PROVIDER_NAMES: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS: frozenset[str] = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})


class ProviderUnavailable(Exception):
    pass


def select_providers(requested: list[str], available: list[str], *, require_gpu: bool) -> list[str]:
    """The ORT provider names to ask for, in the configured order.

    CPU is always appended last (ORT needs it for nodes other providers do not
    take) unless a GPU is required and none is offered, which is refused.
    """
    offered = set(available)
    chosen = [PROVIDER_NAMES[name] for name in requested if PROVIDER_NAMES[name] in offered]
    if require_gpu and not any(p in GPU_PROVIDERS for p in chosen):
        wanted = [PROVIDER_NAMES[n] for n in requested if PROVIDER_NAMES[n] in GPU_PROVIDERS]
        raise ProviderUnavailable(
            f"require_gpu is set but none of {wanted or ['a GPU provider']} is offered by this "
            f"onnxruntime build (available: {available})"
        )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def uses_gpu(session_providers: list[str]) -> bool:
    return any(p in GPU_PROVIDERS for p in session_providers)
