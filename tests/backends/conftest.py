"""A real Triton server (PyTriton, testkit/triton_server.py) shared by the
triton backend's tests; the tests that kill one start their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.triton_process import TritonProcess, start_triton


@pytest.fixture(scope="session")
def triton() -> Iterator[TritonProcess]:
    server = start_triton()
    yield server
    alive_until_the_end = server.server.process.poll() is None
    server.stop()
    assert alive_until_the_end, f"Triton died during the tests:\n{server.logs()[-4000:]}"
