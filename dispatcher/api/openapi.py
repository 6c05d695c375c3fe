"""The OpenAPI 3 document, generated from the route table and its pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from dispatcher import wire
from dispatcher.api.routes import Route

_REF = "#/components/schemas/{model}"
_STATUS_TEXT = {
    400: "Invalid JSON or request",
    401: "Missing or wrong token",
    403: "Token of the wrong role",
    404: "Unknown node, check or route",
    409: "Conflict",
    413: "Body larger than 4 MiB",
    415: "Body is not application/json",
    503: "No leader known, or unhealthy",
    508: "Forwarding loop",
}


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
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
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
            "content": {"application/json": {"schema": keys[(route.body, "validation")]}},
        }
    responses: dict[str, Any] = {}
    if route.reply is not None:
        responses["200"] = {
            "description": "OK",
            "content": {"application/json": {"schema": keys[(route.reply, "serialization")]}},
        }
    elif route.name == "metrics":
        responses["200"] = {"description": "Prometheus text", "content": {"text/plain": {}}}
    else:
        responses["200"] = {"description": "OK", "content": {"application/json": {}}}
    codes: set[int] = set(route.errors)
    if route.body is not None:
        codes |= {400, 413, 415}
    if route.role is not None:
        codes |= {400, 401, 403}
    if route.leader_only:
        codes |= {503, 508}
    error_schema = keys[(wire.ErrorOut, "serialization")]
    for code in sorted(codes):
        responses[str(code)] = {
            "description": _STATUS_TEXT.get(code, "Error"),
            "content": {"application/json": {"schema": error_schema}},
        }
    op["responses"] = responses
    return op
