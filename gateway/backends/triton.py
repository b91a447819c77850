"""Remote Triton Inference Servers (`type: triton`), over gRPC by default.

At load, the remote model's metadata and configuration are fetched (within
`connect_timeout_ms`) and become the backend's `io_specs()`, which the runtime
checks against the signatures it serves, as it does an ONNX graph's: a model
that does not fit refuses the config, and so does a server that cannot be
reached (a typo'd URL fails the deploy, not the first request).

Tensors travel as raw bytes both ways (gRPC's raw contents, HTTP's binary
tensor extension). Triton's dynamic batcher merges concurrent requests, so the
gateway does not batch again unless `batching` is configured; admission
(queue, `max_concurrency` calls in flight, deadlines) is the same as for every
backend. A caller's deadline becomes the call's gRPC deadline and Triton's
request `timeout`, so Triton drops a request from its queue once nobody waits
for it. docs/configuration.md#type-triton documents the keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import Field, field_validator

from gateway.backends.base import BackendLoadError
from gateway.backends.registry import BackendType, register
from gateway.backends.triton_remote import RemoteModel, TritonClient
from gateway.config.schema import BackendCommon, BatchingConfig
from gateway.core.errors import BackendFailed, DeadlineExceeded, GatewayError, InvalidInput
from gateway.core.signature import TensorSpec

log = logging.getLogger("gateway.backends.triton")

T = TypeVar("T")


class TritonBackendConfig(BackendCommon):
    keys_of_other_types: ClassVar[dict[str, str]] = {
        "retries": "a failed call is not retried on the same server; to try elsewhere, add a "
        "fallback backend to the model's route",
        "providers": "the Triton server places its model instances itself (instance_group)",
        "path": "the model lives on the Triton server: name it with `model`",
    }

    type: Literal["triton"]
    url: str = Field(min_length=1)  # host:port of Triton's gRPC (or HTTP) endpoint, no scheme
    model: str = Field(min_length=1)  # the model's name on the server
    model_version: str = Field("", pattern=r"^[0-9]*$")  # "": the server's policy picks
    protocol: Literal["grpc", "http"] = "grpc"
    # Calls in flight to the server: Triton's dynamic batcher needs concurrent
    # requests to merge, so the default is higher than a local session's.
    max_concurrency: int = Field(64, ge=1)
    max_queue_wait_ms: float | None = Field(None, ge=0)
    # Gateway-side batching, before Triton's own: off unless configured.
    batching: BatchingConfig | None = None
    # Bound on the load-time checks and on each readiness probe.
    connect_timeout_ms: int = Field(5000, ge=1)
    # How old the last readiness answer may be before a probe asks again.
    readiness_interval_ms: int = Field(2000, ge=100)

    @field_validator("url")
    @classmethod
    def _no_scheme(cls, url: str) -> str:
        if "://" in url:
            raise ValueError(f"give host:port without a scheme (got {url!r})")
        return url


class TritonBackend:
    """One model on a remote Triton server, behind the Backend protocol."""

    # Admission passes the caller's deadline on: it becomes Triton's (see above).
    takes_deadline = True

    def __init__(
        self, name: str, config: TritonBackendConfig, remote: RemoteModel, ready: bool = True
    ) -> None:
        self.name = name
        self.config = config
        self.remote = remote
        # Rows one call may carry: Triton refuses more than its max_batch_size.
        self.max_execution_rows: int | None = remote.max_batch_size or None
        self._client: TritonClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._calls = 0
        self._ready = ready  # as the load found it
        self._checked_at = time.monotonic()
        self._probe: asyncio.Task[None] | None = None
        self._where = f"backend '{name}' (Triton at {config.url}, model '{config.model}')"

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return self.remote.inputs, self.remote.outputs

    def ready(self) -> bool:
        """The remote model's readiness as last seen (a call's outcome or a probe).
        A stale answer starts a probe in the background: readiness checks (a
        balancer's, Kubernetes') are what keep it current while no traffic flows."""
        now = time.monotonic()
        if (
            self._probe is None
            and now - self._checked_at >= self.config.readiness_interval_ms / 1e3
        ):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # asked from a thread without a loop: the last answer
                return self._ready
            self._checked_at = now
            self._probe = loop.create_task(self._refresh())
        return self._ready

    async def _refresh(self) -> None:
        try:
            self._ready = await self._connection().is_ready(self.config.connect_timeout_ms / 1e3)
        except GatewayError:
            self._ready = False
        finally:
            self._probe = None

    def busy(self) -> bool:
        return self._calls > 0

    def check_request(self, inputs: dict[str, np.ndarray]) -> None:
        """Refuse (400), before it is queued, a request of more rows than the remote
        model takes in one call."""
        limit = self.max_execution_rows
        if limit is None:
            return
        for name, value in inputs.items():
            if value.ndim and value.shape[0] > limit:
                raise InvalidInput(
                    f"input '{name}': {value.shape[0]} rows, at most {limit} per request "
                    f"(the max_batch_size of model '{self.config.model}' on backend "
                    f"'{self.name}')"
                )

    def _connection(self) -> TritonClient:
        # A client belongs to the event loop that made it (gRPC's asyncio channel).
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = TritonClient(
                self.config.protocol,
                self.config.url,
                self.config.model,
                self.config.model_version,
                self.name,
            )
            self._client_loop = loop
        return self._client

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"{self._where}: the deadline passed before the call")
        self._calls += 1
        try:
            answer = await self._connection().infer(inputs, outputs, left)
        except BackendFailed as exc:
            if exc.reason == "connection":
                self._ready = False
                self._checked_at = time.monotonic()
            raise
        finally:
            self._calls -= 1
        self._ready = True
        return answer

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.close()


async def _inspect(name: str, config: TritonBackendConfig) -> tuple[RemoteModel, bool]:
    try:
        client = TritonClient(config.protocol, config.url, config.model, config.model_version, name)
    except ImportError as exc:
        raise BackendLoadError(str(exc)) from None
    timeout_s = config.connect_timeout_ms / 1e3
    try:
        remote = await client.describe(timeout_s)
        return remote, await client.is_ready(timeout_s)
    except GatewayError as exc:
        detail = exc.message.removeprefix(f"{client.where}: ")
        raise BackendLoadError(
            f"cannot read model '{config.model}' from Triton at {config.url} "
            f"({config.protocol}): {detail}"
        ) from None
    finally:
        await client.close()


def _run_to_end(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine from synchronous code: config loads run outside the event
    loop at start-up, on an executor thread on reload, and in a running loop's
    thread only in tests (then on a thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _check_batching(name: str, config: TritonBackendConfig, remote: RemoteModel) -> None:
    batching = config.batching
    if batching is None:
        if remote.max_batch_size and not remote.dynamic_batching:
            log.info(
                "backend %s: model %s batches (max_batch_size %d) but has no dynamic batcher: "
                "each request runs alone unless `batching` is configured here",
                name,
                config.model,
                remote.max_batch_size,
            )
        return
    if remote.max_batch_size == 0:
        raise BackendLoadError(
            f"batching is configured but model '{config.model}' on {config.url} does not "
            "batch (max_batch_size 0 in its config)"
        )
    if batching.max_batch_size > remote.max_batch_size:
        raise BackendLoadError(
            f"batching.max_batch_size {batching.max_batch_size} is more than model "
            f"'{config.model}' takes (max_batch_size {remote.max_batch_size} on {config.url})"
        )


def _build(
    name: str, config: TritonBackendConfig, resolve_path: Callable[[str], Path]
) -> TritonBackend:
    remote, ready = _run_to_end(lambda: _inspect(name, config))
    _check_batching(name, config, remote)
    backend = TritonBackend(name, config, remote, ready)
    log.info(
        "backend %s: model %s%s on Triton at %s (%s), max_batch_size %d, dynamic batching %s%s",
        name,
        config.model,
        f" version {config.model_version}" if config.model_version else "",
        config.url,
        config.protocol,
        remote.max_batch_size,
        "on" if remote.dynamic_batching else "off",
        "" if ready else "; the model is NOT ready yet",
    )
    return backend


BACKEND_TYPE = register(
    BackendType(
        name="triton",
        config=TritonBackendConfig,
        build=_build,
        kinds=frozenset({"tensor"}),
        # Where the model runs and which version: the same name on another server,
        # or another version, may answer differently.
        cache_identity=("type", "url", "model", "model_version"),
        admission="queue",
        served_model=lambda config: (
            f"{config.model}/{config.model_version}" if config.model_version else config.model
        ),
    )
)
