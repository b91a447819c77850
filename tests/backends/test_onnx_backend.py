"""OnnxBackend's contract beyond inference: busy() while ONNX Runtime runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from gateway.backends.onnx import OnnxBackend, OnnxBackendConfig
from gateway.core.errors import DeadlineExceeded
from tests.onnx_models import rows_lasting, slow_model

WIDTH = 256
RUN_S = 0.6


def test_busy_until_a_run_ends_even_after_its_caller_gave_up(tmp_path: Path) -> None:
    path = slow_model(tmp_path / "slow.onnx", WIDTH)
    long_input = np.ones((rows_lasting(path, WIDTH, RUN_S), WIDTH), np.float32)
    config = OnnxBackendConfig(type="onnx", path=str(path), max_concurrency=1, intra_op_threads=1)
    backend = OnnxBackend("slow", config, path)

    async def scenario() -> None:
        assert not backend.busy()
        with pytest.raises(DeadlineExceeded):
            await backend.infer({"x": long_input}, ["y"], time.monotonic() + RUN_S / 4)
        # The caller's deadline passed; ONNX Runtime's run goes on: a reload
        # must not close the session under it.
        assert backend.busy()
        # One execution slot: this run starts once the long one has ended.
        await backend.infer({"x": np.ones((1, WIDTH), np.float32)}, ["y"], None)
        assert not backend.busy()
        await backend.close()

    asyncio.run(scenario())
