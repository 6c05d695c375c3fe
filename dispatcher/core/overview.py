"""The dashboard's view of the state: each check's status, a filter over the checks, and
the page of them the dashboard shows (``GET .../overview``).

Pure like the rest of the core: the caller passes the state and the times in. The
dashboard asks for this every few seconds, so one pass over the checks computes every
count, the filter and the order; only the page it shows is turned into rows with their
recent history (at 10,000 checks the page, not the cluster, sets the payload's size).
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from dispatcher.core.model import CheckConfig, Digest, NodeName, ResultSummary, SourceName
from dispatcher.core.state import ClusterState
from dispatcher.core.steps import run_steps

TARGET_MAX_CHARS = 120
QUERY_MAX_CHARS = 200
RECENT_RUNS = 30
"""Runs per check in a page row: the dashboard draws them as a sparkline."""
PAGE_DEFAULT = 100
PAGE_MAX = 1000
SLICE_CHECKS = 5_000
"""Checks looked at between two yields of ``check_page_steps``: about 10 ms of the
event loop on this project's benchmark machine. At 100,000 checks one pass costs about
0.2 s; an open dashboard asks every few seconds, and heartbeats must not wait for it."""


class CheckStatus(enum.Enum):
    """What the dashboard says of a check, in the order it lists them: what needs a
    person first."""

    FAILING = "failing"
    DANGLING = "dangling"
    PENDING = "pending"
    """Placed, no result yet."""
    OK = "ok"


_STATUSES = tuple(CheckStatus)
"""By rank: a check's rank is its status's place in this order (the hot loop of
``check_page`` counts and sorts plain ints, not enum members)."""


def _rank(summary: ResultSummary | None, node: NodeName | None) -> int:
    if summary is not None and not summary.last_ok:
        return 0  # failing: even while it dangles, it still failed
    if node is None:
        return 1  # dangling
    return 3 if summary is not None else 2  # ok, or pending until its first result


def status_of(state: ClusterState, digest: Digest) -> CheckStatus:
    """Failing when its last result failed (even while it dangles: it still failed),
    else dangling when it has no node, else pending until its first result."""
    return _STATUSES[_rank(state.results.get(digest), state.placement.get(digest))]


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
    """``check_page_steps`` in one go (a consistent snapshot of the state)."""
    return run_steps(check_page_steps(state, check_filter, offset=offset, limit=limit))


def check_page_steps(
    state: ClusterState,
    check_filter: CheckFilter,
    *,
    offset: int,
    limit: int,
    slice_checks: int = SLICE_CHECKS,
) -> Generator[None, None, CheckPage]:
    """One pass over every check (the dashboard asks every few seconds): at 100,000
    checks this is the whole cost of ``GET /overview``, so the loop works on plain
    values and each check's target is worked out once (``_TARGETS``).

    It yields after every ``slice_checks`` checks, so that the caller can let other
    work run between slices: the state may change meanwhile. The pass goes over the
    digests as they were at its start; a check removed since is skipped, one added
    since is not seen, and each check is read as it is when its slice runs, so the
    counts are those of one moment only when nothing changed during the pass."""
    results, placement, configs = state.results, state.placement, state.configs
    counts = [0] * len(_STATUSES)
    failing_by_node: Counter[NodeName] = Counter()
    wanted = _STATUSES.index(check_filter.status) if check_filter.status is not None else None
    needle = check_filter.query.casefold() if check_filter.query else None
    held = state.held_by_source
    source_set = held.get(check_filter.source) if check_filter.source is not None else None
    nodes_hit, sources_hit = _query_hits(state, needle)
    if len(_TARGETS) > 2 * len(state.configs) + _TARGETS_SLACK:
        _TARGETS.clear()  # checks come and go: keep the memo about the size of the cluster
    keyed: list[tuple[int, str, str, Digest]] = []
    order = list(configs)
    for start in range(0, len(order), slice_checks):
        if start:
            yield
        for digest in order[start : start + slice_checks]:
            config = configs.get(digest)
            if config is None:
                continue  # removed since the pass began
            node = placement.get(digest)
            rank = _rank(results.get(digest), node)
            counts[rank] += 1
            if rank == 0 and node is not None:
                failing_by_node[node] += 1
            if wanted is not None and rank != wanted:
                continue
            if check_filter.node is not None and node != check_filter.node:
                continue
            if check_filter.source is not None and (source_set is None or digest not in source_set):
                continue
            known = _TARGETS.get(digest)
            if known is None:
                target = target_of(config)
                known = _TARGETS[digest] = (target, target.casefold())
            if needle is not None and not (
                digest.startswith(needle)
                or needle in config.name  # check names are lower case ([a-z0-9_])
                or needle in known[1]
                or node in nodes_hit
                or digest in sources_hit
            ):
                continue
            keyed.append((rank, config.name, known[0], digest))
    end = offset + limit
    # The page only: the first pages (what the dashboard shows) without sorting them all.
    first = heapq.nsmallest(end, keyed) if end < len(keyed) // 4 else sorted(keyed)
    return CheckPage(
        statuses=dict(zip(_STATUSES, counts, strict=True)),
        failing_by_node=dict(failing_by_node),
        matching=len(keyed),
        digests=[key[3] for key in first[offset:end]],
    )


def _query_hits(state: ClusterState, needle: str | None) -> tuple[set[NodeName], set[Digest]]:
    """A query's matches among the few nodes and sources (the nodes it names, the checks
    of the sources it names), found once, not per check."""
    if needle is None:
        return set(), set()
    nodes_hit = {name for name in state.nodes if needle in name.casefold()}
    sources_hit: set[Digest] = set()
    for name, digests in state.held_by_source.items():
        if needle in name.casefold():
            sources_hit.update(digests)
    return nodes_hit, sources_hit


_TARGETS: dict[Digest, tuple[str, str]] = {}
"""Each check's target (and its case-folded form, for queries) by digest: a digest names
the config's content (its instances among it), so its target never changes; a memo, not
state."""
_TARGETS_SLACK = 10_000
