"""The operations of the OpenAPI document (api/openapi.py), for the running
config's models: the `model` parameters and fields as enums of the models of
the kind each operation serves, and an infer example per tensor model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gateway.api.openapi_schemas import (
    LLM_HEADERS,
    PIPELINE_ERRORS,
    V2_HEADERS,
    Json,
    error_response,
    error_responses,
    json_content,
    ref,
    schema_ref,
)
from gateway.core.signature import Signature
from gateway.pipeline.entry import ModelEntry

# Served on raw ASGI by http_app.InferFastPath (infer_path_params), so absent
# from the Starlette route table: the route enumeration adds them.
OPENAPI_PATH = "/openapi.json"
INFER_PATHS = ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer")
# An infer example is left out past this many elements: a signature with large
# fixed dimensions (an image model) would make the document megabytes long.
_MAX_EXAMPLE_ELEMENTS = 4096

V2 = "KServe v2"
TRITON = "KServe v2: Triton extensions"
OPENAI = "OpenAI"
OPS = "Operations"
ADMIN = "Admin"
DOCS = "Documentation"


# -- the names the running config gives ----------------------------------------------


def _name_schema(names: Sequence[str], what: str) -> Json:
    if names:
        return {"type": "string", "enum": list(names)}
    # No enum: nothing to list (or nothing this caller may see); every name is then
    # answered 404 (or 400 for a model of another kind), as the responses say.
    return {"type": "string", "description": f"the name of a {what}"}


def _example_value(datatype: str, index: int) -> Any:
    if datatype == "BYTES":
        return f"text {index}"
    if datatype == "BOOL":
        return False
    return 0


def infer_example(signature: Signature) -> Json | None:
    """A request that fits `signature`: one row where a dimension is free (-1)
    and zeros (texts for BYTES); None when it would be too large to list."""
    inputs = []
    for spec in signature.inputs:
        shape = [1 if d == -1 else d for d in spec.shape]
        count = math.prod(shape)
        if count > _MAX_EXAMPLE_ELEMENTS:
            return None
        data = [_example_value(spec.datatype, i) for i in range(count)]
        inputs.append({"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": data})
    return {"inputs": inputs}


def _infer_examples(models: Sequence[ModelEntry]) -> Json:
    examples: Json = {}
    for entry in models:
        if entry.kind != "tensor" or entry.signature is None:
            continue
        value = infer_example(entry.signature)
        if value is None:
            continue
        described = ", ".join(s.describe() for s in entry.signature.inputs)
        examples[entry.name] = {"summary": f"{entry.name}: {described}", "value": value}
    return examples


# -- operations ----------------------------------------------------------------------


def _security(admin: bool, required: bool) -> list[Json]:
    first, second = ("adminBearer", "adminApiKey") if admin else ("tenantBearer", "tenantApiKey")
    schemes: list[Json] = [{first: []}, {second: []}]
    # `{}`: no key needed (no tenants, or no admin key configured).
    return schemes if required else [*schemes, {}]


def paths(
    models: Sequence[ModelEntry], tenant_keys: bool, admin_key: bool, limit: int
) -> dict[str, Json]:
    all_names = [m.name for m in models]
    tensor_names = [m.name for m in models if m.kind == "tensor"]
    chat_names = [m.name for m in models if m.kind == "chat"]
    embedding_names = [m.name for m in models if m.kind == "embeddings"]
    versions = sorted({m.version for m in models})

    def path_param(name: str, schema: Json, description: str) -> Json:
        return {
            "name": name,
            "in": "path",
            "required": True,
            "description": description,
            "schema": schema,
        }

    model = path_param("model", _name_schema(all_names, "configured model"), "A model's name.")
    tensor_model = path_param(
        "model",
        _name_schema(tensor_names, "model of kind tensor"),
        "A model of kind `tensor` (chat and embeddings models are served on /v1/).",
    )
    version = path_param(
        "version",
        _name_schema(versions, "model version"),
        "The model's version (another version: 404).",
    )
    common = [ref("parameters", "RequestId"), ref("parameters", "RequestTimeout")]
    tenant_security = _security(admin=False, required=tenant_keys)
    admin_security = _security(admin=True, required=admin_key)

    def v2_get(
        op_id: str,
        summary: str,
        ok: Json,
        params: list[Json],
        *,
        tag: str = V2,
        errors: Sequence[int] = (400,),
        extra: Json | None = None,
    ) -> Json:
        return {
            "get": {
                "operationId": op_id,
                "tags": [tag],
                "summary": summary,
                "parameters": [*params, *common],
                "responses": {
                    "200": {
                        "description": "OK",
                        "headers": V2_HEADERS,
                        "content": json_content(ok),
                    },
                    **(extra or {}),
                    **error_responses(errors, openai=False, limit=limit),
                },
            }
        }

    def readiness(op_id: str, summary: str, params: list[Json], errors: Sequence[int]) -> Json:
        schema = schema_ref("ModelReady" if params else "Ready")
        not_ready = {
            "503": {
                "description": "Not ready: no ready backend"
                + ("" if params else " for some model, or the server is stopping (the drain)"),
                "headers": V2_HEADERS,
                "content": json_content(schema),
            }
        }
        return v2_get(op_id, summary, schema, params, errors=errors, extra=not_ready)

    def infer(op_id: str, params: list[Json]) -> Json:
        examples = _infer_examples(models)
        json_body: Json = {"schema": schema_ref("InferRequest")}
        if examples:
            json_body["examples"] = examples
        binary_headers = {
            **V2_HEADERS,
            "inference-header-content-length": ref("headers", "InferenceHeaderContentLength"),
        }
        return {
            "post": {
                "operationId": op_id,
                "tags": [V2],
                "summary": "Infer",
                "description": "KServe v2 inference: JSON tensors, or the binary tensor "
                "extension (`application/octet-stream` with the "
                "`inference-header-content-length` header). Inputs are checked against the "
                "model's signature (GET /v2/models/{model}) as they are decoded. The answer "
                "is JSON unless an output was asked for as binary data.",
                "security": tenant_security,
                "parameters": [
                    *params,
                    *common,
                    ref("parameters", "CacheControl"),
                    ref("parameters", "InferenceHeaderContentLength"),
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": json_body,
                        "application/octet-stream": {"schema": schema_ref("BinaryTensorBody")},
                    },
                },
                "responses": {
                    "200": {
                        "description": "The outputs.",
                        "headers": binary_headers,
                        "content": {
                            **json_content(schema_ref("InferResponse")),
                            "application/octet-stream": {"schema": schema_ref("BinaryTensorBody")},
                        },
                    },
                    **error_responses(PIPELINE_ERRORS, openai=False, limit=limit),
                },
            }
        }

    chat_request = {
        "allOf": [
            schema_ref("ChatCompletionRequest"),
            {"properties": {"model": _name_schema(chat_names, "model of kind chat")}},
        ]
    }
    embedding_request = {
        "allOf": [
            schema_ref("EmbeddingRequest"),
            {"properties": {"model": _name_schema(embedding_names, "model of kind embeddings")}},
        ]
    }
    embedding_example = {
        "model": embedding_names[0] if embedding_names else "embeddings",
        "input": ["a sentence", "another"],
    }
    chat_example = {
        "model": chat_names[0] if chat_names else "chat",
        "messages": [{"role": "user", "content": "Say hello"}],
    }

    def openai_post(op_id: str, summary: str, description: str, body: Json, ok: Json) -> Json:
        return {
            "post": {
                "operationId": op_id,
                "tags": [OPENAI],
                "summary": summary,
                "description": description,
                "security": tenant_security,
                "parameters": [*common, ref("parameters", "CacheControl")],
                "requestBody": {"required": True, "content": {"application/json": body}},
                "responses": {
                    "200": {"description": "OK", "headers": LLM_HEADERS, "content": ok},
                    **error_responses(PIPELINE_ERRORS, openai=True, limit=limit),
                },
            }
        }

    admin_errors = {"401": error_response(401, False, limit, "The admin key is missing or wrong.")}
    refused = {
        "422": {
            "description": "Refused: the config is bad (or there is no earlier one); the "
            "running config stays.",
            "content": json_content(schema_ref("AdminRefused")),
        }
    }

    def admin(method: str, op_id: str, summary: str, ok: str, extra: Json | None = None) -> Json:
        return {
            method: {
                "operationId": op_id,
                "tags": [ADMIN],
                "summary": summary,
                "security": admin_security,
                "responses": {
                    "200": {"description": "OK", "content": json_content(schema_ref(ok))},
                    **admin_errors,
                    **(extra or {}),
                },
            }
        }

    backend = path_param("backend", {"type": "string"}, "A configured backend's name.")
    switch_404 = {"404": error_response(404, False, limit, "Unknown backend.")}

    def switch(op_id: str, summary: str) -> Json:
        operation = admin("post", op_id, summary, "BackendSwitch", switch_404)
        operation["post"]["parameters"] = [backend]
        return operation

    promoted = path_param("model", {"type": "string"}, "A configured model's name.")
    promotion_errors = {
        "400": error_response(
            400,
            False,
            limit,
            "Not now: a bad body, a model the gate cannot promote, or another promotion under way.",
        ),
        "404": error_response(
            404,
            False,
            limit,
            "Unknown model or version, no promotion to show, or no "
            "`promotion` section in the config.",
        ),
    }

    def promotion(method: str, op_id: str, summary: str, body: bool = False) -> Json:
        """The promotion gate's operations: each answers the promotion's state and
        numbers (docs/configuration.md#promotion)."""
        run = {"type": "object", "description": "The promotion: state, reasons and numbers."}
        operation = admin(method, op_id, summary, "AdminConfigState", promotion_errors)
        operation[method]["responses"]["200"]["content"] = json_content(run)
        operation[method]["parameters"] = [promoted]
        if body:
            version = {
                "type": "object",
                "required": ["version"],
                "properties": {
                    "version": {"type": "string", "description": "The version to promote."}
                },
            }
            operation[method]["requestBody"] = {"required": True, "content": json_content(version)}
        return operation

    stats = schema_ref("ModelStatistics")
    return {
        # -- KServe v2
        "/v2": v2_get("serverMetadata", "Server metadata", schema_ref("ServerMetadata"), []),
        "/v2/health/live": v2_get("serverLive", "Liveness", schema_ref("Live"), []),
        "/v2/health/ready": readiness(
            "serverReady", "Readiness: every model has a ready backend", [], (400,)
        ),
        "/v2/models/{model}": v2_get(
            "modelMetadata",
            "A model's signature",
            schema_ref("ModelMetadata"),
            [model],
            errors=(400, 404),
        ),
        "/v2/models/{model}/versions/{version}": v2_get(
            "modelVersionMetadata",
            "A model version's signature",
            schema_ref("ModelMetadata"),
            [model, version],
            errors=(400, 404),
        ),
        "/v2/models/{model}/ready": readiness(
            "modelReady", "Whether the model has a ready backend", [model], (400, 404)
        ),
        "/v2/models/{model}/versions/{version}/ready": readiness(
            "modelVersionReady",
            "Whether the model version has a ready backend",
            [model, version],
            (400, 404),
        ),
        INFER_PATHS[0]: infer("modelInfer", [tensor_model]),
        INFER_PATHS[1]: infer("modelVersionInfer", [tensor_model, version]),
        # -- Triton's extensions
        "/v2/models/{model}/config": v2_get(
            "modelConfig",
            "A model's configuration",
            schema_ref("ModelConfig"),
            [model],
            tag=TRITON,
            errors=(400, 404),
        ),
        "/v2/models/{model}/versions/{version}/config": v2_get(
            "modelVersionConfig",
            "A model version's configuration",
            schema_ref("ModelConfig"),
            [model, version],
            tag=TRITON,
            errors=(400, 404),
        ),
        "/v2/models/stats": v2_get(
            "modelStatisticsAll", "Every model's statistics", stats, [], tag=TRITON
        ),
        "/v2/models/{model}/stats": v2_get(
            "modelStatistics",
            "A model's statistics",
            stats,
            [model],
            tag=TRITON,
            errors=(400, 404),
        ),
        "/v2/models/{model}/versions/{version}/stats": v2_get(
            "modelVersionStatistics",
            "A model version's statistics",
            stats,
            [model, version],
            tag=TRITON,
            errors=(400, 404),
        ),
        "/v2/repository/index": {
            "post": {
                "operationId": "repositoryIndex",
                "tags": [TRITON],
                "summary": "The models of the repository and their state",
                "parameters": common,
                "requestBody": {
                    "required": False,
                    "content": json_content(schema_ref("RepositoryIndexRequest")),
                },
                "responses": {
                    "200": {
                        "description": "OK",
                        "headers": V2_HEADERS,
                        "content": json_content(schema_ref("RepositoryIndex")),
                    },
                    **error_responses((400, 413), openai=False, limit=limit),
                },
            }
        },
        # -- OpenAI
        "/v1/chat/completions": openai_post(
            "createChatCompletion",
            "Chat completion",
            "A chat model's answer, whole, or with `stream: true` as server-sent events "
            "passed on chunk by chunk. A streamed request can fall back to the next "
            "backend only before its first chunk.",
            {
                "schema": chat_request,
                "examples": {
                    "whole": {"summary": "The whole answer", "value": chat_example},
                    "streamed": {
                        "summary": "Server-sent events, with the usage at the end",
                        "value": {
                            **chat_example,
                            "stream": True,
                            "stream_options": {"include_usage": True},
                        },
                    },
                },
            },
            {
                **json_content(schema_ref("ChatCompletion")),
                "text/event-stream": {"schema": schema_ref("ChatStreamEvent")},
            },
        ),
        "/v1/embeddings": openai_post(
            "createEmbedding",
            "Embeddings",
            "Vectors of the texts, by a model of kind `embeddings`.",
            {"schema": embedding_request, "examples": {"texts": {"value": embedding_example}}},
            json_content(schema_ref("EmbeddingList")),
        ),
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "tags": [OPENAI],
                "summary": "The chat and embeddings models (with tenants: the caller's)",
                "security": tenant_security,
                "parameters": common,
                "responses": {
                    "200": {
                        "description": "OK",
                        "headers": V2_HEADERS,
                        "content": json_content(schema_ref("ModelList")),
                    },
                    **error_responses((400, 401), openai=True, limit=limit),
                },
            }
        },
        # -- operations
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": [OPS],
                "summary": "Prometheus metrics (docs/contracts.md#metrics)",
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/slo": {
            "get": {
                "operationId": "sloStatus",
                "tags": [OPS],
                "summary": "SLO status per model",
                "responses": {
                    "200": {"description": "OK", "content": json_content(schema_ref("SloStatus"))}
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "openapi",
                "tags": [DOCS],
                "summary": "This document",
                "description": "Lists the models the caller could list on GET /v1/models "
                "(with tenants: those of the key sent, none without one).",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": json_content({"type": "object"}),
                    }
                },
            }
        },
        # -- admin
        "/admin/config": admin("get", "adminConfig", "The running config", "AdminConfig"),
        "/admin/reload": admin(
            "post", "adminReload", "Reload the config file", "AdminConfigState", refused
        ),
        "/admin/rollback": admin(
            "post",
            "adminRollback",
            "Go back to the config before the running one",
            "AdminConfigState",
            refused,
        ),
        "/admin/backends/{backend}/disable": switch(
            "adminDisableBackend", "Kill switch: the backend takes no more requests"
        ),
        "/admin/backends/{backend}/enable": switch("adminEnableBackend", "Undo the kill switch"),
        "/admin/models/{model}/promote": promotion(
            "post", "adminPromote", "Promotion gate: check, evaluate, then canary", body=True
        ),
        "/admin/models/{model}/promotion": promotion(
            "get", "adminPromotion", "The model's latest promotion"
        ),
        "/admin/models/{model}/promotion/abort": promotion(
            "post", "adminPromotionAbort", "Abort the running canary (back to the serving version)"
        ),
    }
