"""Every route of API.md: thin handlers and the table of routes (``ROUTES``).

The table drives the router, the auth and leadership middleware and the OpenAPI
document, so the three cannot disagree; what a route declares is ``table.Route``.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from dispatcher import convert, wire
from dispatcher.api import transfer
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
from dispatcher.api.table import PATH_PARAMS, QueryParam, Route
from dispatcher.common import slicedjson, validation
from dispatcher.common.health import Verdict, component_body, verdict_body
from dispatcher.common.validation import field_problems
from dispatcher.core.history import LIMIT_DEFAULT, LIMIT_MAX
from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName
from dispatcher.core.overview import (
    PAGE_DEFAULT,
    PAGE_MAX,
    QUERY_MAX_CHARS,
    CheckFilter,
    CheckStatus,
)
from dispatcher.core.state import ClusterState
from dispatcher.core.transfer import export_state
from dispatcher.errors import (
    Conflict,
    Forbidden,
    InvalidJson,
    InvalidRequest,
    NotFound,
    StoreError,
    StoreUnavailable,
    UnsupportedMediaType,
)
from dispatcher.replicas import replica_out
from dispatcher.ui import CONTENT_SECURITY_POLICY, INDEX, MEDIA_TYPES, asset

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", wire.FastStatusIn, wire.FastResultsIn)
B = TypeVar("B", wire.SourcePutIn, wire.ChecksPostIn)

_PATH_PATTERNS = {name: re.compile(param.pattern) for name, param in PATH_PARAMS.items()}
_SOURCE_NAME = _PATH_PATTERNS["source"]


# ------------------------------------------------------------------- helpers


def reply(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(model.model_dump()), status=status, content_type="application/json"
    )


def json_reply(body: dict[str, Any]) -> web.Response:
    """A reply built as a dict (``convert``'s ``*_out`` of the agents' routes): the
    same JSON as its model's, without a model made per request."""
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def read_body(request: web.Request, model: type[M], *, optional: bool = False) -> M:
    """Parses and validates the JSON body; every failure is a 4xx with its reason."""
    if optional and not request.body_exists:
        return model()
    raw = await read_raw_json(request)
    return await _validated(raw, model, now_s=request.app[CLOCK].time())


async def read_agent_body(request: web.Request, fast: type[F], model: type[M]) -> F | M:
    """An agent's heartbeat or results body: by the ``fast`` model when it takes the
    body and the body ``holds`` (``wire``, the agents' bodies), else as ``read_body``
    (which then gives the same answer, or error, as always)."""
    raw = await read_raw_json(request)
    now_s = request.app[CLOCK].time()
    if slicedjson.parses_as_one(raw):
        try:
            body = fast.model_validate_json(raw)
        except ValidationError:
            pass
        else:
            if body.holds(now_s):
                return body
    return await _validated(raw, model, now_s=now_s)


async def _validated(raw: bytes, model: type[M], *, now_s: float) -> M:
    # Reported times are judged against the injected clock (wire.ReportedTime).
    context = {"now_s": now_s}
    if slicedjson.parses_as_one(raw):
        # The common case in one pass (pydantic's JSON parser straight into the model: no
        # decoded value in between). A body it refuses goes the long way below, so that
        # every error is the same.
        with contextlib.suppress(ValidationError):
            return model.model_validate_json(raw, context=context)
    data = await decode_json(raw)
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise invalid_request(exc) from exc


