"""The aiohttp application: middleware (request ids, errors, auth, leadership) and routes.

Order matters and is the contract's: auth is checked before leadership, so a request
without a valid token gets 401/403 even when no leader is known.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import re
import secrets
import time

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from dispatcher.api import openapi
from dispatcher.api.forward import FORWARDED_HEADER, forward, session_context
from dispatcher.api.keys import (
    CLOCK,
    CONFIG_FRAGMENTS,
    DISPATCHER,
    HEALTH,
    LEADERSHIP,
    METRICS,
    OPENAPI,
    REPLICAS,
    ROLE,
    SETTINGS,
    Role,
)
from dispatcher.api.routes import ROUTES, ROUTES_BY_NAME
from dispatcher.api.table import Handler, Route
from dispatcher.common.clock import Clock
from dispatcher.common.health import HealthRegistry
from dispatcher.common.httperrors import failure_response
from dispatcher.common.httpserver import one_line
from dispatcher.convert import ConfigFragments
from dispatcher.election.base import Leadership
from dispatcher.engine import Dispatcher
from dispatcher.errors import (
    BodyTooLarge,
    Forbidden,
    InvalidRequest,
    LoopDetected,
    NoLeader,
    Unauthorized,
)
from dispatcher.metrics import DispatcherMetrics
from dispatcher.replicas import ReplicaReporter
from dispatcher.settings import AuthSettings, Settings
from dispatcher.storage.replicas import LocalReplicaDirectory

log = structlog.get_logger("dispatcher.api")

REQUEST_ID = "X-Request-Id"
LEADER_HEADER = "X-Clusterchecks-Leader"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Request ids: a random prefix per process and a counter; unique without a syscall each.
_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count(1)


def create_app(
    *,
    settings: Settings,
    dispatcher: Dispatcher,
    leadership: Leadership,
    health: HealthRegistry,
    metrics: DispatcherMetrics,
    clock: Clock,
    replicas: ReplicaReporter | None = None,
) -> web.Application:
    """The dispatcher's aiohttp application. Without ``replicas`` (a reporter to the
    shared directory), ``/replicas`` lists this replica alone."""
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[_serve],
    )
    app[SETTINGS] = settings
    app[DISPATCHER] = dispatcher
    app[LEADERSHIP] = leadership
    app[HEALTH] = health
    app[METRICS] = metrics
    app[CLOCK] = clock
    app[CONFIG_FRAGMENTS] = ConfigFragments()
    app[REPLICAS] = replicas or ReplicaReporter(
        directory=LocalReplicaDirectory(clock),
        leadership=leadership,
        health=health,
        url=settings.server.url,
        period_s=settings.health.replica_status_period_s,
        clock=clock,
    )
    app[OPENAPI] = orjson.dumps(openapi.document(ROUTES, server_url=settings.server.url))
    app.cleanup_ctx.append(session_context)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.name)
    return app


@web.middleware
async def _serve(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, one log line per request, the error body for every failure; inside
    those, auth and leadership (``_guarded``). One middleware of two coroutines, not one
    per concern: each layer costs every request, the agents of a large fleet send
    thousands a second, and each agent's long poll holds its chain for up to a minute."""
    incoming = request.headers.get(REQUEST_ID)
    request_id = (
        incoming
        if incoming is not None and _REQUEST_ID_OK.fullmatch(incoming)
        else f"{_ID_PREFIX}-{next(_ID_COUNTER)}"
    )
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    route_name = request.match_info.route.name or "unmatched"
    route = ROUTES_BY_NAME.get(route_name)
    response: web.StreamResponse
    try:
        try:
            response = await _guarded(request, handler, route)
        except Exception as exc:  # not CancelledError: a BaseException, it goes on up
            response = failure_response(request, exc)
        response.headers[REQUEST_ID] = request_id
        leader = request.app[LEADERSHIP].leader()
        if leader is not None:
            response.headers[LEADER_HEADER] = leader.identity
        elapsed = time.perf_counter() - started
        request.app[METRICS].observe_request(route_name, request.method, response.status, elapsed)
        quiet = route is not None and route.routine and response.status < 400
        if not quiet or log.is_enabled_for(logging.DEBUG):  # else not even the fields
            (log.debug if quiet else log.info)(
                "request",
                method=request.method,
                path=request.path,
                route=route_name,
                status=response.status,
                duration_ms=round(elapsed * 1000, 2),
            )
        return response
    finally:
        structlog.contextvars.unbind_contextvars("request_id")


async def _guarded(
    request: web.Request, handler: Handler, route: Route | None
) -> web.StreamResponse:
    """Auth, then leadership (a follower forwards), then the handler; and a body that
    cannot be read as the client's doing: 400, not a 500 and a traceback. aiohttp
    raises its parser's errors from ``request.read()`` (a compressed body that does not
    decompress) and a reset when the client left before sending it all."""
    try:
        if route is None:
            return await handler(request)  # aiohttp answers 404 / 405 for unmatched routes
        settings = request.app[SETTINGS]
        if route.large_body:
            # Its own limit before forwarding too: a follower reads the body to send it on.
            request = request.clone(client_max_size=settings.server.max_import_bytes)
        request[ROLE] = authorize(settings.auth, route, request)
        if route.leader_only:
            leadership = request.app[LEADERSHIP]
            if not leadership.is_leader():
                if request.headers.get(FORWARDED_HEADER):
                    raise LoopDetected()
                leader = leadership.leader()
                if leader is None or leader.identity == leadership.identity:
                    raise NoLeader()
                return await forward(request, leader)
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        if route is None or not route.large_body:
            raise
        limit = request.app[SETTINGS].server.max_import_bytes
        raise BodyTooLarge(f"The request body is larger than {limit:,} bytes.") from exc
    except (HttpProcessingError, RequestPayloadError) as exc:
        reason = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
        raise InvalidRequest(f"The request body cannot be read: {one_line(reason)}") from exc
    except ConnectionResetError as exc:
        if request.transport is not None and not request.transport.is_closing():
            raise  # not the client's connection (a forwarded call, say)
        raise InvalidRequest("The client closed the connection before the whole body.") from exc


def authorize(auth: AuthSettings, route: Route, request: web.Request) -> Role:
    """The caller's role for this route; raises 401 or 403."""
    if route.role is None or not auth.enabled:
        return Role.ADMIN
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    token = token.strip()
    if not token.isascii():
        # Tokens are printable ASCII (common.cli.read_token); bytes that are not UTF-8
        # arrive as surrogates, which str.encode() refuses.
        raise Unauthorized("The bearer token is not valid.")
    presented = token.encode()
    matched: Role | None = None
    for role, expected in (
        (Role.ADMIN, auth.admin_token),
        (Role.NODE, auth.node_token),
        (Role.SOURCE, auth.source_token),
    ):
        # Compare against every token, in constant time each, whatever matches first.
        if expected and hmac.compare_digest(presented, expected.encode()) and matched is None:
            matched = role
    if matched is None:
        raise Unauthorized("The bearer token is not valid.")
    if matched is Role.ADMIN or matched is route.role:
        return matched
    raise Forbidden(
        f"A {matched.value} token may not use this route; it needs the {route.role.value} role."
    )
