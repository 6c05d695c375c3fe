"""The cluster store and the node stores, with every compound operation on them.

Pure and synchronous: no I/O, no clock. Every method that depends on time takes ``now``
(seconds on a monotonic clock, non-decreasing across calls). The state locks nothing;
the dispatcher holds one external lock around every call, so a heartbeat, a schedule and
an expiry never interleave.

This is the one aggregate: placement, the nodes' check sets, costs, the load index, the
change counter and the changed-record tracker move together (``_attach``/``_detach``).
What does not need to move with them lives beside it: the records a store keeps
(``snapshot``), what operations report (``outcomes``), which sources hold which checks
(``holdings``), how a write to sources is planned (``sourceplan``), results
(``results``), the explanation sentence (``explain``), the planner (``rebalance``) and
what agents report of the checks they run when a leader rebuilds from them (``rebuild``).

Each operation records what it decided (``Decision``) and which nodes' configs changed;
the caller drains those with ``take_events()`` to log them and wake long polls.

Two limits hold when set (``set_limits``): a source holds at most so many checks (a
write beyond it raises TooManyChecks and changes nothing), and a node that holds so many
checks is not eligible for more. A write to sources is planned first, outside the state
(``sourceplan``: the limit check and the report, from ``held_by_source``), and its work
then applied here (``apply_work``), whole or in slices with other steps in between.

With ``track_changes`` the state also remembers which persisted records (configs,
sources, placements, node records) each step changed; ``take_delta()`` drains them for
a shared store to write through, and ``restore()`` builds a state back from a snapshot.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Generator, Iterable, Mapping, Sequence, Set
from dataclasses import replace
from typing import cast

from dispatcher.core.explain import explain_check
from dispatcher.core.history import CheckHistory, HistoryLimits
from dispatcher.core.holdings import Holdings
from dispatcher.core.model import (
    CheckConfig,
    CheckResult,
    CheckStats,
    Digest,
    NodeName,
    ResultSummary,
    SourceName,
)
from dispatcher.core.outcomes import (
    Decision,
    Events,
    Move,
    RebalanceOutcome,
    RejectedResult,
    SourceChange,
)
from dispatcher.core.placement import LoadIndex, MeasuredCosts, Node, StatsKept
from dispatcher.core.rebalance import (
    SLICE_WORK,
    Item,
    NodeLoad,
    Plan,
    plan_rebalance,
    planner_input_steps,
)
from dispatcher.core.rebuild import RunningConfig
from dispatcher.core.results import ResultBook
from dispatcher.core.snapshot import ChangeTracker, NodeRecord, Snapshot, StateDelta, fit_together
from dispatcher.core.sourceplan import Hold, SourceWork, plan_add, plan_replace
from dispatcher.core.steps import run_steps
from dispatcher.errors import NoOtherNode, NotDispatched, UnknownCheck, UnknownNode

NEVER = float("-inf")


class ClusterState:
    """All checks, their sources and placements, and every node's store."""

    def __init__(
        self,
        *,
        warmup_until: float = NEVER,
        track_changes: bool = False,
        max_checks_per_source: int | None = None,
        max_checks_per_node: int | None = None,
        history_limits: HistoryLimits | None = None,
    ) -> None:
        self._source_limit = max_checks_per_source
        self._node_limit = max_checks_per_node
        self._configs: dict[Digest, CheckConfig] = {}
        self._holdings = Holdings()
        self._placement: dict[Digest, NodeName] = {}
        self._placed_because: dict[Digest, str] = {}
        self._dangling: dict[Digest, float] = {}  # digest -> dangling since
        self._nodes: dict[NodeName, Node] = {}
        self._by_heartbeat: OrderedDict[NodeName, None] = OrderedDict()
        self._index = LoadIndex()
        self._costs = MeasuredCosts()
        self._reported: dict[Digest, NodeName] = {}  # from agents' `running`
        self._sent_running_configs: set[NodeName] = set()  # rebuild from the agents
        # What sources said while warming up, so that an agent's later report does not
        # undo it (``adopt_running``); forgotten when the warm-up ends.
        self._replaced_in_warmup: set[SourceName] = set()
        self._released_in_warmup: set[tuple[SourceName, Digest]] = set()
        self._deleted_in_warmup: set[Digest] = set()
        self._results = ResultBook(CheckHistory(history_limits, track=track_changes))
        self._seq = 0
        self._now = NEVER
        self._warmup_until = warmup_until
        self._warm = warmup_until == NEVER
        self._placeable_changed = False
        self._events = Events()
        self._changes = ChangeTracker(enabled=track_changes)

    @classmethod
    def restore(cls, snapshot: Snapshot, *, now: float) -> ClusterState:
        """A tracking state rebuilt from a shared store, as a new leader takes over.

        Every node's expiry clock starts afresh at ``now``; placements are kept as they
        were, without decisions to log. Records that do not fit together (a placement on
        an unknown node, a config no source holds: ``fit_together``) are dropped and
        queued for deletion, and checks without a placement dangle until the next dispatch.
        """
        fitting, fixes = fit_together(snapshot)
        state = cls(track_changes=True)
        now = state._advance(now)
        nodes = state._nodes
        for name in sorted(fitting.nodes):
            nodes[name] = Node.restored(name, fitting.nodes[name], heartbeat_at=now)
        state._by_heartbeat.update(dict.fromkeys(nodes))
        state._holdings.hold_all(dict(sorted(fitting.sources.items())))
        configs = state._configs
        configs.update(fitting.configs)
        # What _attach does, without a decision to log or a store write to queue, in
        # bulk, and each node's load indexed once at the end rather than once per check:
        # a takeover of 100,000 checks spent most of its time re-sorting the load index,
        # then in per-check calls.
        placement = state._placement
        placement.update(sorted(fitting.placement.items()))
        state._placed_because.update(dict.fromkeys(placement, "restored"))
        by_node: dict[NodeName, list[Digest]] = {name: [] for name in nodes}
        for digest, name in placement.items():
            by_node[name].append(digest)
        for name, digests in by_node.items():
            if digests:
                node = nodes[name]
                node.digests.update(digests)
                weight = 0.0  # each check's, added in order, as one add_cost each would
                for digest in digests:
                    weight += configs[digest].weight
                node.add_cost(weight=weight, measured=None)
        for node in nodes.values():
            state._index.update(node)
            state._touch(node)
        state._dangling.update(dict.fromkeys(sorted(configs.keys() - placement.keys()), now))
        state._placeable_changed = True
        state._events = Events()
        for digest, entries in fitting.history.items():
            state._results.history.load(digest, entries)
        state._changes.mark(fixes)  # the store's records that did not fit
        return state

    def snapshot(self) -> Snapshot:
        """The persisted part of the state (what ``restore`` takes)."""
        return Snapshot(
            configs=dict(self._configs),
            sources={s: frozenset(d) for s, d in self._holdings.by_source.items()},
            placement=dict(self._placement),
            nodes={name: node.record() for name, node in self._nodes.items()},
            history=self._results.history.snapshot(),
        )

    def set_limits(
        self,
        *,
        max_checks_per_source: int | None,
        max_checks_per_node: int | None,
        history_limits: HistoryLimits | None = None,
    ) -> None:
        """The most checks a source may hold and a node may be given (None: no limit),
        and how much history each check keeps (None: unchanged).

        Checks already held or placed stay; a node above a lowered limit takes no more."""
        if history_limits is not None:
            self._results.history.set_limits(history_limits)
        self._source_limit = max_checks_per_source
        if max_checks_per_node != self._node_limit:
            self._node_limit = max_checks_per_node
            self._placeable_changed = True

    def take_delta(self) -> StateDelta:
        """The persisted records changed since the last call (tracking states only)."""
        delta = self._changes.take(
            configs=self._configs,
            sources=self._holdings.by_source,
            placement=self._placement,
            node_record=self._node_record_of,
        )
        history = self._results.history
        delta.history = history.take_pending()
        if delta.history:
            delta.history_bound = history.per_check()
        return delta

    # ----------------------------------------------------------------- reading

    @property
    def configs(self) -> Mapping[Digest, CheckConfig]:
        return self._configs

    @property
    def nodes(self) -> Mapping[NodeName, Node]:
        return self._nodes

    @property
    def placement(self) -> Mapping[Digest, NodeName]:
        return self._placement

    @property
    def dangling(self) -> Mapping[Digest, float]:
        return self._dangling

    @property
    def results(self) -> Mapping[Digest, ResultSummary]:
        return self._results.summaries

    @property
    def history(self) -> CheckHistory:
        """Each held check's recent accepted results (bounded; dropped with the check)."""
        return self._results.history

    @property
    def change_sequence(self) -> int:
        return self._seq

    def warming_up(self, now: float) -> bool:
        return now < self._warmup_until

    def warmup_until(self) -> float:
        return self._warmup_until

    def sources_of(self, digest: Digest) -> list[SourceName]:
        return sorted(self._holdings.holders(digest))

    def source_configs(self, source: SourceName) -> list[CheckConfig]:
        return [self._configs[d] for d in sorted(self._holdings.held_by(source))]

    def source_names(self) -> list[SourceName]:
        return self._holdings.sources()

    def held_count(self, source: SourceName) -> int:
        return len(self._holdings.held_by(source))

    @property
    def held_by_source(self) -> Mapping[SourceName, Set[Digest]]:
        """Each source's checks (a source holding none is not listed): what a write to
        sources is planned against (``sourceplan``)."""
        return self._holdings.by_source

    @property
    def max_checks_per_source(self) -> int | None:
        return self._source_limit

    def node(self, name: NodeName) -> Node:
        node = self._nodes.get(name)
        if node is None:
            raise UnknownNode(f"Node {name!r} is not registered (or has expired).")
        return node

    def config(self, digest: Digest) -> CheckConfig:
        config = self._configs.get(digest)
        if config is None:
            raise UnknownCheck(f"No check with digest {digest!r} is held.")
        return config

    def node_configs(self, name: NodeName) -> tuple[int, list[CheckConfig]]:
        """The node's change counter and its configs, sorted by digest."""
        node = self.node(name)
        return node.last_change, [self._configs[d] for d in sorted(node.digests)]

    def mean_measured_cost(self) -> float:
        return self._costs.mean()

    def cost(self, digest: Digest) -> float:
        """A check's cost: its utilisation once measured, else weight x mean cost."""
        measured = self._costs.get(digest)
        if measured is not None:
            return measured
        return self._configs[digest].weight * self.mean_measured_cost()

    def node_load(self, name: NodeName) -> float:
        return self.node(name).load(self.mean_measured_cost())

    def busyness(self, name: NodeName) -> float:
        return self.node(name).relative_load(self.mean_measured_cost())

    def explain(self, digest: Digest, *, now: float) -> str:
        """One sentence on why a check is where it is, or why it dangles."""
        return explain_check(
            self.config(digest),
            node=self._placement.get(digest),
            reason=self._placed_because.get(digest),
            nodes=self._nodes,
            warmup_left_s=self._warmup_until - now,
            max_checks_per_node=self._node_limit,
        )

    def take_events(self) -> Events:
        events, self._events = self._events, Events()
        return events

    # ----------------------------------------------------------------- sources

    def replace_source(
        self, source: SourceName, configs: Sequence[CheckConfig], *, now: float
    ) -> SourceChange:
        """Makes ``configs`` the whole set held by ``source`` (idempotent)."""
        return self.replace_sources({source: configs}, now=now)[source]

    def replace_sources(
        self, sets: Mapping[SourceName, Sequence[CheckConfig]], *, now: float
    ) -> dict[SourceName, SourceChange]:
        """Replaces several sources' sets in one step (``plan_replace`` and its work)."""
        plan = plan_replace(
            sets, held=self.held_by_source, max_checks_per_source=self._source_limit
        )
        self.note_replaced(sets, now=now)
        self.apply_work(plan.work, now=now)
        return plan.changes

    def note_replaced(self, sources: Iterable[SourceName], *, now: float) -> None:
        """These sources' whole sets were just written (a PUT, an import): while warming
        up, an agent's report that comes later must not make them hold a check again
        (``adopt_running``). A write to sources calls this once it is planned, even when
        its work is empty (a source that now holds nothing); an add (POST) does not: it
        says nothing of the source's other checks."""
        if self.warming_up(now):
            self._replaced_in_warmup.update(sources)

    def add_to_source(
        self, source: SourceName, configs: Sequence[CheckConfig], *, now: float
    ) -> list[Digest]:
        """Adds configs to what ``source`` holds, in one step (``plan_add`` and its work)."""
        plan = plan_add(
            source, configs, held=self.held_by_source, max_checks_per_source=self._source_limit
        )
        self.apply_work(plan.work, now=now)
        return list(plan.changes[source].digests)

    def apply_work(self, work: Sequence[SourceWork], *, now: float) -> None:
        """Does planned work (all of a plan's, or a slice of it). Each piece says what
        to hold or let go of, so it is right after other steps too: holding what is held
        and letting go of what is not are no-ops. No limit is checked here: the plan was."""
        now = self._advance(now)
        for piece in work:
            if isinstance(piece, Hold):
                self._hold(piece.source, piece.configs, now=now)
            else:
                self._release(piece.source, piece.digests, now=now)

    def remove_check(self, digest: Digest, *, source: SourceName | None, now: float) -> None:
        """Removes a check from one source, or from every source when ``source`` is None."""
        now = self._advance(now)
        holders = self._holdings.holders(digest)
        if not holders or (source is not None and source not in holders):
            raise UnknownCheck(
                f"No check with digest {digest!r} is held"
                + (f" by source {source!r}." if source is not None else ".")
            )
        if source is None and self.warming_up(now):
            self._deleted_in_warmup.add(digest)  # from every source: none adopts it again
        for holder in sorted(holders) if source is None else [source]:
            self._release(holder, [digest], now=now)

    # ------------------------------------------------------------------- nodes

    def node_status(
        self,
        name: NodeName,
        *,
        now: float,
        last_change: int,
        labels: Mapping[str, str] | None = None,
        capacity: int | None = None,
        running: Iterable[Digest] | None = None,
        stats: Mapping[Digest, CheckStats] | None = None,
        leaving: bool = False,
    ) -> bool:
        """A heartbeat: registers or refreshes the node; returns ``is_up_to_date``."""
        now = self._advance(now)
        if leaving:
            if name in self._nodes:
                self._remove_nodes([name], now=now, reason="node_left")
            return True
        node = self._nodes.get(name)
        if node is None:
            node = Node(
                name=name,
                labels=dict(labels or {}),
                capacity=capacity or 1,
                heartbeat_at=now,
                last_change=0,
            )
            self._nodes[name] = node
            self._index.update(node)
            self._touch(node)
            self._changes.node(name)
            self._placeable_changed = True
        else:
            node.heartbeat_at = now
            if capacity is not None and capacity != node.capacity:
                node.capacity = capacity
                self._index.update(node)
                self._changes.node(name)
            if labels is not None and dict(labels) != node.labels:
                node.labels = dict(labels)
                self._changes.node(name)
                self._relabel(node, now=now)
        self._by_heartbeat[name] = None
        self._by_heartbeat.move_to_end(name)
        if running is not None:
            self._record_running(node, frozenset(running), now=now)
        if stats:
            self._record_stats(node, stats)
        if last_change == -1 or self.warming_up(now):
            return True
        return last_change == node.last_change

    def wants_running_configs(self, name: NodeName, *, now: float) -> bool:
        """Whether the node is asked for the full configs of what it runs (API.md,
        status): while warming up, which only a term that started empty does, until it
        has sent them (``adopt_running``)."""
        return (
            self.warming_up(now) and name in self._nodes and name not in self._sent_running_configs
        )

    def adopt_running(
        self, name: NodeName, reports: Sequence[RunningConfig], *, now: float
    ) -> None:
        """Rebuild from the agents: while warming up, the checks the node reports running
        stay there. An unknown check is added, held by the sources reported; a known one
        keeps its holders and only gets its placement adopted, as with ``running``. A
        check placed already (another node reported it first) stays, and one the node
        may not run dangles until warm-up is over. Reports must be intact (``rebuild``).

        What a source said in this term wins over an agent's report, which may arrive
        after it: a source that wrote its whole set (``note_replaced``) is not taken as a
        holder, nor one that let go of that check, and a check deleted from every source
        is not added again; a check left with no holder is not adopted."""
        now = self._advance(now)
        node = self._nodes.get(name)
        if node is None or not self.warming_up(now):
            return  # past warm-up the state knows its checks: agents do not add any
        self._sent_running_configs.add(name)
        for report in reports:
            digest = report.config.digest
            if digest not in self._configs and digest not in self._deleted_in_warmup:
                holders = sorted(
                    source
                    for source in report.sources
                    if source not in self._replaced_in_warmup
                    and (source, digest) not in self._released_in_warmup
                )
                if holders:
                    self._upsert(report.config)
                    for source in holders:
                        self._holdings.hold(source, digest)
                        self._changes.source(source)
            if digest not in self._configs or digest in self._placement:
                continue
            if self._eligible(node, self._configs[digest]):
                self._attach(digest, node, reason="adopted", previous=None)
            elif digest not in self._dangling:
                self._place(digest, now=now, reason="adopted")

    def expire_nodes(self, *, now: float, timeout_s: float) -> list[NodeName]:
        """Removes nodes whose last heartbeat is older than ``timeout_s``.

        Costs in proportion to the expired nodes' checks, not to the cluster: nodes are
        kept in heartbeat order, so the scan stops at the first live one.
        """
        now = self._advance(now)
        deadline = now - timeout_s
        expired: list[NodeName] = []
        for name in self._by_heartbeat:
            if self._nodes[name].heartbeat_at >= deadline:
                break
            expired.append(name)
        self._remove_nodes(expired, now=now, reason="node_expired")
        return expired

    def dispatch_dangling(self, *, now: float) -> int:
        """Places dangling checks where an eligible node exists; returns how many."""
        now = self._advance(now)
        if not self._warm and not self.warming_up(now):
            self._warm = True
            self._placeable_changed = True
            self._forget_warmup()
        if not self._placeable_changed or not self._dangling or self.warming_up(now):
            return 0
        self._placeable_changed = False
        placed = 0
        for digest in list(self._dangling):
            if self._place(digest, now=now, reason="dispatched") is not None:
                placed += 1
        return placed

    def cordon(self, name: NodeName) -> Node:
        node = self.node(name)
        if not node.cordoned:
            node.cordoned = True
            self._changes.node(name)
            self._index.update(node)  # out of the placement order
        return node

    def uncordon(self, name: NodeName, *, now: float) -> Node:
        node = self.node(name)
        if node.cordoned:
            node.cordoned = False
            self._changes.node(name)
            self._index.update(node)  # back in the placement order
            self._placeable_changed = True
            self.dispatch_dangling(now=now)
        return node

    def drain(self, name: NodeName, *, now: float) -> list[Move]:
        """Cordons the node and moves its checks away now.

        A check that no other node may run stays where it is rather than dangle.
        """
        now = self._advance(now)
        node = self.cordon(name)
        moves: list[Move] = []
        for digest in sorted(node.digests):
            move = self._move(digest, now=now, reason="drained")
            if move is not None:
                moves.append(move)
        return moves

    def isolate(self, digest: Digest, *, now: float) -> tuple[NodeName, list[Move]]:
        """Keeps the check on its node, cordons the node and moves every other check off.

        All or nothing: when any other check has nowhere to go, nothing changes.
        """
        now = self._advance(now)
        self.config(digest)
        name = self._placement.get(digest)
        if name is None:
            raise NotDispatched(f"Check {digest!r} is dangling: it is not on any node.")
        node = self._nodes[name]
        others = sorted(d for d in node.digests if d != digest)
        for other in others:
            config = self._configs[other]
            if not any(
                self._eligible(candidate, config)
                for candidate_name, candidate in self._nodes.items()
                if candidate_name != name
            ):
                raise NoOtherNode(
                    f"Check {other!r} ({config.name}) has no other eligible node to go to."
                )
        self.cordon(name)
        moves = [m for d in others if (m := self._move(d, now=now, reason="isolated"))]
        return name, moves

    # --------------------------------------------------------------- rebalance

    def plan_rebalance(self, *, margin: float, min_improvement: float, moves: bool = True) -> Plan:
        """The load-aware plan for the nodes that take checks (cordoned ones are left
        as they are). A check that has not run yet, or whose last run failed, stays.
        With ``moves`` false, only the loads and the spread (no search for moves)."""
        nodes, items = run_steps(self.rebalance_inputs(margin=margin, moves=moves))
        return plan_rebalance(nodes, items, margin=margin, min_improvement=min_improvement)

    def rebalance_inputs(
        self, *, margin: float, moves: bool = True, slice_work: int = SLICE_WORK
    ) -> Generator[None, None, tuple[list[NodeLoad], list[Item]]]:
        """The planner's inputs, in slices (``planner_input_steps``): a caller may free
        its lock between them, and must then check the plan's moves before making them
        (``apply_rebalance``)."""
        return planner_input_steps(
            self._nodes,
            self._configs,
            mean_cost=self.mean_measured_cost(),
            cost=self.cost,
            movable=self._results.last_ok,
            max_checks_per_node=self._node_limit,
            margin=margin,
            items=moves,
            slice_work=slice_work,
        )

    def rebalance(
        self,
        *,
        now: float,
        margin: float,
        min_improvement: float,
        force: bool = False,
        dry_run: bool = False,
    ) -> RebalanceOutcome:
        """Plans and, unless ``dry_run`` or not worth it (and not ``force``), applies."""
        now = self._advance(now)
        warming_up = self.warming_up(now)
        plan = self.plan_rebalance(
            margin=margin, min_improvement=min_improvement, moves=not warming_up
        )
        return self.apply_rebalance(
            plan, now=now, warming_up=warming_up, force=force, dry_run=dry_run
        )

    def apply_rebalance(
        self, plan: Plan, *, now: float, warming_up: bool, force: bool, dry_run: bool
    ) -> RebalanceOutcome:
        """Makes the plan's moves, unless ``dry_run`` or not worth it (and not ``force``)
        or planned while ``warming_up``: each one that still holds on the state as it
        is now. A plan made while the state could change (``rebalance_inputs`` and the
        planner run with the lock free) may have moves that no longer hold: those are
        skipped, counted by why in ``skipped``, and the outcome's ``moves`` are the
        moves made. On a state that did not change since planning, every move holds."""
        self._advance(now)
        outcome = RebalanceOutcome.of(plan, warming_up=warming_up, dry_run=dry_run, force=force)
        if not outcome.applied:
            return outcome
        made: list[Move] = []
        skipped: Counter[str] = Counter()
        for move in outcome.moves:
            why = self._why_not_move(move)
            if why is not None:
                skipped[why] += 1
                continue
            self._relocate(move.digest, self._nodes[move.dest_node], reason="rebalanced")
            made.append(move)
        if not skipped:
            return outcome
        return replace(outcome, moves=made, skipped=dict(sorted(skipped.items())))

    def _why_not_move(self, move: Move) -> str | None:
        """Why a planned move no longer holds (None: it does): the check is no longer
        held, or no longer on the move's source, or no longer movable (its last run
        failed), or the destination went, was cordoned, is full or its labels no longer
        match the check's selector."""
        config = self._configs.get(move.digest)
        if config is None:
            return "check_gone"
        if self._placement.get(move.digest) != move.source_node:
            return "check_moved"
        if not self._results.last_ok(move.digest):
            return "check_not_movable"
        dest = self._nodes.get(move.dest_node)
        if dest is None:
            return "node_gone"
        if dest.cordoned:
            return "node_cordoned"
        if self._node_limit is not None and len(dest.digests) >= self._node_limit:
            return "node_full"
        if config.node_selector and not config.matches(dest.labels):
            return "node_not_eligible"
        return None

    # ----------------------------------------------------------------- results

    def record_results(
        self, name: NodeName, results: Sequence[CheckResult], *, now_wall: float
    ) -> tuple[int, list[RejectedResult]]:
        """Stores results for checks assigned to ``name``; rejects stale ones.
        ``now_wall``: the wall time they arrived at (ResultBook orders by it)."""
        return self._results.record(
            name, results, held=self._configs, placement=self._placement, now_wall=now_wall
        )

    # ---------------------------------------------------------------- internal

    def _advance(self, now: float) -> float:
        self._now = max(self._now, now)
        return self._now

    def _touch(self, node: Node) -> None:
        self._seq += 1
        node.last_change = self._seq
        self._events.changed_nodes.add(node.name)

    def _node_record_of(self, name: NodeName) -> NodeRecord | None:
        node = self._nodes.get(name)
        return None if node is None else node.record()

    def _eligible(self, node: Node, config: CheckConfig) -> bool:
        return (
            not node.cordoned
            and (self._node_limit is None or len(node.digests) < self._node_limit)
            and (not config.node_selector or config.matches(node.labels))
        )

    def _hold(self, source: SourceName, configs: Iterable[CheckConfig], *, now: float) -> None:
        # The loop of a large write (100,000 new checks): _upsert and _holders_changed
        # with their common cases inline, and a new check (not placed, not dangling)
        # placed.
        known = self._configs
        placement = self._placement
        dangling = self._dangling
        hold = self._holdings.hold
        changes = self._changes
        held_any = False
        for config in configs:
            digest = config.digest
            current = known.get(digest)
            if current is None:
                known[digest] = config
                changes.config(digest)
            elif current.weight != config.weight:
                self._upsert(config)
            if hold(source, digest):
                held_any = True
                name = placement.get(digest)
                if name is not None:
                    self._touch(self._nodes[name])  # _holders_changed
                elif digest not in dangling:
                    self._place(digest, now=now, reason="new_check")
        if held_any:
            changes.source(source)  # the source's record: once for all it now holds

    def _release(self, source: SourceName, digests: Iterable[Digest], *, now: float) -> None:
        held = self._holdings.held_by(source)
        warming_up = self.warming_up(now)
        for digest in digests:
            if digest not in held:
                continue  # let go of since the plan (a delete in between)
            self._changes.source(source)
            if warming_up and source not in self._replaced_in_warmup:
                self._released_in_warmup.add((source, digest))
            if self._holdings.release(source, digest):
                self._drop(digest)
            else:
                self._holders_changed(digest)

    def _holders_changed(self, digest: Digest) -> None:
        """A placed check's holders changed: its node's agents refetch, so that the
        ``sources`` they keep (and report to a leader that rebuilds from them) are the
        current ones. The digest is the same: nothing restarts."""
        name = self._placement.get(digest)
        if name is not None:
            self._touch(self._nodes[name])

    def _forget_warmup(self) -> None:
        """Past the warm-up nothing is adopted: what it needed goes (it would only grow)."""
        self._sent_running_configs.clear()
        self._replaced_in_warmup.clear()
        self._released_in_warmup.clear()
        self._deleted_in_warmup.clear()

    def _upsert(self, config: CheckConfig) -> None:
        current = self._configs.get(config.digest)
        if current is None:
            self._configs[config.digest] = config
            self._changes.config(config.digest)
            return
        if current.weight != config.weight:
            node_name = self._placement.get(config.digest)
            unmeasured = self._costs.get(config.digest) is None
            if node_name is not None and unmeasured:
                node = self._nodes[node_name]
                node.unmeasured_weight += config.weight - current.weight
                self._index.update(node)
            self._configs[config.digest] = config
            self._changes.config(config.digest)

    def _drop(self, digest: Digest) -> None:
        """The check is held no more: off its node and out of every index."""
        name = self._placement.get(digest)
        config = self._configs[digest]
        if name is not None:
            node = self._nodes[name]
            self._detach(digest, node)
            self._touch(node)
        self._dangling.pop(digest, None)
        self._placed_because.pop(digest, None)
        self._set_measured(digest, None)
        self._results.forget(digest)
        self._reported.pop(digest, None)
        del self._configs[digest]
        self._changes.config(digest)
        self._events.decisions.append(Decision(digest, config.name, None, name, "check_removed"))

    def _place(
        self,
        digest: Digest,
        *,
        now: float,
        reason: str,
        exclude: NodeName | None = None,
        previous: NodeName | None = None,
    ) -> NodeName | None:
        """Gives a check that is on no node to the best eligible node, or dangles it."""
        config = self._configs[digest]
        reporter = self._reported.get(digest)
        if reporter is not None and reporter != exclude:
            node = self._nodes.get(reporter)
            if node is not None and self._eligible(node, config):
                self._attach(digest, node, reason="adopted", previous=previous)
                return node.name
        if not now < self._warmup_until:  # not warming up
            dest = self._least_eligible(config, exclude=exclude)
            if dest is not None:
                self._attach(digest, dest, reason=reason, previous=previous)
                return dest.name
        if digest not in self._dangling:
            self._dangling[digest] = now
            self._events.decisions.append(Decision(digest, config.name, None, previous, reason))
        return None

    def _move(self, digest: Digest, *, now: float, reason: str) -> Move | None:
        """Moves a check to the best other eligible node; None when there is none."""
        source = self._placement[digest]
        dest = self._least_eligible(self._configs[digest], exclude=source)
        return None if dest is None else self._relocate(digest, dest, reason=reason)

    def _least_eligible(self, config: CheckConfig, *, exclude: NodeName | None) -> Node | None:
        """The least loaded node that may run the check, other than ``exclude``.

        Once per check placed or moved. The least loaded node is tried on its own
        first: it usually takes the check. Else the scan goes on up the load order while
        nodes refuse (a selector that matches few nodes, or one zone whose nodes are all
        busier than the others), testing each node as ``_eligible`` does, inline: a
        long scan costs that test per node."""
        nodes = self._nodes
        least = self._index.least(nodes)
        if least is None:
            return None
        node = nodes[least]
        if least != exclude and self._eligible(node, config):
            return node
        limit = self._node_limit
        selector = tuple(config.node_selector.items())
        for name in self._index.ascending(nodes):
            node = nodes[name]
            if name == exclude or node.cordoned:
                continue
            if limit is not None and len(node.digests) >= limit:
                continue
            labels = node.labels
            for key, value in selector:
                if labels.get(key) != value:
                    break
            else:
                return node
        return None

    def _relocate(self, digest: Digest, dest: Node, *, reason: str) -> Move:
        """The one mover (drain, isolate, rebalance): takes a check off its node and
        gives it to ``dest``, with a decision record."""
        source = self._nodes[self._placement[digest]]
        cost = self.cost(digest)
        self._detach(digest, source)
        self._touch(source)
        self._attach(digest, dest, reason=reason, previous=source.name)
        return Move(digest, self._configs[digest].name, cost, source.name, dest.name)

    def _attach(
        self, digest: Digest, node: Node, *, reason: str, previous: NodeName | None
    ) -> None:
        # Once per check placed: Node.add_cost and _touch inline.
        name = node.name
        config = self._configs[digest]
        self._placement[digest] = name
        self._changes.placement(digest)
        self._placed_because[digest] = reason
        if self._dangling:
            self._dangling.pop(digest, None)
        if self._reported:
            self._reported.pop(digest, None)
        node.digests.add(digest)
        measured = self._costs.get(digest)
        if measured is None:
            node.unmeasured_weight += config.weight
        else:
            node.measured_cost += measured
        self._index.update(node)
        self._seq += 1
        node.last_change = self._seq
        events = self._events
        events.changed_nodes.add(name)
        events.decisions.append(Decision(digest, config.name, name, previous, reason))

    def _detach(self, digest: Digest, node: Node) -> None:
        """Takes a check off a node's books (the caller touches or removes the node)."""
        del self._placement[digest]
        self._changes.placement(digest)
        self._placed_because.pop(digest, None)
        node.digests.discard(digest)
        node.stats.pop(digest, None)
        if self._node_limit is not None and len(node.digests) == self._node_limit - 1:
            self._placeable_changed = True  # room again: dangling checks may come
        node.remove_cost(weight=self._configs[digest].weight, measured=self._costs.get(digest))
        if node.name in self._nodes:
            self._index.update(node)

    def _remove_nodes(self, names: Sequence[NodeName], *, now: float, reason: str) -> None:
        """Takes every node off the books first, then re-places their checks, so that no
        check goes to a node that is being removed in the same step."""
        orphans: list[tuple[Digest, NodeName]] = []
        for name in names:
            node = self._nodes.pop(name)
            self._changes.node(name)
            self._by_heartbeat.pop(name, None)
            self._index.remove(name)
            for digest in node.reported_running:
                if self._reported.get(digest) == name:
                    del self._reported[digest]
            self._events.removed_nodes.append(name)
            self._events.changed_nodes.discard(name)
            for digest in sorted(node.digests):
                self._detach(digest, node)
                orphans.append((digest, name))
        for digest, previous in sorted(orphans):
            self._place(digest, now=now, reason=reason, previous=previous)

    def _relabel(self, node: Node, *, now: float) -> None:
        self._placeable_changed = True
        for digest in sorted(node.digests):
            if not self._configs[digest].matches(node.labels):
                self._detach(digest, node)
                self._touch(node)
                self._place(
                    digest, now=now, reason="labels_changed", exclude=node.name, previous=node.name
                )

    def _record_running(self, node: Node, running: frozenset[Digest], *, now: float) -> None:
        for digest in node.reported_running - running:
            if self._reported.get(digest) == node.name:
                del self._reported[digest]
        node.reported_running = running
        for digest in sorted(running):
            if digest in self._placement:
                continue
            self._reported[digest] = node.name
            if digest in self._dangling:
                config = self._configs[digest]
                if self._eligible(node, config):
                    self._attach(digest, node, reason="adopted", previous=None)

    def _record_stats(self, node: Node, stats: Mapping[Digest, CheckStats]) -> None:
        """Keeps the node's stats and re-prices its checks by their measured utilisation.
        An agent's average run time changes with nearly every run, so a heartbeat
        re-prices most of its checks: the node's place in the order and the mean cost
        are settled once, at the end (the same outcome as after each: nothing reads them
        in between)."""
        placed_on = self._placement.get
        configs = self._configs
        name = node.name
        kept = node.stats
        repriced = False
        for digest, item in stats.items():
            if placed_on(digest) != name:
                continue  # a stale report for a check that moved away
            kept[digest] = cast("StatsKept", tuple(item))
            if item.runs > 0:
                utilisation = item.avg_execution_s / configs[digest].interval_s
                repriced = self._reprice(digest, node, utilisation) or repriced
        if repriced:
            self._settle_costs(node)

    def _set_measured(self, digest: Digest, utilisation: float | None) -> None:
        name = self._placement.get(digest)
        node = self._nodes.get(name) if name is not None else None
        if self._reprice(digest, node, utilisation):
            self._settle_costs(node)

    def _reprice(self, digest: Digest, node: Node | None, utilisation: float | None) -> bool:
        """Records a check's measured utilisation, and re-prices it on ``node`` (the one
        it is placed on, if any); False when it was that already. ``_settle_costs``
        must follow before the load order is read."""
        old = self._costs.get(digest)
        if old == utilisation:
            return False
        if node is not None:
            weight = self._configs[digest].weight
            node.remove_cost(weight=weight, measured=old)  # re-priced: it stays on the node
            node.add_cost(weight=weight, measured=utilisation)
        self._costs.set(digest, utilisation)
        return True

    def _settle_costs(self, node: Node | None) -> None:
        self._index.set_mean_cost(self._costs.mean())
        if node is not None:
            self._index.update(node)