async def read_raw_json(request: web.Request) -> bytes:
    """The raw body of a JSON request; 415 for another content type."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"The request body must be application/json, not {request.content_type or 'none'}."
        )
    return await request.read()


async def decode_json(
    raw: bytes,
    *,
    consume: Mapping[str, slicedjson.Consumer] | None = None,
    slice_elements: int = slicedjson.SLICE_ELEMENTS,
) -> Any:
    """The decoded JSON value; 400 for invalid JSON (see ``read_json``)."""
    try:
        # Integers of any size stay exact (orjson would turn them into floats silently),
        # so validation can refuse what does not fit; a big body decodes in slices.
        return await slicedjson.loads(raw, consume=consume, slice_elements=slice_elements)
    except ValueError as exc:
        raise InvalidJson(f"The request body is not valid JSON: {exc}.") from exc


async def read_json(
    request: web.Request,
    *,
    consume: Mapping[str, slicedjson.Consumer] | None = None,
    slice_elements: int = slicedjson.SLICE_ELEMENTS,
) -> Any:
    """The decoded JSON body; 415 for another content type, 400 for invalid JSON. The
    elements of a top-level array under a key of ``consume`` go to it, ``slice_elements``
    at a time (slicedjson)."""
    raw = await read_raw_json(request)
    return await decode_json(raw, consume=consume, slice_elements=slice_elements)


def invalid_request(exc: ValidationError) -> InvalidRequest:
    return validation.invalid_request(field_problems(exc))


async def read_configs(request: web.Request, model: type[B]) -> tuple[B, list[CheckConfig]]:
    """A PUT or POST body of configs: decoded, validated and converted a slice at a time
    (the loop stays free meanwhile; the reply still waits for the whole change)."""
    configs = convert.ConfigsIn()
    data = await read_json(
        request,
        consume={"configs": configs.take},
        slice_elements=request.app[DISPATCHER].settings.apply_slice_checks,
    )
    return configs.body(data, model), configs.configs


def path_name(request: web.Request, key: str) -> str:
    value = request.match_info[key]
    allowed = "A-Za-z0-9._:-" if key == "source" else "A-Za-z0-9._-"
    if not _PATH_PATTERNS[key].fullmatch(value):
        raise InvalidRequest(
            f"Invalid {key} name {value[:80]!r}: use 1 to 253 characters of [{allowed}],"
            " other than '.' and '..'.",
            details={"fields": [{"path": key, "message": "invalid name"}]},
        )
    return value


def writable_source(name: str) -> SourceName:
    """Refuses writes to the sources the dispatcher feeds itself (the file or the
    Kubernetes object is the truth)."""
    if name.startswith(wire.INTERNAL_SOURCE_PREFIXES):
        origin = "a Kubernetes object" if name.startswith("k8s:") else "its config directory"
        raise Conflict(
            f"Source {name[:80]!r} is fed by the dispatcher itself ({origin}); change that instead."
        )
    return SourceName(name)


def epoch(request: web.Request) -> int:
    info = request.app[LEADERSHIP].leader()
    return info.epoch if info is not None else 0


def query_number(
    request: web.Request, key: str, *, kind: type[int] | type[float], low: float, high: float
) -> float | None:
    raw = request.query.get(key)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or math.isnan(value) or not low <= value <= high:
        raise InvalidRequest(
            f"Query parameter {key}={raw[:40]!r} must be a number from {low:g} to {high:g}.",
            details={"fields": [{"path": f"query.{key}", "message": "out of range"}]},
        )
    return value


# ------------------------------------------------------------- node agents


async def post_status(request: web.Request) -> web.Response:
    node = NodeName(path_name(request, "node"))
    body = await read_agent_body(request, wire.FastStatusIn, wire.StatusIn)
    dispatcher = request.app[DISPATCHER]
    # Each entry on its own: a bad one is dropped (and logged), not the whole status.
    running_configs, unreadable = convert.running_configs_in(body.running_configs)
    up_to_date = await dispatcher.node_status(
        node,
        last_change=body.last_change,
        labels=body.labels,
        capacity=body.capacity,
        running=[Digest(d) for d in body.running] if body.running is not None else None,
        stats=convert.stats_in(body.stats),
        leaving=body.leaving,
        running_configs=running_configs,
        unreadable=unreadable,
    )
    # wire.StatusOut, without the model: 1,000 heartbeats a second at 10,000 agents.
    return json_reply(
        convert.status_out(
            is_up_to_date=up_to_date,
            epoch=epoch(request),
            leader=request.app[LEADERSHIP].identity,
            heartbeat_interval_s=dispatcher.settings.heartbeat_interval_s,
            node_expiration_timeout_s=dispatcher.settings.node_expiration_timeout_s,
            results_interval_s=dispatcher.settings.results_interval_s(len(dispatcher.state.nodes)),
            warmup=dispatcher.warming_up(),
            send_running_configs=not body.leaving and dispatcher.wants_running_configs(node),
        )
    )


async def get_configs(request: web.Request) -> web.Response:
    node = NodeName(path_name(request, "node"))
    since = query_number(request, "since", kind=int, low=-1, high=wire.MAX_INT64)
    wait_s = query_number(request, "wait_s", kind=float, low=0, high=wire.MAX_WAIT_S) or 0.0
    dispatcher = request.app[DISPATCHER]
    last_change, configs = await dispatcher.node_configs(
        node, since=int(since) if since is not None else None, wait_s=wait_s
    )
    body = convert.node_configs_json(  # wire.NodeConfigsOut, without a model per config
        last_change=last_change,
        epoch=epoch(request),
        configs=configs,
        state=dispatcher.state,
        warmup=dispatcher.warming_up(),
        fragments=request.app[CONFIG_FRAGMENTS],
    )
    return web.Response(body=body, content_type="application/json")


async def post_results(request: web.Request) -> web.Response:
    node = NodeName(path_name(request, "node"))
    body = await read_agent_body(request, wire.FastResultsIn, wire.ResultsIn)
    accepted, rejected = await request.app[DISPATCHER].record_results(
        node, convert.results_in(body.results)
    )
    return json_reply(
        convert.results_out(epoch=epoch(request), accepted=accepted, rejected=rejected)
    )


# ---------------------------------------------------------- config sources


async def put_source(request: web.Request) -> web.Response:
    source = writable_source(path_name(request, "source"))
    _, configs = await read_configs(request, wire.SourcePutIn)
    change = await request.app[DISPATCHER].replace_source(source, configs)
    return reply(
        wire.SourcePutOut(
            epoch=epoch(request),
            digests=list(change.digests),
            added=change.added,
            removed=change.removed,
            unchanged=change.unchanged,
        )
    )


async def get_source(request: web.Request) -> web.Response:
    source = SourceName(path_name(request, "source"))
    configs = await request.app[DISPATCHER].read(
        lambda state: [convert.config_out(c, state) for c in state.source_configs(source)]
    )
    return reply(wire.SourceGetOut(epoch=epoch(request), configs=configs))


async def post_checks(request: web.Request) -> web.Response:
    body, configs = await read_configs(request, wire.ChecksPostIn)
    digests = await request.app[DISPATCHER].add_to_source(writable_source(body.source), configs)
    return reply(wire.ChecksPostOut(epoch=epoch(request), digests=list(digests)))


async def delete_check(request: web.Request) -> web.Response:
    digest = Digest(request.match_info["digest"])
    source_raw = request.query.get("source")
    if source_raw is None and request[ROLE] is not Role.ADMIN:
        raise Forbidden("Removing a check from every source (no ?source=) needs the admin role.")
    if source_raw is not None and not _SOURCE_NAME.fullmatch(source_raw):
        raise InvalidRequest(
            f"Invalid source name {source_raw[:80]!r}: use 1 to 253 characters of [A-Za-z0-9._:-].",
            details={"fields": [{"path": "query.source", "message": "invalid name"}]},
        )
    source = writable_source(source_raw) if source_raw is not None else None
    await request.app[DISPATCHER].remove_check(digest, source=source)
    return reply(wire.RemovedOut(epoch=epoch(request), removed=True))


# ------------------------------------------------------------------ admins


async def get_state(request: web.Request) -> web.Response:
    leadership = request.app[LEADERSHIP]
    now = request.app[CLOCK].monotonic()
    info = leadership.leader()

    def view(state: ClusterState) -> wire.StateOut:
        return wire.StateOut(
            leader=info.identity if info else None,
            is_leader=leadership.is_leader(),
            epoch=epoch(request),
            warmup=state.warming_up(now),
            nodes=[convert.node_out(state.nodes[n], state, now=now) for n in sorted(state.nodes)],
            dangling=sorted(state.dangling),
            totals=wire.TotalsOut(
                nodes=len(state.nodes),
                checks=len(state.configs),
                dispatched=len(state.placement),
                dangling=len(state.dangling),
            ),
        )

    return reply(await request.app[DISPATCHER].read(view))


async def list_checks(request: web.Request) -> web.Response:
    now_wall = request.app[CLOCK].time()
    checks = await request.app[DISPATCHER].read(
        lambda state: [
            convert.check_detail_out(state.configs[d], state, now_wall=now_wall)
            for d in sorted(state.configs)
        ]
    )
    return reply(wire.ChecksOut(checks=checks))


async def get_check(request: web.Request) -> web.Response:
    digest = Digest(request.match_info["digest"])
    clock = request.app[CLOCK]
    now, now_wall = clock.monotonic(), clock.time()
    detail = await request.app[DISPATCHER].read(
        lambda state: convert.check_detail_out(
            state.config(digest), state, now_wall=now_wall, explain=state.explain(digest, now=now)
        )
    )
    return reply(detail)


async def get_history(request: web.Request) -> web.Response:
    digest = Digest(request.match_info["digest"])
    # Validated before the check is looked up: a bad query is 400 whatever the digest.
    since = query_number(request, "since", kind=float, low=0, high=_HISTORY_SINCE_MAX)
    limit = query_number(request, "limit", kind=int, low=1, high=LIMIT_MAX)
    now_wall = request.app[CLOCK].time()
    body = await request.app[DISPATCHER].read(
        lambda state: convert.history_out(
            state,
            digest,
            now_wall=now_wall,
            since=since,
            limit=int(limit) if limit is not None else LIMIT_DEFAULT,
        )
    )
    return reply(body)


async def post_rebalance(request: web.Request) -> web.Response:
    body = await read_body(request, wire.RebalanceIn, optional=True)
    outcome = await request.app[DISPATCHER].rebalance(force=body.force, dry_run=body.dry_run)
    return reply(convert.rebalance_out(outcome))


async def post_cordon(request: web.Request) -> web.Response:
    return await _node_action(request, "cordon")


async def post_uncordon(request: web.Request) -> web.Response:
    return await _node_action(request, "uncordon")


async def post_drain(request: web.Request) -> web.Response:
    return await _node_action(request, "drain")


async def _node_action(request: web.Request, action: str) -> web.Response:
    name = NodeName(path_name(request, "node"))
    dispatcher = request.app[DISPATCHER]
    if action == "cordon":
        node = await dispatcher.cordon(name)
    elif action == "uncordon":
        node = await dispatcher.uncordon(name)
    else:
        node, _ = await dispatcher.drain(name)
    # No await between the step and this conversion: the node is as the step left it.
    now = request.app[CLOCK].monotonic()
    return reply(convert.node_out(node, dispatcher.state, now=now))


async def post_isolate(request: web.Request) -> web.Response:
    digest = Digest(request.match_info["digest"])
    node, moves = await request.app[DISPATCHER].isolate(digest)
    return reply(
        wire.IsolateOut(digest=digest, node=node, moves=[convert.move_out(m) for m in moves])
    )


async def get_results(request: web.Request) -> web.Response:
    now_wall = request.app[CLOCK].time()
    page = await request.app[DISPATCHER].read(
        lambda state: convert.results_page(state, now_wall=now_wall)
    )
    return reply(page)


async def get_replicas(request: web.Request) -> web.Response:
    try:
        records = await request.app[REPLICAS].list()
    except StoreError as exc:
        raise StoreUnavailable(f"The replica directory cannot be read: {exc}.") from exc
    return reply(wire.ReplicasOut(replicas=[replica_out(r) for r in records]))


async def get_export(request: web.Request) -> web.Response:
    exported_at = request.app[CLOCK].time()
    dispatcher = request.app[DISPATCHER]
    exported = await dispatcher.read(export_state)
    body = await transfer.export_json(  # wire.ExportOut
        exported, exported_at=exported_at, slice_checks=dispatcher.settings.apply_slice_checks
    )
    return web.Response(body=body, content_type="application/json")


async def post_import(request: web.Request) -> web.Response:
    mode, dry_run = transfer.import_query(request.query)
    dispatcher = request.app[DISPATCHER]
    slice_checks = dispatcher.settings.apply_slice_checks
    document = await transfer.document_in(await read_json(request), slice_checks=slice_checks)
    outcome = await dispatcher.import_state(
        document, mode=mode, dry_run=dry_run, own_prefixes=wire.INTERNAL_SOURCE_PREFIXES
    )
    return reply(transfer.import_out(outcome, epoch=epoch(request)))


async def get_overview(request: web.Request) -> web.Response:
    """The dashboard's one call per refresh (``wire.OverviewOut``)."""
    check_filter = _check_filter(request.query)
    offset = int(query_number(request, "offset", kind=int, low=0, high=wire.MAX_INT64) or 0)
    limit = query_number(request, "limit", kind=int, low=1, high=PAGE_MAX)
    clock = request.app[CLOCK]
    now, now_wall = clock.monotonic(), clock.time()
    leadership = request.app[LEADERSHIP]
    info = leadership.leader()
    dispatcher = request.app[DISPATCHER]
    fields = await dispatcher.read_sliced(  # the pass over every check, in slices
        lambda state: convert.overview_steps(
            state,
            check_filter,
            offset=offset,
            limit=int(limit) if limit is not None else PAGE_DEFAULT,
            now=now,
            now_wall=now_wall,
        )
    )
    replicas: list[dict[str, Any]] | None = None
    replicas_error = None
    try:
        # The directory as last reported (no write per refresh of every open dashboard).
        records = await request.app[REPLICAS].directory.list()
        replicas = [replica_out(r).model_dump() for r in records]
    except StoreError as exc:
        replicas_error = f"The replica directory cannot be read: {exc}."
    settings = request.app[SETTINGS]
    body = {
        "generated_at": now_wall,
        "leader": info.identity if info else None,
        "is_leader": leadership.is_leader(),
        "epoch": epoch(request),
        "warmup": dispatcher.warming_up(),
        "auth": settings.auth.enabled,
        "refresh_s": settings.server.ui_refresh_s,
        "health": verdict_body(request.app[HEALTH].readiness()).model_dump(),
        "replicas": replicas,
        "replicas_error": replicas_error,
        **fields,
    }
    response = web.Response(body=orjson.dumps(body), content_type="application/json")
    # A large page compresses about tenfold; the dashboard asks every few seconds.
    response.enable_compression()
    return response


