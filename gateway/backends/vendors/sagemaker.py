"""`type: sagemaker`: a SageMaker real-time endpoint (InvokeEndpoint), for
tensor models and for chat.

Calls go through the vendors' pooled HTTP client (vendors/http.py); botocore
only finds the credentials (its standard chain) and signs each try with
SigV4 (service `sagemaker`). Tensor requests are mapped to the endpoint's
payload by content type (vendors/sagemaker_payloads.py) and its answer back
to the outputs the backend declares, which the runtime checks against the
signature at load. Chat sends the OpenAI chat body, which SageMaker's LLM
containers take on /invocations: Hugging Face TGI's Messages API
(https://huggingface.co/docs/text-generation-inference/messages_api, TGI
1.4+) and DJL LMI's chat completions schema ("if the request contains the
messages field", https://docs.djl.ai/docs/serving/serving/docs/lmi/user_guides/chat_input_output_schema.html).

Streaming (InvokeEndpointWithResponseStream) is not used: its answers come in
AWS event-stream framing around whatever chunk format the container writes.
A caller's `stream: true` gets the whole answer as a stream of chunks once
the endpoint has answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import orjson

from gateway.backends.registry import BackendType, register
from gateway.backends.vendors import sagemaker_payloads as payloads
from gateway.backends.vendors.http import RetryPolicy
from gateway.backends.vendors.openai import usage_of
from gateway.backends.vendors.sagemaker_aws import AwsCredentials, ModelRefused, SageMakerClient
from gateway.backends.vendors.sagemaker_config import (
    HEADER_KEYS,
    SageMakerBackendConfig,
    tensor_specs,
)
from gateway.core.errors import BackendFailed, PayloadTooLarge
from gateway.core.llm import ChatRequest, ChatResult, Usage
from gateway.core.signature import TensorSpec
from gateway.observe import redact

log = logging.getLogger("gateway.backends.sagemaker")

# InvokeEndpoint's limit on a request body (its BodyBlob shape: 6 MiB).
MAX_REQUEST_BYTES = 6 * 1024 * 1024
# Bodies past this size are encoded and decoded in a worker thread: turning
# megabytes of JSON or CSV into tensors would hold the event loop for tens of ms.
_INLINE_BYTES = 256 * 1024


class SageMakerBackend:
    def __init__(self, name: str, config: SageMakerBackendConfig) -> None:
        self.name = name
        self.config = config
        self.path = f"/endpoints/{config.endpoint_name}/invocations"
        credentials = AwsCredentials.from_chain(name, config.profile)
        self.client = SageMakerClient(
            name,
            config.base_url(),
            config.region,
            credentials,
            max_connections=config.max_concurrency,
            connect_timeout_s=config.connect_timeout_ms / 1000.0,
            retry=RetryPolicy(config.retries.max, config.retries.backoff_ms / 1000.0),
        )
        self._inputs = None if config.inputs is None else tensor_specs(config.inputs)
        self._outputs = None if config.outputs is None else tensor_specs(config.outputs)
        extra = {
            header: value
            for key, header in HEADER_KEYS.items()
            if (value := getattr(config, key)) is not None
        }
        self._tensor_headers = {
            "content-type": config.content_type,
            "accept": config.answer_type(),
            **extra,
        }
        self._chat_headers = {"content-type": payloads.JSON, "accept": payloads.JSON, **extra}
        log.info(
            "backend %s: SageMaker endpoint %s in %s, AWS credentials from %s",
            name,
            config.endpoint_name,
            config.region,
            credentials.method,
        )

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
        if self._inputs is None or self._outputs is None:
            # Nothing declared: no tensor signature fits (the runtime says which tensors).
            return [], []
        return list(self._inputs), list(self._outputs)

    def ready(self) -> bool:
        return True

    def busy(self) -> bool:
        return False  # calls in flight are admission's to count (admission/slots.py)

    async def close(self) -> None:
        await self.client.close()

    async def _post(
        self, body: bytes, deadline: float, headers: dict[str, str]
    ) -> tuple[bytes, int]:
        if len(body) > MAX_REQUEST_BYTES:
            raise PayloadTooLarge(
                f"backend '{self.name}': the endpoint's payload would be {len(body)} bytes; "
                f"SageMaker takes at most {MAX_REQUEST_BYTES}"
            )
        reply = await self.client.post(self.path, body, deadline, headers)
        return reply.body, reply.tries

    # -- tensors -------------------------------------------------------------------

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        declared_inputs, declared_outputs = self._inputs, self._outputs
        if declared_inputs is None or declared_outputs is None:
            raise BackendFailed(f"backend '{self.name}' declares no inputs and outputs")
        if deadline is None:
            deadline = time.monotonic() + self.config.timeout_ms / 1000.0
        config = self.config
        order = [spec.name for spec in declared_inputs if spec.name in inputs]
        size = sum(array.nbytes for array in inputs.values())
        encode = (config.content_type, inputs, order, config.json_request_key)
        if size > _INLINE_BYTES:
            body = await asyncio.to_thread(payloads.encode, *encode)
        else:
            body = payloads.encode(*encode)
        try:
            answer, tries = await self._post(body, deadline, self._tensor_headers)
        except ModelRefused as exc:
            # The gateway checked the inputs against the signature: a model that
            # refuses them failed (a payload convention it does not read, most often).
            failed = BackendFailed(exc.message)
            failed.tries = exc.tries
            raise failed from None
        decode = (config.answer_type(), answer, declared_outputs, outputs, config.json_response_key)
        try:
            if len(answer) > _INLINE_BYTES:
                return await asyncio.to_thread(payloads.decode, *decode)
            return payloads.decode(*decode)
        except payloads.BadAnswer as exc:
            failed = BackendFailed(
                f"backend '{self.name}': the endpoint's answer does not fit: "
                f"{redact.redact(str(exc))}",
                reason="bad_output",
            )
            failed.tries = tries
            raise failed from None

    # -- chat ------------------------------------------------------------------------

    def _chat_body(self, request: ChatRequest) -> bytes:
        # The whole answer in one body: no stream (see the module's docstring).
        body = {k: v for k, v in request.body.items() if k not in ("stream", "stream_options")}
        if self.config.model is None:
            body.pop("model", None)
        else:
            body["model"] = self.config.model
        return orjson.dumps(body)

    async def chat(self, request: ChatRequest, deadline: float) -> ChatResult:
        answer, tries = await self._post(self._chat_body(request), deadline, self._chat_headers)
        try:
            doc = orjson.loads(answer)
        except orjson.JSONDecodeError:
            doc = None
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or not isinstance(choices, list) or not choices:
            failed = BackendFailed(
                f"backend '{self.name}': the endpoint's answer is not a chat completion "
                "(is the container's Messages API enabled? TGI 1.4+, LMI)",
                reason="bad_output",
            )
            failed.tries = tries
            raise failed
        return ChatResult(doc, usage_of(doc), tries=tries)

    async def chat_stream(self, request: ChatRequest, deadline: float) -> WholeAnswerStream:
        return WholeAnswerStream(await self.chat(request, deadline))


class WholeAnswerStream:
    """A whole completion as OpenAI stream chunks: per choice its message, then
    its finish reason, then the usage chunk (which the API passes on only to
    callers who asked for it)."""

    def __init__(self, result: ChatResult) -> None:
        self.usage: Usage | None = result.usage
        self.tries = result.tries
        self._chunks = completion_chunks(result.body)

    async def __aiter__(self) -> AsyncGenerator[dict[str, Any], None]:
        for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        return None


def completion_chunks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    head = {
        "id": doc.get("id") or "chatcmpl-sagemaker",
        "object": "chat.completion.chunk",
        "created": doc.get("created") or int(time.time()),
        "model": doc.get("model") or "",
    }
    choices = [c for c in doc.get("choices", []) if isinstance(c, dict)]
    chunks: list[dict[str, Any]] = []
    for index, choice in enumerate(choices):
        message = choice.get("message")
        message = message if isinstance(message, dict) else {}
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            delta["tool_calls"] = [
                {**call, "index": i} for i, call in enumerate(calls) if isinstance(call, dict)
            ]
        position = choice.get("index", index)
        chunks.append(
            {**head, "choices": [{"index": position, "delta": delta, "finish_reason": None}]}
        )
        chunks.append(
            {
                **head,
                "choices": [
                    {
                        "index": position,
                        "delta": {},
                        "finish_reason": choice.get("finish_reason") or "stop",
                    }
                ],
            }
        )
    usage = doc.get("usage")
    if isinstance(usage, dict):
        chunks.append({**head, "choices": [], "usage": usage})
    return chunks


def _served_model(config: SageMakerBackendConfig) -> str:
    within = config.inference_component or config.target_model
    return config.endpoint_name + (f"/{within}" if within else "")


BACKEND_TYPE = register(
    BackendType(
        name="sagemaker",
        config=SageMakerBackendConfig,
        build=lambda name, config, resolve_path: SageMakerBackend(name, config),
        kinds=frozenset({"tensor", "chat"}),
        # The endpoint (and, through the profile, the account it is looked up
        # in), how tensors travel, and what inside the endpoint answers.
        cache_identity=(
            "type",
            "region",
            "endpoint_name",
            "endpoint_url",
            "profile",
            "content_type",
            "accept",
            "json_request_key",
            "json_response_key",
            "inputs",
            "outputs",
            "model",
            "target_model",
            "target_variant",
            "inference_component",
            "custom_attributes",
        ),
        admission="slots",
        served_model=_served_model,
    )
)
