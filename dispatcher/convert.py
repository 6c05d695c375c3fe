"""Translations between wire types and core values (nothing else lives here)."""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast

import orjson
from pydantic import TypeAdapter, ValidationError

from dispatcher import wire
from dispatcher.common.text import truncate_utf8
from dispatcher.common.validation import (
    MAX_PROBLEMS,
    FieldProblem,
    field_problems,
    invalid_request,
    summary,
)
from dispatcher.core.history import DAY_S
from dispatcher.core.model import (
    CheckConfig,
    CheckResult,
    CheckStats,
    Digest,
    SourceName,
    make_config,
)
from dispatcher.core.outcomes import Move, RebalanceOutcome, RejectedResult
from dispatcher.core.overview import (
    RECENT_RUNS,
    SLICE_CHECKS,
    CheckFilter,
    CheckStatus,
    check_page_steps,
    status_of,
    target_of,
)
from dispatcher.core.placement import Node
from dispatcher.core.rebuild import RunningConfig, UnreadableReport
from dispatcher.core.state import ClusterState
from dispatcher.core.steps import run_steps

ConfigsBody = TypeVar("ConfigsBody", wire.SourcePutIn, wire.ChecksPostIn)

_CONFIGS: TypeAdapter[list[wire.CheckConfigIn]] = TypeAdapter(list[wire.CheckConfigIn])


def config_in(config: wire.CheckConfigIn) -> CheckConfig:
    return make_config(
        name=config.name,
        instances=config.instances,
        init_config=config.init_config,
        interval_s=config.interval_s,
        timeout_s=config.timeout_s,
        node_selector=config.node_selector,
        weight=config.weight,
    )


class ConfigsIn:
    """Validates and converts a body's configs (PUT or POST) a slice at a time, as the
    JSON decoder hands them over (``take``, a ``slicedjson.Consumer`` for ``configs``):
    only one slice of decoded configs is alive at a time, and the event loop runs
    between slices (100,000 configs take about 3 s to validate and convert). Then
    ``body`` validates the rest of the body. Problems carry the paths one validation of
    the whole body would give (``configs.1234.name``)."""

    def __init__(self) -> None:
        self.configs: list[CheckConfig] = []
        """The configs converted, in order (complete once ``body`` returns)."""
        self._problems: list[FieldProblem] = []
        self._more = False

    def take(self, items: list[Any], start: int) -> None:
        if start == 0:  # the array starts (again, for a repeated key: the last counts)
            self.configs, self._problems, self._more = [], [], False
        if len(self._problems) >= MAX_PROBLEMS:
            self._more = items != []  # enough to refuse the body: stop looking
            return
        try:
            valid = _CONFIGS.validate_python(items)
        except ValidationError as exc:
            self._problems += [_shifted(p, start) for p in field_problems(exc)]
            return
        if not self._problems:  # else nothing will be applied: only look for problems
            self.configs += [config_in(c) for c in valid]

    def body(self, data: Any, model: type[ConfigsBody]) -> ConfigsBody:
        """The body without its configs (``configs`` empty: they were taken); raises
        InvalidRequest naming every bad field, the configs' ones too."""
        problems: list[FieldProblem] = []
        try:
            body = model.model_validate(data)
        except ValidationError as exc:
            problems = field_problems(exc)
        problems += self._problems
        if problems:
            raise invalid_request(problems, more=self._more)
        return body


def _shifted(problem: FieldProblem, start: int) -> FieldProblem:
    """A problem in a slice that starts at ``start``, with its path in the whole body."""
    index, dot, rest = problem.path.partition(".")
    return FieldProblem(f"configs.{start + int(index)}{dot}{rest}", problem.message)


def running_configs_in(
    entries: list[dict[str, Any]] | None,
) -> tuple[list[RunningConfig] | None, list[UnreadableReport]]:
    """What an agent reports running, rebuilt from the content (the digest recomputed),
    and the entries that could not be read, each on its own: a bad entry (a field this
    dispatcher refuses) is dropped, not the whole status, which would keep every other
    check of that agent from being rebuilt.

    Sources the dispatcher feeds itself (``file:``, ``k8s:``) are left out first, by the
    model (``wire.RunningConfigIn``): they send their whole sets again at the start of
    every term, and a holder taken from an agent would keep a check whose file is gone."""
    if entries is None:
        return None, []
    reports: list[RunningConfig] = []
    unreadable: list[UnreadableReport] = []
    for index, entry in enumerate(entries):
        try:
            c = wire.RunningConfigIn.model_validate(entry)
        except ValidationError as exc:
            unreadable.append(_unreadable(index, entry, field_problems(exc)))
            continue
        reports.append(
            RunningConfig(
                config=config_in(c),
                sources=frozenset(SourceName(s) for s in c.sources),
                reported_digest=Digest(c.digest),
            )
        )
    return reports, unreadable