_STATUS_NAMES = ", ".join(status.value for status in CheckStatus)


def _check_filter(query: Mapping[str, str]) -> CheckFilter:
    def text(key: str, pattern: re.Pattern[str] | None = None) -> str | None:
        raw = query.get(key)
        if raw is None:
            return None
        # An empty value is checked as any other: the document's enum and name patterns
        # refuse it (schemathesis sends ?source=); only an empty q, which it admits, is
        # no filter (below).
        if len(raw) > QUERY_MAX_CHARS or (pattern is not None and not pattern.fullmatch(raw)):
            raise InvalidRequest(
                f"Query parameter {key}={raw[:40]!r} is not a valid {key}.",
                details={"fields": [{"path": f"query.{key}", "message": "invalid value"}]},
            )
        return raw

    status_raw = text("status")
    status = None
    if status_raw is not None:
        try:
            status = CheckStatus(status_raw)
        except ValueError:
            raise InvalidRequest(
                f"Query parameter status={status_raw[:40]!r} must be one of {_STATUS_NAMES}.",
                details={"fields": [{"path": "query.status", "message": "unknown status"}]},
            ) from None
    node = text("node", _PATH_PATTERNS["node"])
    source = text("source", _SOURCE_NAME)
    return CheckFilter(
        query=text("q") or None,
        status=status,
        node=NodeName(node) if node is not None else None,
        source=SourceName(source) if source is not None else None,
    )


