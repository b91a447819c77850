"""What a remote Triton server says about one of its models, and the calls that
ask it: tritonclient's asyncio clients, gRPC (`tritonclient[grpc]`, a runtime
dependency) or HTTP (the `triton-http` extra, imported only when a backend asks
for it).

Both clients answer the same KServe v2 questions; `TritonClient` hides the
few places where they differ (how an answer's documents are shaped, how a
deadline is passed, which errors mean what), so that backends/triton.py holds
one code path. Error mapping: docs/configuration.md#type-triton.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gateway.core.datatypes import datatype_of
from gateway.core.errors import BackendFailed, DeadlineExceeded, GatewayError, InvalidInput
from gateway.core.signature import TensorSpec

Protocol = Literal["grpc", "http"]


@dataclass(frozen=True)
class RemoteModel:
    """A remote model's metadata and configuration, as the gateway uses them."""

    inputs: list[TensorSpec]  # with the batch dimension (-1) when it batches
    outputs: list[TensorSpec]
    max_batch_size: int  # 0: the model does not batch
    dynamic_batching: bool  # Triton's dynamic batcher merges concurrent requests


def _dims(values: list[Any]) -> tuple[int, ...]:
    # gRPC's JSON gives int64 dims as strings
    return tuple(int(v) for v in values)


def describe(metadata: dict[str, Any], config: dict[str, Any]) -> RemoteModel:
    """The remote model from its metadata and config documents (JSON forms)."""
    config = config.get("config", config)  # gRPC wraps it in {"config": ...}
    return RemoteModel(
        inputs=[
            TensorSpec(t["name"], t["datatype"], _dims(t.get("shape", [])))
            for t in metadata.get("inputs", [])
        ],
        outputs=[
            TensorSpec(t["name"], t["datatype"], _dims(t.get("shape", [])))
            for t in metadata.get("outputs", [])
        ],
        max_batch_size=int(config.get("max_batch_size", 0)),
        dynamic_batching="dynamic_batching" in config,
    )


class TritonClient:
    """One asyncio client of one remote model; made in the event loop that uses it."""

    def __init__(
        self, protocol: Protocol, url: str, model: str, version: str, backend: str
    ) -> None:
        self.protocol = protocol
        self.model = model
        self.version = version
        self.backend = backend  # the gateway's name for it, for messages
        self.where = f"backend '{backend}' (Triton at {url}, model '{model}')"
        self.module: Any
        if protocol == "grpc":
            # Imported here, not with the module: the registry loads every backend
            # type at start-up, and tritonclient's gRPC stubs cost ~50 ms to import.
            import tritonclient.grpc.aio as grpc_aio

            self.module = grpc_aio
            self.client: Any = grpc_aio.InferenceServerClient(url)
        else:
            try:
                import tritonclient.http.aio as http_aio
            # tritonclient.http turns its missing dependencies into a RuntimeError
            except (ImportError, RuntimeError) as exc:
                raise ImportError(
                    f"protocol: http needs tritonclient's HTTP client ({exc}): "
                    "pip install 'inference-gateway[triton-http]'"
                ) from None
            self.module = http_aio
            self.client = http_aio.InferenceServerClient(url)
        from tritonclient.utils import InferenceServerException

        self._server_error: type[Exception] = InferenceServerException

    async def describe(self, timeout_s: float) -> RemoteModel:
        metadata, config = await self._within(
            timeout_s,
            asyncio.gather(
                self._json(self.client.get_model_metadata, self.model, self.version),
                self._json(self.client.get_model_config, self.model, self.version),
            ),
        )
        return describe(metadata, config)

    async def is_ready(self, timeout_s: float) -> bool:
        ready = await self._within(timeout_s, self.client.is_model_ready(self.model, self.version))
        return bool(ready)

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline_s: float | None
    ) -> dict[str, np.ndarray]:
        """One inference, tensors as raw bytes both ways. `deadline_s`: the seconds
        left, passed on to Triton as the request's timeout and as the call's."""
        module = self.module
        binary = {} if self.protocol == "grpc" else {"binary_data": True}
        request_inputs = []
        for name, value in inputs.items():
            tensor = module.InferInput(name, list(value.shape), datatype_of(value))
            tensor.set_data_from_numpy(value, **binary)
            request_inputs.append(tensor)
        requested = [module.InferRequestedOutput(name, **binary) for name in outputs]
        kwargs: dict[str, Any] = {}
        if deadline_s is not None:
            # Triton's own timeout (microseconds) drops the request from its queue
            # once it passed; the call's deadline ends the wait on our side.
            kwargs["timeout"] = max(1, int(deadline_s * 1e6))
            if self.protocol == "grpc":
                kwargs["client_timeout"] = deadline_s
        call = self.client.infer(
            self.model, request_inputs, self.version, outputs=requested, **kwargs
        )
        result = await self._within(deadline_s, call)
        return {name: result.as_numpy(name) for name in outputs}

    async def close(self) -> None:
        await self.client.close()

    async def _json(self, method: Any, model: str, version: str) -> dict[str, Any]:
        if self.protocol == "grpc":
            answer: dict[str, Any] = await method(model, version, as_json=True)
        else:
            answer = await method(model, version)
        return answer

    async def _within(self, timeout_s: float | None, call: Any) -> Any:
        try:
            if timeout_s is None:
                return await call
            return await asyncio.wait_for(call, max(timeout_s, 0.0))
        except TimeoutError:
            raise DeadlineExceeded(f"{self.where} did not answer within the deadline") from None
        except self._server_error as exc:
            raise self.error(exc) from None
        except OSError as exc:  # the HTTP client's connection failures (aiohttp)
            raise BackendFailed(f"{self.where}: {exc}", reason="connection") from None

    def error(self, exc: Any) -> GatewayError:
        """Triton's answer to a failed call, in the gateway's taxonomy."""
        status = str(exc.status() or "")
        message = f"{self.where}: {exc.message()}"
        if "DEADLINE_EXCEEDED" in status or "timeout expired" in (exc.message() or "").lower():
            return DeadlineExceeded(message)
        if "INVALID_ARGUMENT" in status or status == "400":
            return InvalidInput(message)
        if "UNAVAILABLE" in status or "Failed to connect" in message:
            return BackendFailed(message, reason="connection")
        if "RESOURCE_EXHAUSTED" in status or status == "429":
            return BackendFailed(message, reason="overloaded")
        return BackendFailed(message, reason="5xx")
