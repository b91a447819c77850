"""A local model's blocking run on its backend's thread pool, within a deadline.

ONNX Runtime and torch release the GIL while they compute, so the event loop
serves other requests meanwhile. A run whose caller's deadline passed goes on
on its thread (neither library can be interrupted): the backend's busy() says
so until it returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gateway.core.errors import DeadlineExceeded

T = TypeVar("T")


async def run_on_pool(
    pool: ThreadPoolExecutor,
    backend: str,
    deadline: float | None,
    run: Callable[..., T],
    *args: object,
) -> T:
    future = asyncio.get_running_loop().run_in_executor(pool, run, *args)
    if deadline is None:
        return await future
    try:
        return await asyncio.wait_for(future, deadline - time.monotonic())
    except TimeoutError:
        raise DeadlineExceeded(f"backend '{backend}' did not answer within the deadline") from None
