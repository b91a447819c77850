"""The checks around creating an ONNX Runtime session for a backend's device:
the files its GPU options name (before), and which provider and device the
session really runs on (after): onnxruntime falls back silently, a backend
configured for a GPU must not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from gateway.backends.base import BackendLoadError
from gateway.backends.onnx_config import OnnxBackendConfig
from gateway.backends.onnx_gpu import CUDA, TENSORRT
from gateway.backends.providers import uses_gpu

log = logging.getLogger("gateway.backends.onnx")


def check_gpu_options(
    name: str,
    config: OnnxBackendConfig,
    providers: list[str],
    available: list[str],
    resolve_path: Callable[[str], Path],
) -> None:
    """Check the files the GPU options name; say which options go unused."""
    for key, options, provider in (
        ("cuda", config.cuda, CUDA),
        ("tensorrt", config.tensorrt, TENSORRT),
    ):
        if options is not None and provider not in providers:
            log.warning(
                "backend %s: its %s options are dropped: this onnxruntime build does not "
                "offer %s (available: %s)",
                name,
                key,
                provider,
                available,
            )
    trt = config.tensorrt
    if trt is None:
        return
    # Checked on any build: a config written for a GPU machine is checked
    # (`gateway check`) where it is written, often without one.
    if trt.int8_calibration_table is not None:
        table = resolve_path(trt.int8_calibration_table)
        if not table.is_file():
            raise BackendLoadError(f"tensorrt.int8_calibration_table: file not found: {table}")
    if TENSORRT not in providers:
        return
    for key, directory in (
        ("engine_cache_dir", trt.engine_cache_dir),
        ("timing_cache_dir", trt.timing_cache_dir),
    ):
        if directory is None:
            continue
        path = resolve_path(directory)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendLoadError(
                f"tensorrt.{key}: cannot create {path}: {exc.strerror or exc}"
            ) from None


def check_session(config: OnnxBackendConfig, session: ort.InferenceSession, device: int) -> None:
    """Refuse a session that onnxruntime moved to CPU where a GPU is needed, or to
    another device than its own."""
    used = session.get_providers()
    if config.require_gpu and not uses_gpu(used):
        raise BackendLoadError(
            f"require_gpu is set but the session on device {device} runs on {used} "
            "(no usable GPU: onnxruntime fell back to CPU)"
        )
    if len(config.devices) > 1 and not uses_gpu(used):
        raise BackendLoadError(
            f"devices: the session on device {device} runs on {used} (onnxruntime fell "
            f"back to CPU: is there a GPU {device}?); each device needs a usable GPU"
        )
    if uses_gpu(used):
        # onnxruntime's Python API retries a session whose TensorRT provider failed
        # on CUDA with default options, device 0 among them.
        actual = session.get_provider_options().get(used[0], {}).get("device_id")
        if actual is not None and actual != str(device):
            raise BackendLoadError(
                f"devices: the session meant for device {device} runs on device {actual} "
                f"({used[0]}): onnxruntime fell back from the providers asked for"
            )
