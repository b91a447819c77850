"""torch is an optional extra: without it a torch backend is refused with the
install hint, and the tests' helper skips, or fails with GATEWAY_REQUIRE_TORCH=1.
These run with or without torch installed; a missing torch is simulated with
sys.modules["torch"] = None, which makes `import torch` raise ImportError.
(That the gateway imports and serves its default config without torch is
tests/test_runtime_install.py's: its virtualenv has no torch.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from gateway.backends.torch_backend import TorchBackend, TorchLoadError
from gateway.backends.torch_config import TorchBackendConfig
from gateway.config.loader import ConfigError, parse_config
from gateway.runtime import build_runtime
from tests.torch_support import AFFINE_INPUTS, AFFINE_OUTPUTS, REQUIRE_ENV, require_torch

INSTALL_HINT = "pip install 'inference-gateway[torch]'"


@pytest.fixture()
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)


def test_without_torch_a_torch_backend_is_refused_with_the_install_hint(
    no_torch: None, tmp_path: Path
) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"never read")
    config = TorchBackendConfig(
        type="torch", path=str(path), inputs=AFFINE_INPUTS, outputs=AFFINE_OUTPUTS
    )
    with pytest.raises(
        TorchLoadError, match=r"type: torch needs PyTorch, which cannot be imported"
    ):
        TorchBackend("m", config, path)
    document = yaml.safe_dump(
        {
            "backends": {"m": config.model_dump(exclude_defaults=True)},
            "models": {
                "m": {
                    "signature": {"inputs": AFFINE_INPUTS, "outputs": AFFINE_OUTPUTS},
                    "route": {"backends": ["m"]},
                }
            },
        }
    )
    with pytest.raises(ConfigError) as refused:
        build_runtime(parse_config(document))
    [problem] = refused.value.problems
    assert problem.startswith("backends.m") and problem.endswith(INSTALL_HINT)


def test_the_helper_skips_without_torch(no_torch: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="torch is not installed"):
        require_torch()


def test_the_helper_fails_without_torch_where_ci_requires_it(
    no_torch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_ENV}=1 but torch is not installed"):
        require_torch()
