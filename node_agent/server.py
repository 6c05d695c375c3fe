"""The agent's local server: /healthz, /readyz, health components, /metrics and
/v1/check-report."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dispatcher.common.health import HealthRegistry, Verdict, component_body, verdict_body
from dispatcher.common.httperrors import respond
from dispatcher.errors import (
    BodyTooLarge,
    InvalidJson,
    InvalidRequest,
    NotFound,
    UnsupportedMediaType,
)
from node_agent.metrics import AgentMetrics
from node_agent.reports import Report, RunRegistry

log = structlog.get_logger(__name__)

REGISTRY = web.AppKey("runs", RunRegistry)
HEALTH = web.AppKey("health", HealthRegistry)
METRICS = web.AppKey("metrics", AgentMetrics)
MAX_BODY_BYTES = 1024 * 1024
"""A report is a verdict and a few errors: 1 MiB is plenty (the dispatcher takes 4)."""


def create_app(
    *, runs: RunRegistry, health: HealthRegistry, metrics: AgentMetrics
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors])
    app[REGISTRY] = runs
    app[HEALTH] = health
    app[METRICS] = metrics
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/v1/api/health/components", _components)
    app.router.add_get("/v1/api/health/components/{name}", _component)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/v1/check-report", _check_report)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPRequestEntityTooLarge as exc:
            # The shared error names the dispatcher's limit; this server's is smaller.
            raise BodyTooLarge(
                f"The request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB "
                f"({MAX_BODY_BYTES} bytes), this agent's limit."
            ) from exc
        return response

    response = await respond(request, guarded)
    response.headers["X-Request-Id"] = request_id[:128]
    return response


def _health(verdict: Verdict) -> web.Response:
    return web.Response(
        body=orjson.dumps(verdict_body(verdict).model_dump()),
        status=200 if verdict.ok else 503,
        content_type="application/json",
    )


async def _healthz(request: web.Request) -> web.Response:
    return _health(request.app[HEALTH].liveness())


async def _readyz(request: web.Request) -> web.Response:
    return _health(request.app[HEALTH].readiness())


async def _components(request: web.Request) -> web.Response:
    verdict = request.app[HEALTH].readiness()
    return web.Response(
        body=orjson.dumps(verdict_body(verdict).model_dump()), content_type="application/json"
    )


async def _component(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    component = request.app[HEALTH].components().get(name)
    if component is None:
        raise NotFound(f"No health component named {name[:80]!r}.")
    return web.Response(
        body=orjson.dumps(component_body(component).model_dump()), content_type="application/json"
    )


async def _metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(request.app[METRICS].registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _check_report(request: web.Request) -> web.Response:
    """A program's own verdict (Kuberhealthy's field and header names accepted too)."""
    run_id = request.headers.get("X-Run-Id") or request.headers.get("kh-run-uuid")
    if not run_id:
        raise InvalidRequest("The X-Run-Id (or kh-run-uuid) header is required.")
    # Some report clients send no Content-Type at all; anything else must be JSON.
    if "Content-Type" in request.headers and request.content_type != "application/json":
        raise UnsupportedMediaType()
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"The report is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict):
        raise InvalidRequest('The report must be an object {"ok": bool, "errors": [...]}.')
    fields = {str(k).lower(): v for k, v in data.items()}
    ok = fields.get("ok")
    errors = fields.get("errors") or []
    if not isinstance(ok, bool):
        raise InvalidRequest('"ok" must be true or false.')
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise InvalidRequest('"errors" must be a list of strings.')
    request.app[REGISTRY].report(run_id, Report(ok=ok, errors=[e[:4096] for e in errors]))
    return web.Response(body=b'{"accepted":true}', content_type="application/json")
