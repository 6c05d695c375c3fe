"""The OpenAPI 3 document, generated from the route table and its pydantic models.

``create_app`` builds it once from ``routes.ROUTES``; this module knows the table's
shape (``table``) but not the table itself, so it cannot import its way back into the
routes (an import-linter contract holds that).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from dispatcher import wire
from dispatcher.api.table import JSON, PATH_PARAMS, Route

_REF = "#/components/schemas/{model}"
_STATUS_TEXT = {
    200: "OK",
    400: "Invalid JSON, request, name or query parameter",
    401: "Missing or wrong token",
    403: "Token of the wrong role",
    404: "Unknown node, check or component",
    408: "The request head or body did not arrive in time (request_timeout)",
    409: "Conflict",
    413: "Body larger than the limit (body_too_large), or a source over its check limit"
    " (too_many_checks)",
    415: "Body is not application/json",
    431: "Request line or header fields too large (headers_too_large)",
    503: "No leader known, the leader or the store does not answer, unhealthy, or every"
    " connection busy at the connection cap (unavailable)",
    508: "Forwarding loop",
}
_HEADERS: dict[str, Any] = {
    "RequestId": {
        "description": "The request's id (the caller's X-Request-Id when well-formed).",
        "required": True,
        "schema": {"type": "string"},
    },
    "RetryAfter": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
}
_REQUEST_ID = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}


def document(routes: tuple[Route, ...], *, server_url: str) -> dict[str, Any]:
    pairs: set[tuple[type[BaseModel], JsonSchemaMode]] = {(wire.ErrorOut, "serialization")}
    for route in routes:
        if route.body is not None:
            pairs.add((route.body, "validation"))
        if route.reply is not None:
            pairs.add((route.reply, "serialization"))
    keys, schemas = models_json_schema(
        sorted(pairs, key=lambda pair: (pair[0].__name__, pair[1])), ref_template=_REF
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, keys)
    return {
        "openapi": "3.1.0",
        "info": {"title": "clusterchecks dispatcher", "version": "1"},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "headers": _HEADERS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(route: Route, keys: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.name, "summary": route.summary}
    if route.role is not None:
        op["security"] = [{"bearer": []}]
        op["tags"] = [route.role.value]
        op["description"] = f"Role: {route.role.value} (or admin)."
    params = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "string", "pattern": PATH_PARAMS[name].pattern,
                    "examples": list(PATH_PARAMS[name].examples)},
         "description": PATH_PARAMS[name].description}
        for name in route.path_params
    ]  # fmt: skip
    params += [
        {"name": q.name, "in": "query", "required": False, "schema": q.schema,
         "description": q.description}
        for q in route.query
    ]  # fmt: skip
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": not route.body_optional,
            "content": {JSON: {"schema": keys[(route.body, "validation")]}},
        }
    reply: dict[str, Any]
    if route.reply is not None:
        reply = {route.media_type: {"schema": keys[(route.reply, "serialization")]}}
    elif route.media_type == JSON:
        reply = {JSON: {}}
    else:
        reply = {route.media_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {
        str(code): {
            "description": _STATUS_TEXT.get(code, "Reply"),
            "headers": _REQUEST_ID,
            "content": reply,
        }
        for code in route.reply_statuses
    }
    error = {JSON: {"schema": keys[(wire.ErrorOut, "serialization")]}}
    for code in sorted(route.error_statuses()):
        headers = dict(_REQUEST_ID)
        if code == 503:
            # Every 503 with the error body is an Unavailable, which says when to retry.
            headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
        responses[str(code)] = {
            "description": _STATUS_TEXT.get(code, "Error"),
            "headers": headers,
            "content": error,
        }
    op["responses"] = dict(sorted(responses.items()))
    return op
