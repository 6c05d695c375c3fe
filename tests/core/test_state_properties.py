"""Property tests of the cluster state over random sequences of operations.

A hypothesis state machine registers, relabels, expires and drains nodes, adds and
removes checks through several sources, reports stats and running checks, and ticks.
After every step the structural invariants are checked against the state and a small
model (which sources hold what, which nodes are alive); at the end the whole sequence is
replayed on a fresh state, which must decide exactly the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dispatcher.core.model import CheckConfig, CheckStats, Digest, NodeName, SourceName, make_config
from dispatcher.core.outcomes import Decision, Events, SourceChange
from dispatcher.core.state import NEVER, ClusterState
from dispatcher.errors import NoOtherNode, NotDispatched, RequestError, UnknownCheck, UnknownNode

NODES = [NodeName(f"n{i}") for i in range(3)]
SOURCES = [SourceName("s1"), SourceName("s2")]
SELECTORS: list[dict[str, str]] = [
    {},
    {"zone": "a"},
    {"zone": "b"},
    {"disk": "ssd"},
    {"zone": "a", "disk": "ssd"},
]
CHECK_IDS = range(5)
WEIGHTS = [0.5, 1.0, 2.0]


def catalog_config(check_id: int, selector: int, weight: float = 1.0) -> CheckConfig:
    return make_config(
        name="http",
        instances=[{"url": f"http://svc-{check_id}/healthz"}],
        node_selector=SELECTORS[selector],
        weight=weight,
    )


CATALOG: list[Digest] = [
    catalog_config(i, s).digest for i in CHECK_IDS for s in range(len(SELECTORS))
]

node_names = st.sampled_from(NODES)
sources = st.sampled_from(SOURCES)
LABEL_SETS: list[dict[str, str]] = [
    {},
    {"zone": "a"},
    {"zone": "b"},
    {"disk": "ssd"},
    {"zone": "a", "disk": "ssd"},
]
label_sets = st.sampled_from(LABEL_SETS)
check_specs = st.tuples(
    st.sampled_from(list(CHECK_IDS)),
    st.integers(min_value=0, max_value=len(SELECTORS) - 1),
    st.sampled_from(WEIGHTS),
)

# ------------------------------------------------------------- operations


class Operation(Protocol):
    """One step on the state, recorded so that a run can be replayed exactly."""

    def run(self, state: ClusterState) -> object: ...


@dataclass(frozen=True)
class Heartbeat:
    node: NodeName
    now: float
    labels: Mapping[str, str] | None
    capacity: int | None
    running: tuple[Digest, ...] | None
    stats: Mapping[Digest, CheckStats] | None

    def run(self, state: ClusterState) -> object:
        return state.node_status(
            self.node,
            now=self.now,
            last_change=-1,
            labels=self.labels,
            capacity=self.capacity,
            running=self.running,
            stats=self.stats,
        )


@dataclass(frozen=True)
class Leave:
    node: NodeName
    now: float

    def run(self, state: ClusterState) -> object:
        return state.node_status(self.node, now=self.now, last_change=-1, leaving=True)


@dataclass(frozen=True)
class AddChecks:
    source: SourceName
    configs: tuple[CheckConfig, ...]
    now: float

    def run(self, state: ClusterState) -> object:
        return state.add_to_source(self.source, self.configs, now=self.now)


@dataclass(frozen=True)
class ReplaceSource:
    source: SourceName
    configs: tuple[CheckConfig, ...]
    now: float

    def run(self, state: ClusterState) -> object:
        return state.replace_source(self.source, self.configs, now=self.now)


@dataclass(frozen=True)
class ReplaceSources:
    sets: Mapping[SourceName, tuple[CheckConfig, ...]]
    now: float

    def run(self, state: ClusterState) -> object:
        return state.replace_sources(self.sets, now=self.now)


@dataclass(frozen=True)
class RemoveCheck:
    digest: Digest
    source: SourceName | None
    now: float

    def run(self, state: ClusterState) -> object:
        state.remove_check(self.digest, source=self.source, now=self.now)
        return None


@dataclass(frozen=True)
class Expire:
    now: float
    timeout_s: float

    def run(self, state: ClusterState) -> object:
        return state.expire_nodes(now=self.now, timeout_s=self.timeout_s)


@dataclass(frozen=True)
class Tick:
    now: float

    def run(self, state: ClusterState) -> object:
        return state.dispatch_dangling(now=self.now)


@dataclass(frozen=True)
class Cordon:
    node: NodeName

    def run(self, state: ClusterState) -> object:
        return state.cordon(self.node).name


@dataclass(frozen=True)
class Uncordon:
    node: NodeName
    now: float

    def run(self, state: ClusterState) -> object:
        return state.uncordon(self.node, now=self.now).name


@dataclass(frozen=True)
class Drain:
    node: NodeName
    now: float

    def run(self, state: ClusterState) -> object:
        return state.drain(self.node, now=self.now)


@dataclass(frozen=True)
class Isolate:
    digest: Digest
    now: float

    def run(self, state: ClusterState) -> object:
        return state.isolate(self.digest, now=self.now)


def apply(state: ClusterState, op: Operation) -> object:
    """Applies one operation; a domain error is an outcome like any other."""
    try:
        return op.run(state)
    except RequestError as exc:
        return type(exc).__name__


def snapshot(state: ClusterState) -> object:
    """Everything a placement decision shows: compared between a run and its replay."""
    return (
        sorted(state.placement.items()),
        sorted(state.dangling.items()),
        state.change_sequence,
        sorted(
            (name, node.last_change, node.cordoned, sorted(node.labels.items()), node.capacity)
            for name, node in state.nodes.items()
        ),
    )


def eligible(state: ClusterState, config: CheckConfig) -> list[NodeName]:
    return sorted(
        name
        for name, node in state.nodes.items()
        if not node.cordoned and config.matches(node.labels)
    )


# ------------------------------------------------------------ the machine


class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.warmup_until = NEVER
        self.state = ClusterState()
        self.now = 0.0
        self.log: list[Operation] = []
        self.outcomes: list[object] = []
        self.decisions: list[Decision] = []
        self.events = Events()
        self.last_op: Operation | None = None
        # The model: what each source holds and when each live node was last seen.
        self.held: dict[SourceName, set[Digest]] = {}
        self.last_seen: dict[NodeName, float] = {}
        self.ever_reported: set[Digest] = set()
        # What the invariants saw after the previous step.
        self.seen_seq = 0
        self.seen_counters: dict[NodeName, int] = {}
        self.seen_digests: dict[NodeName, frozenset[Digest]] = {}
        self.max_counter = 0

    @initialize(warmup_s=st.sampled_from([None, None, 15.0]))
    def start(self, warmup_s: float | None) -> None:
        self.warmup_until = NEVER if warmup_s is None else warmup_s
        self.state = ClusterState(warmup_until=self.warmup_until)

    def do(self, op: Operation) -> object:
        outcome = apply(self.state, op)
        self.log.append(op)
        self.outcomes.append(outcome)
        self.events = self.state.take_events()
        self.decisions.extend(self.events.decisions)
        self.last_op = op
        return outcome

    def all_held(self) -> set[Digest]:
        return set().union(*self.held.values())

    def checks_on(self, names: set[NodeName]) -> list[Digest]:
        return sorted(
            d for n in names if n in self.state.nodes for d in self.state.nodes[n].digests
        )

    def assert_redispatched(self, orphans: list[Digest]) -> None:
        """A removed node's checks are re-dispatched in the same step, where possible."""
        for digest in orphans:
            if digest in self.state.dangling and not self.state.warming_up(self.now):
                assert eligible(self.state, self.state.configs[digest]) == [], digest

    # ----------------------------------------------------------------- rules

    @rule(seconds=st.sampled_from([0.5, 5.0, 10.0, 20.0, 31.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(
        node=node_names,
        labels=st.none() | label_sets,
        capacity=st.none() | st.integers(min_value=1, max_value=4),
        running=st.none() | st.lists(st.sampled_from(CATALOG), max_size=3, unique=True),
        avg_s=st.none() | st.sampled_from([0.0, 0.15, 1.5, 4.5, 7.5]),
        runs=st.sampled_from([0, 1, 5]),
        stale=st.none() | st.sampled_from(CATALOG),
    )
    def heartbeat(
        self,
        *,
        node: NodeName,
        labels: Mapping[str, str] | None,
        capacity: int | None,
        running: list[Digest] | None,
        avg_s: float | None,
        runs: int,
        stale: Digest | None,
    ) -> None:
        stats: dict[Digest, CheckStats] | None = None
        if avg_s is not None:
            mine = self.state.nodes[node].digests if node in self.state.nodes else set()
            reported = sorted(mine | ({stale} if stale is not None else set()))
            stats = {
                digest: CheckStats(avg_execution_s=avg_s * (1 + i % 3), runs=runs, errors=0)
                for i, digest in enumerate(reported)
            }
        if running is not None:
            self.ever_reported.update(running)
        self.do(
            Heartbeat(
                node=node,
                now=self.now,
                labels=labels,
                capacity=capacity,
                running=tuple(running) if running is not None else None,
                stats=stats,
            )
        )
        self.last_seen[node] = self.now

    @rule(node=node_names)
    def leave(self, node: NodeName) -> None:
        orphans = self.checks_on({node})
        assert self.do(Leave(node, self.now)) is True
        assert node not in self.state.nodes
        self.last_seen.pop(node, None)
        self.assert_redispatched(orphans)

    @rule(node=node_names, labels=label_sets)
    def relabel(self, node: NodeName, labels: dict[str, str]) -> None:
        """A heartbeat that only changes labels (a registration if the node is new)."""
        self.do(Heartbeat(node, self.now, labels, None, None, None))
        self.last_seen[node] = self.now

    @rule(source=sources, spec=check_specs)
    def add_one(self, source: SourceName, spec: tuple[int, int, float]) -> None:
        config = catalog_config(*spec)
        is_new = config.digest not in self.state.configs
        # Placement rule, judged independently: least relative load among eligible
        # nodes, ties by name (unless warm-up or an agent's report decides instead).
        predictable = (
            is_new
            and not self.state.warming_up(self.now)
            and config.digest not in self.ever_reported
        )
        expected: NodeName | None = None
        if predictable:
            candidates = eligible(self.state, config)
            if candidates:
                expected = min(candidates, key=lambda n: (self.state.busyness(n), n))

        assert self.do(AddChecks(source, (config,), self.now)) == [config.digest]
        self.held.setdefault(source, set()).add(config.digest)

        if predictable:
            assert self.state.placement.get(config.digest) == expected
            assert (config.digest in self.state.dangling) is (expected is None)
        assert self.state.configs[config.digest].weight == config.weight

    @rule(source=sources, specs=st.lists(check_specs, min_size=1, max_size=3))
    def add_many(self, source: SourceName, specs: list[tuple[int, int, float]]) -> None:
        configs = tuple(catalog_config(*spec) for spec in specs)
        self.do(AddChecks(source, configs, self.now))
        self.held.setdefault(source, set()).update(c.digest for c in configs)

    @rule(source=sources, specs=st.lists(check_specs, max_size=4))
    def replace_source(self, source: SourceName, specs: list[tuple[int, int, float]]) -> None:
        configs = tuple(catalog_config(*spec) for spec in specs)
        before = self.held.get(source, set())
        wanted = {c.digest for c in configs}
        change = self.do(ReplaceSource(source, configs, self.now))
        assert isinstance(change, SourceChange)
        assert change.digests == [c.digest for c in configs]
        assert (change.added, change.removed, change.unchanged) == (
            len(wanted - before),
            len(before - wanted),
            len(wanted & before),
        )
        if wanted:
            self.held[source] = wanted
        else:
            self.held.pop(source, None)

    @rule(first=st.lists(check_specs, max_size=3), second=st.lists(check_specs, max_size=3))
    def replace_both_sources(
        self, first: list[tuple[int, int, float]], second: list[tuple[int, int, float]]
    ) -> None:
        """Both sources in one step: a check moving between them keeps its node."""
        sets = {
            SOURCES[0]: tuple(catalog_config(*spec) for spec in first),
            SOURCES[1]: tuple(catalog_config(*spec) for spec in second),
        }
        kept = {
            d for d in self.all_held() if any(d == c.digest for cs in sets.values() for c in cs)
        }
        where = {d: self.state.placement.get(d) for d in kept}
        changes = self.do(ReplaceSources(sets, self.now))
        assert isinstance(changes, dict)
        assert set(changes) == set(SOURCES)
        for source, configs in sets.items():
            wanted = {c.digest for c in configs}
            if wanted:
                self.held[source] = wanted
            else:
                self.held.pop(source, None)
        for digest in kept:
            if where[digest] is not None:
                assert self.state.placement.get(digest) == where[digest], digest

    @rule(
        pick=st.integers(min_value=0, max_value=1000),
        from_all=st.booleans(),
        bogus=st.sampled_from(CATALOG) | st.none(),
    )
    def remove(self, pick: int, from_all: bool, bogus: Digest | None) -> None:
        pairs = sorted((src, d) for src, ds in self.held.items() for d in ds)
        if bogus is not None or not pairs:
            digest = bogus if bogus is not None else CATALOG[pick % len(CATALOG)]
            source = None if from_all else SOURCES[pick % len(SOURCES)]
        else:
            source, digest = pairs[pick % len(pairs)]
            if from_all:
                source = None
        holders = {s for s, ds in self.held.items() if digest in ds}
        known = bool(holders) if source is None else source in holders
        outcome = self.do(RemoveCheck(digest, source, self.now))
        if not known:
            assert outcome == UnknownCheck.__name__
            return
        assert outcome is None
        for src in holders if source is None else {source}:
            self.held[src].discard(digest)
            if not self.held[src]:
                del self.held[src]

    @rule(timeout_s=st.sampled_from([10.0, 30.0]))
    def expire(self, timeout_s: float) -> None:
        deadline = self.now - timeout_s
        due = {name for name, seen in self.last_seen.items() if seen < deadline}
        orphans = self.checks_on(due)
        expired = self.do(Expire(self.now, timeout_s))
        assert isinstance(expired, list)
        assert set(expired) == due
        for name in due:
            del self.last_seen[name]
        self.assert_redispatched(orphans)

    @rule()
    def tick(self) -> None:
        self.do(Tick(self.now))
        if not self.state.warming_up(self.now):
            # After a tick, a check dangles only when no node may take it.
            for digest in self.state.dangling:
                assert eligible(self.state, self.state.configs[digest]) == [], digest

    @rule(node=node_names)
    def cordon(self, node: NodeName) -> None:
        outcome = self.do(Cordon(node))
        if node in self.last_seen:
            assert self.state.nodes[node].cordoned
        else:
            assert outcome == UnknownNode.__name__

    @rule(node=node_names)
    def uncordon(self, node: NodeName) -> None:
        outcome = self.do(Uncordon(node, self.now))
        if node in self.last_seen:
            assert not self.state.nodes[node].cordoned
        else:
            assert outcome == UnknownNode.__name__

    @rule(node=st.none() | node_names)
    def drain(self, node: NodeName | None) -> None:
        if node is None:
            # The busiest node: a drain that has something to move.
            loaded = sorted(self.state.nodes.items(), key=lambda kv: (-len(kv[1].digests), kv[0]))
            node = loaded[0][0] if loaded else NODES[0]
        outcome = self.do(Drain(node, self.now))
        if node not in self.last_seen:
            assert outcome == UnknownNode.__name__
            return
        drained = self.state.nodes[node]
        assert drained.cordoned
        for digest in drained.digests:
            # Left in place only when no other node may run it.
            assert eligible(self.state, self.state.configs[digest]) == [], digest

    @rule(pick=st.integers(min_value=0, max_value=1000), placed_only=st.booleans())
    def isolate(self, pick: int, placed_only: bool) -> None:
        candidates = (placed_only and sorted(self.state.placement)) or sorted(self.all_held())
        candidates = candidates or CATALOG
        digest = candidates[pick % len(candidates)]
        before = (dict(self.state.placement), self.state.change_sequence)
        outcome = self.do(Isolate(digest, self.now))
        if digest not in self.state.configs:
            assert outcome == UnknownCheck.__name__
        elif outcome in (NotDispatched.__name__, NoOtherNode.__name__):
            assert (dict(self.state.placement), self.state.change_sequence) == before
        else:
            name = self.state.placement[digest]
            assert before[0][digest] == name
            assert self.state.nodes[name].cordoned
            assert self.state.nodes[name].digests == {digest}

    # ------------------------------------------------------------ invariants

    @invariant()
    def every_check_is_held_and_either_placed_or_dangling(self) -> None:
        state = self.state
        held = self.all_held()
        assert set(state.configs) == held, "a check was lost or kept after its last source"
        assert set(state.placement).isdisjoint(state.dangling)
        assert set(state.placement) | set(state.dangling) == held
        for source in SOURCES:
            expected = sorted(self.held.get(source, ()))
            assert [c.digest for c in state.source_configs(source)] == expected

    @invariant()
    def every_check_is_on_at_most_one_live_node(self) -> None:
        state = self.state
        assert set(state.nodes) == set(self.last_seen), "a node outlived its expiry"
        on_nodes = Counter(d for node in state.nodes.values() for d in node.digests)
        assert all(count == 1 for count in on_nodes.values()), on_nodes
        assert set(on_nodes) == set(state.placement)
        for digest, name in state.placement.items():
            assert name in state.nodes, f"{digest} is on a node that is gone"
            assert digest in state.nodes[name].digests

    @invariant()
    def every_placed_check_may_run_where_it_is(self) -> None:
        state = self.state
        for digest, name in state.placement.items():
            assert state.configs[digest].matches(state.nodes[name].labels), digest

    @invariant()
    def new_placements_respect_cordons_selectors_and_warmup(self) -> None:
        state = self.state
        warming = state.warming_up(self.now)
        expired_now = set(self.events.removed_nodes)
        for decision in self.events.decisions:
            if decision.node is None:
                continue
            node = state.nodes.get(decision.node)
            if node is None:
                # Only a node expired in this same step can have gone; that such a node
                # receives orphans at all is pinned by the table test
                # test_nodes_expiring_together_never_receive_each_others_checks.
                assert isinstance(self.last_op, Expire), decision
                assert decision.node in expired_now, decision
                continue
            assert not node.cordoned, decision
            if decision.digest in state.configs:
                assert state.configs[decision.digest].matches(node.labels), decision
            if warming:
                # The dispatcher places nothing by itself while it warms up; an admin's
                # explicit drain or isolate still moves checks.
                assert decision.reason in {"adopted", "drained", "isolated"}, decision

    @invariant()
    def change_counters_only_grow(self) -> None:
        state = self.state
        assert state.change_sequence >= self.seen_seq
        removed = set(self.events.removed_nodes)
        for name, node in state.nodes.items():
            assert 0 < node.last_change <= state.change_sequence
            if name in self.seen_counters and name not in removed:
                assert node.last_change >= self.seen_counters[name], name
                if frozenset(node.digests) != self.seen_digests[name]:
                    assert node.last_change > self.seen_counters[name], name
            else:
                # A new node, or one that re-registered: never a value seen before.
                assert node.last_change > self.max_counter, name
        counters = [node.last_change for node in state.nodes.values()]
        assert len(set(counters)) == len(counters), "two nodes share a counter value"
        self.seen_seq = state.change_sequence
        self.seen_counters = {name: node.last_change for name, node in state.nodes.items()}
        self.seen_digests = {name: frozenset(node.digests) for name, node in state.nodes.items()}
        self.max_counter = max([self.max_counter, state.change_sequence, *counters])

    def teardown(self) -> None:
        replay = ClusterState(warmup_until=self.warmup_until)
        decisions: list[Decision] = []
        outcomes: list[object] = []
        for op in self.log:
            outcomes.append(apply(replay, op))
            decisions.extend(replay.take_events().decisions)
        assert outcomes == self.outcomes
        assert decisions == self.decisions
        assert snapshot(replay) == snapshot(self.state)


ClusterMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestClusterState = ClusterMachine.TestCase
