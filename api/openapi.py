"""The OpenAPI document of the API (``/openapi.json``), built from the request schemas themselves."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from api.schemas.generation import ChatCompletionRequest, CompletionRequest
from api.schemas.pooling import EmbeddingRequest, RerankRequest

_BODIES = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/rerank": RerankRequest,
}

_ERROR = {
    "type": "object",
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
}

_STATUSES = {
    "400": "Invalid request (the `param` names the parameter)",
    "401": "Missing or wrong API key",
    "404": "Unknown model, route or job",
    "413": "Request body too large",
    "429": "Queue full or rate limit; see Retry-After",
    "503": "No live worker or Redis unreachable; see Retry-After",
    "504": "Deadline passed",
}


def _errors() -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {status: {"description": text, **ref} for status, text in _STATUSES.items()}


def _ok(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for every endpoint; request bodies are the pydantic schemas the API validates with."""
    refs, definitions = models_json_schema(
        [(model, "validation") for model in _BODIES.values()], ref_template="#/components/schemas/{model}"
    )
    schemas = {**definitions.get("$defs", {}), "Error": _ERROR}
    paths: dict[str, Any] = {}
    for path, model in _BODIES.items():
        paths[path] = {
            "post": {
                "operationId": path.strip("/").replace("/", "_"),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": refs[(model, "validation")]}},
                },
                "responses": {"200": _ok("The result (or an SSE stream when `stream` is true)"), **_errors()},
            }
        }
    path_param = {"in": "path", "required": True, "schema": {"type": "string"}}
    paths["/v1/models"] = {"get": {"operationId": "list_models", "responses": {"200": _ok("Live models")}}}
    paths["/v1/models/{model_id}"] = {
        "get": {
            "operationId": "get_model",
            "parameters": [{"name": "model_id", **path_param}],
            "responses": {"200": _ok("The model"), **_errors()},
        }
    }
    job = {
        "parameters": [{"name": "job_id", **path_param}],
        "responses": {"200": _ok("The job"), **_errors()},
    }
    paths["/v1/jobs/{job_id}"] = {
        "get": {"operationId": "get_job", **job},
        "delete": {"operationId": "cancel_job", **job},
    }
    paths["/health"] = {"get": {"operationId": "health", "responses": {"200": _ok("Ready"), **_errors()}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelyard", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
