"""The shape of the route table: what one route of API.md declares.

A leaf of ``dispatcher.api`` (it imports only ``keys`` for the roles): the routes module
fills the table, the app builds its router and middleware from it, and the OpenAPI
module describes it; none of them needs another to know what a route is.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from dispatcher import wire
from dispatcher.api.keys import Role

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

JSON = "application/json"


CONNECTION_STATUSES = frozenset({408, 431, 503})
"""What the connection layer (``dispatcher.common.httpserver``) may answer on any route,
before the route runs: a request head or body too slow (408), a request line or headers
too large (431), every connection busy at the cap (503)."""


@dataclass(frozen=True, slots=True)
class QueryParam:
    name: str
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True, slots=True)
class PathParam:
    """A ``{name}`` segment of a path: what it may hold, and the status of a value that
    does not match (400, or 404 where API.md answers "unknown" to any value)."""

    name: str
    pattern: str
    description: str
    invalid_status: int
    examples: tuple[str, ...]
    """Values of each kind the route treats apart (schemathesis sends every one)."""


PATH_PARAMS: dict[str, PathParam] = {
    p.name: p
    for p in (
        PathParam("node", wire.NAME_PATTERN, "A node agent's name.", 400, ("node-a",)),
        # The dispatcher's own sources are readable, and a write to one is 409.
        PathParam("source", wire.SOURCE_NAME_PATTERN, "A config source's name.", 400,
                  ("ci", "file:web.yaml", "k8s:service:default:shop")),
        # API.md: a digest the dispatcher does not hold, well-formed or not, is 404.
        PathParam("digest", wire.DIGEST_PATTERN, "A check's digest.", 404,
                  ("9f2c4e7a1b3d5f60",)),
        PathParam("name", wire.COMPONENT_NAME_PATTERN, "A health component's name.", 404,
                  ("store", "dispatch_loop")),
    )
}  # fmt: skip
"""Every path parameter of the table, by the name it has in paths; a route whose path
names one that is not here cannot be built."""

_PATH_PARAM = re.compile(r"{(\w+)}")


@dataclass(frozen=True, slots=True)
class Route:
    """One route: the router, the auth and leadership middleware and the OpenAPI
    document all read it, so they cannot disagree."""

    name: str
    method: str
    path: str
    handler: Handler
    role: Role | None
    """The role whose token the route needs (admin always may); None: no token."""
    summary: str
    body: type[BaseModel] | None = None
    reply: type[BaseModel] | None = None
    """The model of the reply body; None for a body that no model describes."""
    media_type: str = JSON
    """The reply's content type: JSON for the API, text for /metrics, the dashboard's
    files whatever they are."""
    reply_statuses: tuple[int, ...] = (200,)
    """The statuses answered with ``reply`` (health probes answer 503 with the same body)."""
    query: tuple[QueryParam, ...] = ()
    leader_only: bool = True
    body_optional: bool = False
    errors: tuple[int, ...] = ()
    """Statuses of the route's own errors (404 unknown_node, 409 conflict...), beside
    those the table implies (see ``error_statuses``)."""
    large_body: bool = False
    """The body may be as large as ``--max-import-bytes`` (a whole export), not the
    app's limit for every other route."""
    routine: bool = False
    """The agents' routine traffic (heartbeats, config fetches, results): its request
    line is logged at debug when it succeeds, at info when it fails. At 10,000 agents
    that is thousands of lines a second, about a third of what a heartbeat costs the
    leader; the request metrics count every request either way."""

    def __post_init__(self) -> None:
        unknown = [p for p in self.path_params if p not in PATH_PARAMS]
        if unknown:
            raise ValueError(f"route {self.name}: no PathParam for {unknown}")

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(_PATH_PARAM.findall(self.path))

    def error_statuses(self) -> frozenset[int]:
        """Every error status the route can answer with the error body of API.md."""
        codes = set(self.errors) | CONNECTION_STATUSES
        codes |= {PATH_PARAMS[p].invalid_status for p in self.path_params}
        if self.query:
            codes.add(400)  # a query value out of range
        if self.body is not None:
            codes |= {400, 413, 415}
        if self.role is not None:
            codes |= {401, 403}
        if self.leader_only:
            # 503: no leader known, a leader that does not answer a forward, or a store
            # that does not confirm a change; 508: a forwarding loop.
            codes |= {503, 508}
        return frozenset(codes - set(self.reply_statuses))
