"""The dashboard's view of the state: each check's status, a filter over the checks, and
the page of them the dashboard shows (``GET .../overview``).

Pure like the rest of the core: the caller passes the state and the times in. The
dashboard asks for this every few seconds, so one pass over the checks computes every
count, the filter and the order; only the page it shows is turned into rows with their
recent history (at 10,000 checks the page, not the cluster, sets the payload's size).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName
from dispatcher.core.state import ClusterState

TARGET_MAX_CHARS = 120
QUERY_MAX_CHARS = 200
RECENT_RUNS = 30
"""Runs per check in a page row: the dashboard draws them as a sparkline."""
PAGE_DEFAULT = 100
PAGE_MAX = 1000


class CheckStatus(enum.Enum):
    """What the dashboard says of a check, in the order it lists them: what needs a
    person first."""

    FAILING = "failing"
    DANGLING = "dangling"
    PENDING = "pending"
    """Placed, no result yet."""
    OK = "ok"


_RANK = {status: rank for rank, status in enumerate(CheckStatus)}


def status_of(state: ClusterState, digest: Digest) -> CheckStatus:
    """Failing when its last result failed (even while it dangles: it still failed),
    else dangling when it has no node, else pending until its first result."""
    summary = state.results.get(digest)
    if summary is not None and not summary.last.ok:
        return CheckStatus.FAILING
    if digest not in state.placement:
        return CheckStatus.DANGLING
    return CheckStatus.OK if summary is not None else CheckStatus.PENDING


def target_of(config: CheckConfig) -> str:
    """What the check looks at, from its first instance, in one short line: a URL, a
    host and port, a DNS name, a command; else the instance as compact JSON."""
    first: Mapping[str, Any] = config.instances[0] if config.instances else {}
    text: str
    if isinstance(first.get("url"), str):
        text = first["url"]
    elif isinstance(first.get("host"), str) and "port" in first:
        text = f"{first['host']}:{first['port']}"
    elif isinstance(first.get("name"), str):
        text = first["name"]
    elif isinstance(first.get("command"), list):
        text = " ".join(str(part) for part in first["command"])
    else:
        text = orjson.dumps(first, option=orjson.OPT_SORT_KEYS).decode()
    if len(config.instances) > 1:
        text = f"{text} (+{len(config.instances) - 1})"
    return text if len(text) <= TARGET_MAX_CHARS else text[: TARGET_MAX_CHARS - 1] + "…"


@dataclass(frozen=True, slots=True)
class CheckFilter:
    """Which checks a page lists; every field set must match (None: any)."""

    query: str | None = None
    """A case-insensitive substring of the name, target, digest, node or a source."""
    status: CheckStatus | None = None
    node: NodeName | None = None
    source: SourceName | None = None


@dataclass(frozen=True, slots=True)
class CheckPage:
    statuses: Mapping[CheckStatus, int]
    """Every check's status, counted (the totals, whatever the filter)."""
    failing_by_node: Mapping[NodeName, int]
    matching: int
    """Checks that pass the filter (the page is a slice of them)."""
    digests: list[Digest]
    """The page: the filter's checks, failing first, then by name and target."""


def check_page(
    state: ClusterState, check_filter: CheckFilter, *, offset: int, limit: int
) -> CheckPage:
    statuses: Counter[CheckStatus] = Counter()
    failing_by_node: Counter[NodeName] = Counter()
    needle = check_filter.query.casefold() if check_filter.query else None
    held = state.held_by_source
    source_set = held.get(check_filter.source) if check_filter.source is not None else None
    keyed: list[tuple[int, str, str, Digest]] = []
    for digest, config in state.configs.items():
        status = status_of(state, digest)
        statuses[status] += 1
        node = state.placement.get(digest)
        if status is CheckStatus.FAILING and node is not None:
            failing_by_node[node] += 1
        if check_filter.status is not None and status is not check_filter.status:
            continue
        if check_filter.node is not None and node != check_filter.node:
            continue
        if check_filter.source is not None and (source_set is None or digest not in source_set):
            continue
        target = target_of(config)
        if needle is not None and not (
            digest.startswith(needle)
            or _contains(needle, config.name, target, node or "", *state.sources_of(digest))
        ):
            continue
        keyed.append((_RANK[status], config.name, target, digest))
    keyed.sort()
    return CheckPage(
        statuses={status: statuses[status] for status in CheckStatus},
        failing_by_node=dict(failing_by_node),
        matching=len(keyed),
        digests=[key[3] for key in keyed[offset : offset + limit]],
    )


def _contains(needle: str, *fields: str) -> bool:
    return any(needle in field.casefold() for field in fields)
