"""The reusable parts of the OpenAPI document (api/openapi.py): the schemas of
the v2 and OpenAI bodies, the headers of docs/contracts.md#headers, the
security schemes, and the error answers of the taxonomy
(docs/contracts.md#errors) as each operation can give them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.api.openai import MAX_EMBEDDING_INPUTS, ROLES
from gateway.core.datatypes import DATATYPES
from gateway.core.signature import MAX_RANK

Json = dict[str, Any]


def ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def schema_ref(name: str) -> Json:
    return ref("schemas", name)


def json_content(schema: Json, **extra: Any) -> Json:
    return {"application/json": {"schema": schema, **extra}}


# -- reusable pieces ---------------------------------------------------------------


def components() -> Json:
    datatype = {"type": "string", "enum": sorted(DATATYPES)}
    usage = {
        "type": "object",
        "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
        },
    }
    chat_choice = {
        "type": "object",
        "properties": {
            "index": {"type": "integer"},
            "message": {"type": "object"},
            "delta": {"type": "object"},
            "finish_reason": {"type": ["string", "null"]},
        },
    }
    schemas: Json = {
        # -- errors
        "V2Error": {
            "type": "object",
            "description": "The KServe v2 error shape (also /admin/...): the message names "
            "what was wrong, what was expected and what came.",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "OpenAIError": {
            "type": "object",
            "description": "OpenAI's error shape (`type` and `code` by error kind: "
            "docs/contracts.md#errors).",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    },
                }
            },
        },
        # -- KServe v2 metadata and health
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Live": {
            "type": "object",
            "required": ["live"],
            "properties": {"live": {"type": "boolean"}},
        },
        "Ready": {
            "type": "object",
            "required": ["ready"],
            "properties": {"ready": {"type": "boolean"}},
        },
        "ModelReady": {
            "type": "object",
            "required": ["name", "ready"],
            "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        },
        "Datatype": datatype,
        "TensorMetadata": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": schema_ref("Datatype"),
                "shape": {
                    "type": "array",
                    "description": "-1: any size",
                    "items": {"type": "integer", "minimum": -1},
                },
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": schema_ref("TensorMetadata")},
                "outputs": {"type": "array", "items": schema_ref("TensorMetadata")},
            },
        },
        # -- KServe v2 infer
        "InferParameters": {
            "type": "object",
            "description": "Request parameters; `binary_data_output: true` asks for every "
            "output as binary data (the binary tensor extension). Others are kept and ignored.",
            "properties": {"binary_data_output": {"type": "boolean"}},
        },
        "InferInputTensor": {
            "type": "object",
            "description": "One input: its values in `data` (JSON), or, with the binary "
            "tensor extension, `parameters.binary_data_size` bytes of the binary part of "
            "the body (in the order of `inputs`). The name, datatype and shape must match "
            "the model's signature (GET /v2/models/{model}).",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "shape": {
                    "type": "array",
                    "maxItems": MAX_RANK,
                    "items": {"type": "integer", "minimum": 0},
                },
                "datatype": schema_ref("Datatype"),
                "parameters": {
                    "type": "object",
                    "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                },
                "data": {
                    "type": "array",
                    "description": "The values in row-major order, flat or nested as the "
                    "shape: numbers, booleans (BOOL) or strings (BYTES, as UTF-8).",
                    "items": {"type": ["number", "boolean", "string", "array"]},
                },
            },
        },
        "InferRequestedOutput": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "parameters": {
                    "type": "object",
                    "description": "`binary_data: true`: this output as binary data. The "
                    "classification extension is not supported.",
                    "properties": {"binary_data": {"type": "boolean"}},
                },
            },
        },
        "InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string", "description": "Echoed in the answer."},
                "parameters": schema_ref("InferParameters"),
                "inputs": {
                    "type": "array",
                    "minItems": 1,
                    "items": schema_ref("InferInputTensor"),
                },
                "outputs": {
                    "type": "array",
                    "description": "The outputs wanted (default: every output).",
                    "items": schema_ref("InferRequestedOutput"),
                },
            },
        },
        "InferOutputTensor": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": schema_ref("Datatype"),
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "parameters": {
                    "type": "object",
                    "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                },
                "data": {
                    "type": "array",
                    "description": "Flat, row-major; NaN is null.",
                    "items": {"type": ["number", "boolean", "string", "null"]},
                },
            },
        },
        "InferResponse": {
            "type": "object",
            "required": ["model_name", "model_version", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {"type": "array", "items": schema_ref("InferOutputTensor")},
            },
        },
        "BinaryTensorBody": {
            "type": "string",
            "format": "binary",
            "description": "The binary tensor extension: a JSON header (an InferRequest or "
            "InferResponse) of `inference-header-content-length` bytes, then the tensors' "
            "raw bytes (little-endian; each BYTES element prefixed by its 4-byte length).",
        },
        # -- OpenAI
        "ChatMessage": {
            "type": "object",
            "description": "`content` may be null or left out on an assistant message; "
            "other fields (name, tool_calls...) are passed on to the vendor.",
            "required": ["role", "content"],
            "properties": {
                "role": {"type": "string", "enum": list(ROLES)},
                "content": {
                    "anyOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "object"}},
                    ]
                },
            },
        },
        "ChatCompletionRequest": {
            "type": "object",
            "description": "OpenAI's chat completion request. Fields not listed are passed "
            "on to the vendor as sent; `model` names a gateway model of kind `chat`.",
            "required": ["model", "messages"],
            "properties": {
                "model": {"type": "string"},
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": schema_ref("ChatMessage"),
                },
                "stream": {"type": "boolean"},
                "stream_options": {
                    "type": "object",
                    "properties": {"include_usage": {"type": "boolean"}},
                },
                "max_tokens": {"type": "integer", "minimum": 1},
                "max_completion_tokens": {"type": "integer", "minimum": 1},
                "n": {"type": "integer", "minimum": 1},
                "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            },
        },
        "Usage": usage,
        "ChatCompletion": {
            "type": "object",
            "description": "The vendor's answer, with `model` set to the gateway model.",
            "required": ["model", "choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "minItems": 1, "items": chat_choice},
                "usage": schema_ref("Usage"),
            },
        },
        "ChatCompletionChunk": {
            "type": "object",
            "required": ["model", "choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": chat_choice},
                "usage": {"anyOf": [schema_ref("Usage"), {"type": "null"}]},
            },
        },
        "ChatStreamEvent": {
            "type": "object",
            "description": "One server-sent event of a streamed answer (this schema "
            "describes each event, as OpenAPI 3.1 tools read a `text/event-stream` "
            "schema): `data:` a chunk, then `data: [DONE]`; a stream that breaks after "
            'it started ends with `data: {"error": {...}}` instead of `[DONE]`.',
            "required": ["data"],
            "properties": {
                "data": {
                    "anyOf": [
                        {"const": "[DONE]"},
                        {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {
                                "anyOf": [
                                    schema_ref("ChatCompletionChunk"),
                                    schema_ref("OpenAIError"),
                                ]
                            },
                        },
                    ]
                }
            },
        },
        "EmbeddingRequest": {
            "type": "object",
            "description": "`model` names a gateway model of kind `embeddings`; the gateway "
            "tokenizes for its models (token ids are refused).",
            "required": ["model", "input"],
            "properties": {
                "model": {"type": "string"},
                "input": {
                    "anyOf": [
                        {"type": "string"},
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_EMBEDDING_INPUTS,
                            "items": {"type": "string"},
                        },
                    ]
                },
                "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                "dimensions": {"type": "integer", "minimum": 1},
                "user": {"type": "string"},
            },
        },
        "EmbeddingList": {
            "type": "object",
            "required": ["object", "data", "model", "usage"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["object", "index", "embedding"],
                        "properties": {
                            "object": {"const": "embedding"},
                            "index": {"type": "integer", "minimum": 0},
                            "embedding": {
                                "description": "Numbers, or with `encoding_format: base64` "
                                "the little-endian float32 values in base64.",
                                "anyOf": [
                                    {"type": "array", "items": {"type": "number"}},
                                    {"type": "string", "contentEncoding": "base64"},
                                ],
                            },
                        },
                    },
                },
                "model": {"type": "string"},
                "usage": {
                    "type": "object",
                    "required": ["prompt_tokens", "total_tokens"],
                    "properties": {
                        "prompt_tokens": {"type": "integer", "minimum": 0},
                        "total_tokens": {"type": "integer", "minimum": 0},
                    },
                },
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "object", "created", "owned_by"],
                        "properties": {
                            "id": {"type": "string"},
                            "object": {"const": "model"},
                            "created": {"type": "integer"},
                            "owned_by": {"type": "string"},
                        },
                    },
                },
            },
        },
        # -- operations and admin
        "SloStatus": {
            "type": "object",
            "description": "Per model: its window, status (ok, warning, breach) and, per "
            "objective (availability, latency), target, counts, ratio, error budget left "
            "and burn rates (docs/operations.md#slos).",
            "required": ["models"],
            "properties": {
                "models": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "window": {"type": "string"},
                            "window_s": {"type": "number"},
                            "status": {"type": "string", "enum": ["ok", "warning", "breach"]},
                            "objectives": {"type": "object"},
                        },
                    },
                }
            },
        },
        "AdminConfigState": {
            "type": "object",
            "required": ["version", "sha256", "loaded_at", "rollback_available", "backends"],
            "properties": {
                "version": {"type": "integer"},
                "sha256": {"type": "string"},
                "source": {"type": ["string", "null"]},
                "loaded_at": {"type": "string"},
                "rollback_available": {"type": "boolean"},
                "backends": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "state": {"type": "string"},
                            "enabled": {"type": "boolean"},
                        },
                    },
                },
            },
        },
        "AdminConfig": {
            "allOf": [
                schema_ref("AdminConfigState"),
                {
                    "type": "object",
                    "required": ["text"],
                    "properties": {
                        "text": {
                            "type": "string",
                            "description": "The config file as written (${VAR} unexpanded).",
                        }
                    },
                },
            ]
        },
        "AdminRefused": {
            "type": "object",
            "required": ["error", "problems"],
            "properties": {
                "error": {"type": "string"},
                "problems": {"type": "array", "items": {"type": "string"}},
            },
        },
        "BackendSwitch": {
            "type": "object",
            "required": ["backend", "enabled"],
            "properties": {"backend": {"type": "string"}, "enabled": {"type": "boolean"}},
        },
        # -- Triton's extensions: the shapes of Triton's HTTP server (api/triton_docs.py)
        "ModelConfig": {
            "type": "object",
            "description": "The model's configuration, in Triton's model config shape "
            "(datatypes as TYPE_FP32...; dims without the batch dimension when "
            "max_batch_size > 0).",
            "properties": {
                "name": {"type": "string"},
                "platform": {"type": "string"},
                "backend": {"type": "string"},
                "max_batch_size": {"type": "integer", "minimum": 0},
                "input": {"type": "array", "items": {"type": "object"}},
                "output": {"type": "array", "items": {"type": "object"}},
            },
        },
        "ModelStatistics": {
            "type": "object",
            "description": "Triton's statistics extension: one entry per model version, "
            "with counts and cumulative durations (ns) per step.",
            "required": ["model_stats"],
            "properties": {
                "model_stats": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "version": {"type": "string"},
                            "last_inference": {"type": "integer"},
                            "inference_count": {"type": "integer"},
                            "execution_count": {"type": "integer"},
                            "inference_stats": {"type": "object"},
                        },
                    },
                }
            },
        },
        "RepositoryIndexRequest": {
            "type": "object",
            "properties": {
                "ready": {"type": "boolean", "description": "Only the models that are ready."}
            },
        },
        "RepositoryIndex": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "state": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
        },
    }
    headers: Json = {
        "RequestId": {
            "description": "The request's id: the caller's `x-request-id` if it can be "
            "echoed (at most 128 printable ASCII characters), else a generated one.",
            "schema": {"type": "string"},
        },
        "Backend": {
            "description": "The backend that answered (absent when none did).",
            "schema": {"type": "string"},
        },
        "Attempts": {
            "description": "Backends tried and a vendor's retries.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "Cache": {
            "description": "The response cache's part.",
            "schema": {"type": "string", "enum": ["hit", "miss", "bypass"]},
        },
        "OverheadMs": {
            "description": "The gateway's own time, backend waits excluded (milliseconds).",
            "schema": {"type": "string"},
        },
        "CostUsd": {
            "description": "Chat and embeddings: the request's cost by the backend's prices.",
            "schema": {"type": "string"},
        },
        "RetryAfter": {
            "description": "Whole seconds to wait before retrying (at least 1).",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        },
        "InferenceHeaderContentLength": {
            "description": "With a binary body (application/octet-stream): the size of its "
            "JSON header, in bytes.",
            "schema": {"type": "integer", "minimum": 1},
        },
    }
    parameters: Json = {
        "RequestId": {
            "name": "x-request-id",
            "in": "header",
            "description": "The request's id, echoed back and written in logs, audit "
            "records and traces (generated when absent or not echoable).",
            "schema": {"type": "string"},
        },
        "RequestTimeout": {
            "name": "x-request-timeout-ms",
            "in": "header",
            "description": "The request's deadline in milliseconds (a positive number, "
            "else 400), capped by and defaulting to the backend's `timeout_ms`.",
            "schema": {"type": "number", "exclusiveMinimum": 0},
        },
        "CacheControl": {
            "name": "cache-control",
            "in": "header",
            "description": "`no-cache`: skip the response cache for this request.",
            "schema": {"type": "string", "examples": ["no-cache"]},
        },
        "InferenceHeaderContentLength": {
            "name": "inference-header-content-length",
            "in": "header",
            "description": "The binary tensor extension: the size of the JSON header at "
            "the start of the body; the rest is the inputs' binary data.",
            "schema": {"type": "integer", "minimum": 1},
        },
    }
    bearer = "Authorization: Bearer <key>"
    security_schemes: Json = {
        "tenantBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": f"A tenant's API key as `{bearer}` (wins over x-api-key). "
            "Needed when the config has tenants (docs/security.md#tenants-and-api-keys).",
        },
        "tenantApiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "x-api-key",
            "description": "A tenant's API key as `x-api-key: <key>`.",
        },
        "adminBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": f"The admin key (server.admin_key_env) as `{bearer}`; tenant "
            "keys do not open the admin endpoints (docs/security.md#the-admin-key).",
        },
        "adminApiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "x-api-key",
            "description": "The admin key as `x-api-key: <key>`.",
        },
    }
    return {
        "schemas": schemas,
        "headers": headers,
        "parameters": parameters,
        "securitySchemes": security_schemes,
    }


V2_HEADERS = {
    "x-request-id": ref("headers", "RequestId"),
    "x-gateway-backend": ref("headers", "Backend"),
    "x-gateway-attempts": ref("headers", "Attempts"),
    "x-gateway-cache": ref("headers", "Cache"),
    "x-gateway-overhead-ms": ref("headers", "OverheadMs"),
}
LLM_HEADERS = {**V2_HEADERS, "x-gateway-cost-usd": ref("headers", "CostUsd")}

# Statuses of the error taxonomy (docs/contracts.md#errors), as each operation can answer them.
_ERROR_TEXT = {
    400: "Invalid input: the request does not match the signature or the schema, the "
    "body is malformed, a header is bad (e.g. x-request-timeout-ms), or the model is "
    "of another kind (the message names the endpoint that serves it).",
    401: "Tenants are configured and the API key is missing or unknown.",
    403: "The tenant may not use this model.",
    404: "Unknown model or version.",
    413: "The body is over server.max_request_bytes ({limit} bytes here); refused before "
    "it is read whole.",
    429: "The tenant's rate limit or token quota is spent.",
    500: "A gateway bug: logged with a traceback, answered without internals, naming "
    "the request id (only x-request-id is sent).",
    502: "Every backend failed, or one answered something that breaks the signature.",
    503: "Overloaded: a queue is full or the wait would be too long, a vendor answered "
    "429, a circuit is open or a backend disabled, and no other backend took the "
    "request; also the server stopping past its grace period, and the edge's "
    "connection and concurrency limits.",
    504: "The deadline passed (while queued, the request is answered at its deadline "
    "and never executed).",
}


def error_response(status: int, openai: bool, limit: int, text: str | None = None) -> Json:
    headers: Json = {"x-request-id": ref("headers", "RequestId")}
    if status in (429, 503):
        headers["retry-after"] = ref("headers", "RetryAfter")
    return {
        "description": text or _ERROR_TEXT[status].format(limit=limit),
        "headers": headers,
        "content": json_content(schema_ref("OpenAIError" if openai else "V2Error")),
    }


def error_responses(statuses: Iterable[int], openai: bool, limit: int) -> Json:
    return {str(s): error_response(s, openai, limit) for s in statuses}


PIPELINE_ERRORS = (400, 401, 403, 404, 413, 429, 500, 502, 503, 504)
