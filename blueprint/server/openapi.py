"""The OpenAPI 3.1 document of the API, generated from the route table and the wire types'
JSON schemas (``model_json_schema``), so it says what the server really accepts and returns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from blueprint import __version__
from blueprint.server.routes import ROUTES, RouteSpec

REF = "#/components/schemas/{model}"

_STATUS_TEXT = {
    400: "Invalid request (bad JSON or fields).", 401: "Missing or invalid API key.",
    404: "Unknown model or node.", 413: "Body or prompt too large.",
    429: "Overloaded, rate limited, or too many failed keys from this address; see Retry-After.",
    500: "Internal error.",
    503: "No healthy node.", 504: "The backend timed out.",
}

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "code": {"type": "string"}, "param": {"type": ["string", "null"]},
            },
        }
    },
}


def _models() -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    for spec in ROUTES:
        for model in (spec.request, spec.response, spec.stream_chunk):
            if model is not None and model not in seen:
                seen.append(model)
    return seen


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _operation(spec: RouteSpec) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": spec.name, "summary": spec.summary}
    if spec.auth != "none":
        op["security"] = [{"bearer": []}]
    if "{name}" in spec.path:
        op["parameters"] = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    if spec.request is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": _ref(spec.request)}}}
    content: dict[str, Any] = {}
    if spec.response is not None:
        content["application/json"] = {"schema": _ref(spec.response)}
    elif spec.response_type == "text/plain":
        content["text/plain"] = {"schema": {"type": "string"}}
    else:
        content["application/json"] = {"schema": {"type": "object"}}
    if spec.stream_chunk is not None:
        content["text/event-stream"] = {
            "schema": {"type": "string"},
            "description": f"With `stream: true`: `data: <{spec.stream_chunk.__name__}>` events, "
                           "`: keep-alive` comments before the first token, `data: [DONE]` at the end; "
                           "a failure after the first event is sent as `data: <Error>`.",
        }
    responses: dict[str, Any] = {str(spec.success): {"description": "Success.", "content": content}}
    for status in sorted({*spec.errors, 500}):
        responses[str(status)] = {
            "description": _STATUS_TEXT.get(status, "Error."),
            "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
        }
    op["responses"] = responses
    return op


def build_openapi() -> dict[str, Any]:
    """The whole document (built once per app)."""
    _, defs = models_json_schema([(model, "validation") for model in _models()], ref_template=REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["Error"] = _ERROR_SCHEMA
    paths: dict[str, Any] = {}
    for spec in ROUTES:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tangle LLM operator: OpenAI-compatible API", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
