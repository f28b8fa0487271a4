"""The OpenAPI document, generated from the app's own routes and request models.

Every `ApiRoute` contributes its operation: path parameters, the query model's
fields as parameters, the body model as the request body, its responses. Nothing
here is written by hand, so the document says what the routes accept.
(WebSocket and SSE frames: docs/protocol.md.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute

from gateway import __version__, sanitizer
from gateway.api.models import ApiModel
from gateway.api.operation import ApiRoute, Operation

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Malformed input: the message names the field",
    401: "Missing or invalid credentials",
    403: "Not allowed for this credential",
    404: "Not found",
    409: "Conflict with the session's state",
    413: "Body too large",
    415: "Unsupported media type",
    429: "Rate limited by the provider",
    500: "A bug (logged)",
    502: "The agent or the provider failed",
    503: "Not ready",
    504: "No reply in time",
}

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def openapi_document(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if isinstance(route, ApiRoute):
            paths.setdefault(route.path, {})[route.operation.method] = _operation(route.operation, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Switchboard gateway",
            "version": __version__,
            "description": "Frames of the WebSocket and SSE surfaces are described in docs/protocol.md.",
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": dict(sorted(schemas.items())),
            "responses": {
                "Error": {
                    "description": "Error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
        },
        "paths": paths,
    }


def _operation(op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": _REASONS.get(op.ok, "OK")}
    if op.ok != 204:
        ok["content"] = {op.produces: {"schema": {}}}
    out: dict[str, Any] = {"summary": op.summary, "responses": {str(op.ok): ok}}
    for status in op.errors:
        out["responses"][str(status)] = {"$ref": "#/components/responses/Error"}
    if op.secured:
        out["security"] = [{"apiKey": []}]
    params: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": sanitizer.MAX_ID},
        }
        for name in op.path_params
    ]
    if op.query is not None:
        params.extend(_query_params(op.query, schemas))
    params.extend(
        {"name": header, "in": "header", "required": False, "schema": {"type": "string"}}
        for header in op.headers
    )
    if params:
        out["parameters"] = params
    if op.body is not None:
        ref = _model(op.body, schemas)
        out["requestBody"] = {"required": op.body_required, "content": {"application/json": {"schema": ref}}}
    elif op.raw_body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {media: {"schema": schema} for media, schema in op.raw_body.items()},
        }
    return out


def _model(model: type[ApiModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _query_params(model: type[ApiModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        # `X | None` is "may be absent" in a query string, not a JSON null.
        variants = prop.pop("anyOf", None)
        if variants is not None:
            real = [v for v in variants if v.get("type") != "null"]
            prop = {**prop, **real[0]} if len(real) == 1 else {**prop, "anyOf": real}
        if prop.get("default", 0) is None:
            prop.pop("default")
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        out.append(param)
    return out