# ------------------------------------------------------ local, no token


def _health_reply(verdict: Verdict) -> web.Response:
    return reply(verdict_body(verdict), status=200 if verdict.ok else 503)


async def get_healthz(request: web.Request) -> web.Response:
    return _health_reply(request.app[HEALTH].liveness())


async def get_readyz(request: web.Request) -> web.Response:
    return _health_reply(request.app[HEALTH].readiness())


async def get_components(request: web.Request) -> web.Response:
    return reply(verdict_body(request.app[HEALTH].readiness()))


async def get_component(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    verdict = request.app[HEALTH].readiness()
    component = verdict.components.get(name)
    if component is None:
        raise NotFound(f"No health component named {name[:80]!r}.")
    return reply(component_body(component))


async def get_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def get_openapi(request: web.Request) -> web.Response:
    # Built once by create_app from this table (the document never changes while the
    # app runs).
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


# -------------------------------------------------------------- the dashboard

UI_PREFIX = "/ui/"


async def get_ui_file(request: web.Request) -> web.Response:
    """One of the dashboard's files. The page needs no token: the API calls it makes
    carry the one the user enters."""
    file = asset(_UI_FILES[request.path])
    response = web.Response(body=file.body, content_type=file.media_type)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def get_ui_redirect(request: web.Request) -> web.Response:
    return web.Response(
        status=302, text=f"The dashboard is at {UI_PREFIX}\n", headers={"Location": UI_PREFIX}
    )


_UI_FILES = {
    **{UI_PREFIX + (name if name != INDEX else ""): name for name in MEDIA_TYPES},
    # What a browser asks for on a page without an icon of its own (the API's JSON).
    "/favicon.ico": "icon.svg",
}
"""Each path of the dashboard's files, and the file it serves."""


def _route_name(path: str, name: str) -> str:
    file = path.rsplit("/", 1)[-1] or name
    return "ui_" + re.sub(r"\W", "_", file)


def _ui_routes() -> tuple[Route, ...]:
    files = [
        Route(_route_name(path, name), "GET", path, get_ui_file, None,
              f"The dashboard's {name}.", media_type=MEDIA_TYPES[name], leader_only=False)
        for path, name in _UI_FILES.items()
    ]  # fmt: skip
    redirects = [
        Route(name, "GET", path, get_ui_redirect, None, "Redirects to the dashboard (/ui/).",
              media_type="text/plain", reply_statuses=(302,), leader_only=False)
        for name, path in (("ui_root", "/"), ("ui_bare", "/ui"))
    ]  # fmt: skip
    return (*files, *redirects)


# -------------------------------------------------------------------- table

API = wire.API_PREFIX
_SINCE = QueryParam(
    "since",
    {"type": "integer", "minimum": -1, "maximum": wire.MAX_INT64},
    "Long poll: answer once the node's change counter differs from this.",
)
_WAIT = QueryParam(
    "wait_s",
    {"type": "number", "minimum": 0, "maximum": wire.MAX_WAIT_S},
    "Long poll: the longest wait in seconds (default 0).",
)
_HISTORY_SINCE_MAX = 10**12
"""Unix seconds far beyond any result, small enough to be exact as a float (MAX_INT64
is not: its float is above it, and refused)."""
_HISTORY_SINCE = QueryParam(
    "since",
    {"type": "number", "minimum": 0, "maximum": _HISTORY_SINCE_MAX},
    "Only the results that ran at or after this time (Unix seconds).",
)
_HISTORY_LIMIT = QueryParam(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX, "default": LIMIT_DEFAULT},
    "At most this many results, the newest.",
)
_OVERVIEW_QUERY = (
    QueryParam("q", {"type": "string", "maxLength": QUERY_MAX_CHARS},
               "Only checks whose name, target, node or a source contains this (any case),"
               " or whose digest starts with it."),
    QueryParam("status", {"type": "string", "enum": [s.value for s in CheckStatus]},
               "Only checks with this status."),
    QueryParam("node", {"type": "string", "pattern": wire.NAME_PATTERN},
               "Only checks on this node."),
    QueryParam("source", {"type": "string", "pattern": wire.SOURCE_NAME_PATTERN},
               "Only checks this source holds."),
    QueryParam("offset", {"type": "integer", "minimum": 0, "maximum": wire.MAX_INT64,
                          "default": 0}, "The page starts after this many checks."),
    QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": PAGE_MAX,
                         "default": PAGE_DEFAULT}, "Checks per page."),
)  # fmt: skip
_SOURCE = QueryParam(
    "source",
    {"type": "string", "pattern": wire.SOURCE_NAME_PATTERN},
    "Remove from this source only; without it, from every source (admin only).",
)