def _unreadable(
    index: int, entry: dict[str, Any], problems: list[FieldProblem]
) -> UnreadableReport:
    digest, name = entry.get("digest"), entry.get("name")
    return UnreadableReport(
        index=index,
        digest=digest[:64] if isinstance(digest, str) else None,
        check=name[:64] if isinstance(name, str) else None,
        problems=summary(problems),
    )


class StatsShape(Protocol):
    """A heartbeat's stat as validated (``wire.CheckStatsIn``, or its fast path's)."""

    @property
    def avg_execution_s(self) -> float: ...
    @property
    def runs(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def last_run_at(self) -> float | None: ...


class ResultShape(Protocol):
    """A posted result as validated (``wire.CheckResultIn``, or its fast path's)."""

    @property
    def digest(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def errors(self) -> list[str]: ...
    @property
    def started_at(self) -> float: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def output(self) -> str: ...


def stats_in(stats: Mapping[str, StatsShape] | None) -> dict[Digest, CheckStats] | None:
    if stats is None:
        return None
    # Positional, and the digests (validated strings) as they are: a heartbeat carries a
    # stat per check its agent runs, 1,000 heartbeats a second at 10,000 agents.
    return {
        digest: CheckStats(s.avg_execution_s, s.runs, s.errors, s.last_error, s.last_run_at)
        for digest, s in cast("Mapping[Digest, StatsShape]", stats).items()
    }


def results_in(results: Sequence[ResultShape]) -> list[CheckResult]:
    """The results of a post, in order (positional, as ``stats_in``: 10,000 a second)."""
    return [
        CheckResult(
            cast(Digest, r.digest),
            r.run_id,
            r.ok,
            tuple(r.errors),
            r.started_at,
            r.duration_s,
            truncate_utf8(r.output) if r.output else "",
        )
        for r in results
    ]


def status_out(
    *,
    is_up_to_date: bool,
    epoch: int,
    leader: str,
    heartbeat_interval_s: float,
    node_expiration_timeout_s: float,
    results_interval_s: float,
    warmup: bool,
    send_running_configs: bool,
) -> dict[str, Any]:
    """A ``wire.StatusOut`` as a dict, its fields and types (tests hold the two equal)."""
    return {
        "is_up_to_date": is_up_to_date,
        "epoch": epoch,
        "leader": leader,
        "heartbeat_interval_s": float(heartbeat_interval_s),
        "node_expiration_timeout_s": float(node_expiration_timeout_s),
        "results_interval_s": float(results_interval_s),
        "warmup": warmup,
        "send_running_configs": send_running_configs,
    }


def results_out(*, epoch: int, accepted: int, rejected: Sequence[RejectedResult]) -> dict[str, Any]:
    """A ``wire.ResultsOut`` as a dict (as ``status_out``)."""
    return {
        "epoch": epoch,
        "accepted": accepted,
        "rejected": [{"digest": r.digest, "reason": r.reason} for r in rejected],
    }


def config_out(config: CheckConfig, state: ClusterState) -> wire.CheckConfigOut:
    return wire.CheckConfigOut.model_construct(**_config_fields(config, state))


class ConfigFragments:
    """Each config's output form as JSON up to its ``sources`` (its content and digest,
    which never change for one config object), made once and kept while the config is:
    a config fetch sends every check of its node, and after a change thousands of
    agents fetch at once. The app owns one."""

    def __init__(self) -> None:
        self._made: dict[Digest, tuple[CheckConfig, bytes]] = {}

    def head(self, config: CheckConfig, state: ClusterState) -> bytes:
        """``{"name":...,"digest":"..."``: the object without its closing brace."""
        made = self._made.get(config.digest)
        if made is not None and made[0] is config:
            return made[1]
        if len(self._made) > 2 * len(state.configs) + 1_024:
            self.prune(state)
        head = orjson.dumps({**config.content(), "digest": config.digest})[:-1]
        self._made[config.digest] = (config, head)
        return head

    def prune(self, state: ClusterState) -> None:
        """Forgets the configs the state no longer holds (removed, or replaced by a new
        object: another weight)."""
        held = state.configs
        self._made = {d: m for d, m in self._made.items() if held.get(d) is m[0]}

    def __len__(self) -> int:
        return len(self._made)


def node_configs_json(
    *,
    last_change: int,
    epoch: int,
    configs: Sequence[CheckConfig],
    state: ClusterState,
    warmup: bool,
    fragments: ConfigFragments,
) -> bytes:
    """A ``wire.NodeConfigsOut`` reply, serialised straight from the configs: the same
    bytes as ``orjson.dumps`` of the model's dump (a test holds them equal), each
    config's content serialised once (``ConfigFragments``). An agent's config fetch is
    the longest the event loop is held by a request that every agent makes after every
    change."""
    placement = state.placement
    parts = [
        b'%s,"sources":%s,"node":%s}'
        % (
            fragments.head(c, state),
            orjson.dumps(state.sources_of(c.digest)),
            orjson.dumps(placement.get(c.digest)),
        )
        for c in configs
    ]
    return b'{"last_change":%d,"epoch":%d,"configs":[%s],"warmup":%s}' % (
        last_change,
        epoch,
        b",".join(parts),
        b"true" if warmup else b"false",
    )


def check_detail_out(
    config: CheckConfig,
    state: ClusterState,
    *,
    now_wall: float,
    explain: str | None = None,
) -> wire.CheckDetailOut:
    summary = state.results.get(config.digest)
    last = None
    if summary is not None:
        r = summary.last
        last = wire.LastResultOut(
            run_id=r.run_id,
            node=summary.node,
            ok=r.ok,
            errors=list(r.errors),
            started_at=r.started_at,
            duration_s=r.duration_s,
            output=r.output,
        )
    return wire.CheckDetailOut.model_construct(
        **_config_fields(config, state),
        last_result=last,
        explain=explain,
        uptime_24h=state.history.uptime(config.digest, DAY_S, now_wall=now_wall),
    )


def _config_fields(config: CheckConfig, state: ClusterState) -> dict[str, Any]:
    return {
        **config.content(),
        "digest": config.digest,
        "sources": state.sources_of(config.digest),
        "node": state.placement.get(config.digest),
    }


def node_out(node: Node, state: ClusterState, *, now: float) -> wire.NodeOut:
    return wire.NodeOut(
        name=node.name,
        labels=dict(node.labels),
        heartbeat_age_s=round(max(0.0, now - node.heartbeat_at), 3),
        last_change=node.last_change,
        cordoned=node.cordoned,
        busyness=round(node.relative_load(state.mean_measured_cost()), 6),
        capacity=node.capacity,
        configs=sorted(node.digests),
    )


def move_out(move: Move) -> wire.MoveOut:
    loads = [round(x, 6) for x in move.loads] if move.loads is not None else [None] * 4
    return wire.MoveOut(
        digest=move.digest,
        check_name=move.check_name,
        weight=round(move.cost, 6),
        source_node=move.source_node,
        dest_node=move.dest_node,
        source_load_before=loads[0],
        source_load_after=loads[1],
        dest_load_before=loads[2],
        dest_load_after=loads[3],
    )


def rebalance_out(outcome: RebalanceOutcome) -> wire.RebalanceOut:
    plan = outcome.plan
    return wire.RebalanceOut(
        applied=outcome.applied,
        moves=[move_out(m) for m in outcome.moves],
        outcome=cast(wire.RebalanceOutcomeName, outcome.reason),
        mean_load=round(plan.mean, 6),
        spread_before=round(plan.spread_before, 6),
        spread_after=round(plan.spread_after, 6),
    )


def history_out(
    state: ClusterState, digest: Digest, *, now_wall: float, since: float | None, limit: int
) -> wire.HistoryOut:
    """``GET .../checks/{digest}/history``; UnknownCheck (404) for a check not held."""
    state.config(digest)
    history = state.history
    entries = history.results(digest, now_wall=now_wall, since=since, limit=limit)
    durations = history.duration_percentiles(digest, now_wall=now_wall)
    return wire.HistoryOut(
        digest=digest,
        results=[
            wire.HistoryResultOut(
                run_id=e.run_id,
                node=e.node,
                ok=e.ok,
                errors=list(e.errors),
                started_at=e.started_at,
                duration_s=e.duration_s,
            )
            for e in entries
        ],
        uptime=history.uptimes(digest, now_wall=now_wall),
        duration_s=wire.DurationPercentilesOut(
            p50=durations.p50, p95=durations.p95, p99=durations.p99
        ),
    )


def results_page(state: ClusterState, *, now_wall: float) -> wire.ResultsPageOut:
    checks: dict[str, wire.CheckStatusOut] = {}
    errors: list[str] = []
    for digest in sorted(state.results):
        summary = state.results[digest]
        config = state.configs[digest]
        r = summary.last
        checks[digest] = wire.CheckStatusOut(
            name=config.name,
            node=summary.node,
            ok=r.ok,
            errors=list(r.errors),
            last_run_at=r.started_at,
            duration_s=r.duration_s,
            consecutive_failures=summary.consecutive_failures,
            success_count=summary.success_count,
            failure_count=summary.failure_count,
            last_ok_at=summary.last_ok_at,
            uptime_24h=state.history.uptime(digest, DAY_S, now_wall=now_wall),
        )
        if not r.ok:
            errors.extend(f"{config.name} {digest[:8]}: {e}" for e in r.errors)
    return wire.ResultsPageOut(ok=not errors, errors=errors, checks=checks)


def overview_fields(
    state: ClusterState,
    check_filter: CheckFilter,
    *,
    offset: int,
    limit: int,
    now: float,
    now_wall: float,
) -> dict[str, Any]:
    """``overview_steps`` in one go."""
    return run_steps(
        overview_steps(state, check_filter, offset=offset, limit=limit, now=now, now_wall=now_wall)
    )


def overview_steps(
    state: ClusterState,
    check_filter: CheckFilter,
    *,
    offset: int,
    limit: int,
    now: float,
    now_wall: float,
    slice_checks: int = SLICE_CHECKS,
) -> Generator[None, None, dict[str, Any]]:
    """The state's part of a ``wire.OverviewOut``, as plain JSON values: ``totals``,
    ``nodes``, ``sources`` and ``page`` (the dashboard asks every few seconds; no model
    per row, as for an agent's configs). Yields between slices of the pass over the
    checks (``check_page_steps``); the rest is built after the last, from the state as
    it is then."""
    page = yield from check_page_steps(
        state, check_filter, offset=offset, limit=limit, slice_checks=slice_checks
    )
    mean_cost = state.mean_measured_cost()
    nodes = [
        {
            "name": node.name,
            "labels": dict(node.labels),
            "heartbeat_age_s": round(max(0.0, now - node.heartbeat_at), 3),
            "cordoned": node.cordoned,
            "drained": node.cordoned and not node.digests,
            "busyness": round(node.relative_load(mean_cost), 6),
            "capacity": node.capacity,
            "checks": len(node.digests),
            "failing": page.failing_by_node.get(node.name, 0),
        }
        for node in sorted(state.nodes.values(), key=lambda n: n.name)
    ]
    statuses = page.statuses
    return {
        "totals": {
            "nodes": len(state.nodes),
            "cordoned_nodes": sum(1 for node in state.nodes.values() if node.cordoned),
            "checks": len(state.configs),
            "dispatched": len(state.placement),
            # By status, as the filter counts them: a failed check that lost its node is
            # failing, not dangling (state.dangling counts every check without a node).
            "dangling": statuses[CheckStatus.DANGLING],
            "failing": statuses[CheckStatus.FAILING],
            "pending": statuses[CheckStatus.PENDING],
            "ok": statuses[CheckStatus.OK],
        },
        "nodes": nodes,
        "sources": [
            {"name": name, "checks": state.held_count(name)}
            for name in sorted(state.source_names())
        ],
        "page": {
            "matching": page.matching,
            "offset": offset,
            "limit": limit,
            "checks": [
                _overview_check(state, d, now_wall=now_wall)
                for d in page.digests
                if d in state.configs  # not removed during the pass
            ],
        },
    }


def _overview_check(state: ClusterState, digest: Digest, *, now_wall: float) -> dict[str, Any]:
    config = state.configs[digest]
    summary = state.results.get(digest)
    last = summary.last if summary is not None else None
    recent = state.history.results(digest, now_wall=now_wall, limit=RECENT_RUNS)
    return {
        "digest": digest,
        "name": config.name,
        "target": target_of(config),
        "status": status_of(state, digest).value,
        "node": state.placement.get(digest),
        "sources": state.sources_of(digest),
        "interval_s": config.interval_s,
        "last_run_at": last.started_at if last is not None else None,
        "duration_s": last.duration_s if last is not None else None,
        "consecutive_failures": summary.consecutive_failures if summary is not None else 0,
        "last_error": last.errors[0] if last is not None and last.errors else None,
        "uptime_24h": state.history.uptime(digest, DAY_S, now_wall=now_wall),
        "recent": [
            {"started_at": e.started_at, "duration_s": e.duration_s, "ok": e.ok}
            for e in reversed(recent)
        ],
    }
