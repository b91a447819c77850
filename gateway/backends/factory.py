"""Builds a backend object from its config entry: the one place that knows every type."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import overload

from gateway.backends.base import Backend
from gateway.backends.onnx import OnnxBackend
from gateway.backends.preprocess import TextTokenizer
from gateway.backends.vendors.anthropic import AnthropicBackend
from gateway.backends.vendors.openai import OpenAIBackend
from gateway.config.schema import (
    AnthropicBackendConfig,
    BackendConfig,
    OnnxBackendConfig,
    OpenAIBackendConfig,
)


@overload
def build_backend(
    name: str, config: OnnxBackendConfig, resolve_path: Callable[[str], Path]
) -> OnnxBackend: ...


@overload
def build_backend(
    name: str, config: BackendConfig, resolve_path: Callable[[str], Path]
) -> Backend | OpenAIBackend | AnthropicBackend: ...


def build_backend(
    name: str, config: BackendConfig, resolve_path: Callable[[str], Path]
) -> Backend | OpenAIBackend | AnthropicBackend:
    """Raises BackendLoadError (or another exception with a clear message) on failure."""
    if isinstance(config, OnnxBackendConfig):
        tokenizer = None
        if config.tokenizer is not None:
            tokenizer = TextTokenizer(config.tokenizer, resolve_path(config.tokenizer.path))
        return OnnxBackend(name, config, resolve_path(config.path), tokenizer)
    if isinstance(config, OpenAIBackendConfig):
        return OpenAIBackend(name, config)
    if isinstance(config, AnthropicBackendConfig):
        return AnthropicBackend(name, config)
    raise TypeError(f"backend '{name}': no implementation for type {config.type!r}")