ROUTES: tuple[Route, ...] = (
    Route("node_status", "POST", API + "/status/{node}", post_status, Role.NODE,
          "Heartbeat: register or refresh a node agent.", wire.StatusIn, wire.StatusOut,
          routine=True),
    Route("node_configs", "GET", API + "/configs/{node}", get_configs, Role.NODE,
          "The node's check configs, optionally as a long poll.", None, wire.NodeConfigsOut,
          query=(_SINCE, _WAIT), errors=(404,), routine=True),
    Route("node_results", "POST", API + "/results/{node}", post_results, Role.NODE,
          "Report check results.", wire.ResultsIn, wire.ResultsOut, routine=True),
    Route("source_put", "PUT", API + "/sources/{source}", put_source, Role.SOURCE,
          "Replace a source's whole set of configs.", wire.SourcePutIn, wire.SourcePutOut,
          errors=(409, 413)),
    Route("source_get", "GET", API + "/sources/{source}", get_source, Role.SOURCE,
          "A source's configs.", None, wire.SourceGetOut),
    Route("checks_add", "POST", API + "/checks", post_checks, Role.SOURCE,
          "Add configs to a source's set.", wire.ChecksPostIn, wire.ChecksPostOut,
          errors=(409, 413)),
    Route("check_delete", "DELETE", API + "/checks/{digest}", delete_check, Role.SOURCE,
          "Remove a check from a source (or every source).", None, wire.RemovedOut,
          query=(_SOURCE,), errors=(404, 409)),
    Route("state", "GET", API, get_state, Role.ADMIN,
          "The dispatcher's state: nodes, placements, dangling checks.", None, wire.StateOut),
    Route("checks_list", "GET", API + "/checks", list_checks, Role.ADMIN,
          "Every check with its node and last result.", None, wire.ChecksOut),
    Route("check_get", "GET", API + "/checks/{digest}", get_check, Role.ADMIN,
          "One check, with why it is where it is.", None, wire.CheckDetailOut, errors=(404,)),
    Route("check_history", "GET", API + "/checks/{digest}/history", get_history, Role.ADMIN,
          "A check's recent results, uptime and duration percentiles.", None, wire.HistoryOut,
          query=(_HISTORY_SINCE, _HISTORY_LIMIT), errors=(404,)),
    Route("rebalance", "POST", API + "/rebalance", post_rebalance, Role.ADMIN,
          "Rebalance checks over nodes.", wire.RebalanceIn, wire.RebalanceOut,
          body_optional=True),
    Route("node_cordon", "POST", API + "/nodes/{node}/cordon", post_cordon, Role.ADMIN,
          "No new checks go to the node.", None, wire.NodeOut, errors=(404,)),
    Route("node_uncordon", "POST", API + "/nodes/{node}/uncordon", post_uncordon, Role.ADMIN,
          "Undo cordon (and isolate).", None, wire.NodeOut, errors=(404,)),
    Route("node_drain", "POST", API + "/nodes/{node}/drain", post_drain, Role.ADMIN,
          "Cordon the node and move its checks away now.", None, wire.NodeOut, errors=(404,)),
    Route("isolate", "POST", API + "/isolate/{digest}", post_isolate, Role.ADMIN,
          "Keep one check alone on its node.", None, wire.IsolateOut, errors=(404, 409)),
    Route("results", "GET", API + "/results", get_results, Role.ADMIN,
          "The status page: every check's last result.", None, wire.ResultsPageOut),
    Route("replicas", "GET", API + "/replicas", get_replicas, Role.ADMIN,
          "Every dispatcher replica known through the shared store.", None, wire.ReplicasOut),
    Route("overview", "GET", API + "/overview", get_overview, Role.ADMIN,
          "The dashboard's view: leader, replicas, totals, nodes and a page of checks.",
          None, wire.OverviewOut, query=_OVERVIEW_QUERY),
    Route("state_export", "GET", API + "/export", get_export, Role.ADMIN,
          "The whole desired state: every source's configs, and cordons.", None, wire.ExportOut),
    Route("state_import", "POST", API + "/import", post_import, Role.ADMIN,
          "Make an export document the desired state (replace) or add it (merge).",
          wire.ImportIn, wire.ImportOut, query=(transfer.MODE, transfer.DRY_RUN), errors=(413,),
          large_body=True),
    Route("healthz", "GET", "/healthz", get_healthz, None,
          "Liveness.", None, wire.HealthOut, reply_statuses=(200, 503), leader_only=False),
    Route("readyz", "GET", "/readyz", get_readyz, None,
          "Readiness.", None, wire.HealthOut, reply_statuses=(200, 503), leader_only=False),
    Route("health_components", "GET", "/v1/api/health/components", get_components, None,
          "Every health component.", None, wire.HealthOut, leader_only=False),
    Route("health_component", "GET", "/v1/api/health/components/{name}", get_component, None,
          "One health component.", None, wire.ComponentOut, leader_only=False, errors=(404,)),
    Route("metrics", "GET", "/metrics", get_metrics, None,
          "Prometheus metrics.", media_type=CONTENT_TYPE_LATEST.partition(";")[0],
          leader_only=False),
    Route("openapi", "GET", "/v1/api/openapi.json", get_openapi, None,
          "This document.", leader_only=False),
    *_ui_routes(),
)  # fmt: skip

ROUTES_BY_NAME: dict[str, Route] = {route.name: route for route in ROUTES}
