"""torch for the `type: torch` backend's tests: an optional extra, so its tests
are skipped (with the reason) where it is not installed, except that with
GATEWAY_REQUIRE_TORCH=1 (CI, .ci/run) a missing torch fails them instead:
a CI machine that lost torch must not pass by skipping them.

torch is imported by name (importlib), not with an import statement: it is in
no extra the tests may import from (tests/test_dependencies.py), and this
function is the one place that decides what its absence means.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest

REQUIRE_ENV = "GATEWAY_REQUIRE_TORCH"


def require_torch() -> Any:
    """The torch module; call it at the top of a test module."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        reason = f"torch is not installed ({exc}); `make .venv/.installed-torch` installs it"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


# The model both test modules serve: two inputs, two outputs of other datatypes.
AFFINE_INPUTS = [
    {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
    {"name": "shift", "datatype": "FP32", "shape": [-1, 3]},
]
AFFINE_OUTPUTS = [
    {"name": "y", "datatype": "FP32", "shape": [-1, 3]},
    {"name": "label", "datatype": "INT64", "shape": [-1]},
]


def affine(torch: Any) -> Any:
    """y = linear(x) + shift, label = argmax(y): deterministic weights, eval mode."""

    class Affine(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        # Unannotated: TorchScript takes such arguments as tensors.
        def forward(self, x, shift):
            y = self.linear(x) + shift
            return y, y.argmax(dim=1)

    torch.manual_seed(0)
    return Affine().eval()


def save_torchscript(torch: Any, module: Any, path: Any) -> Any:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def save_export(torch: Any, module: Any, path: Any, *example: Any) -> Any:
    """torch.export with every input's first dimension dynamic (the batch)."""
    batch = torch.export.Dim("batch")
    dynamic = tuple({0: batch} for _ in example)
    torch.export.save(torch.export.export(module, example, dynamic_shapes=dynamic), str(path))
    return path
