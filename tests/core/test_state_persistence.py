"""What a shared store keeps of the cluster state: deltas, snapshots and restores.

Table tests pin which records each kind of step changes (and that heartbeats, stats and
results change none). A hypothesis state machine runs random sequences of operations
on a tracking state and applies every ``take_delta()`` to a plain dict model, the way a
store would; after every step the model must equal ``state.snapshot()``. Now and then
the machine fails over: a state restored from the model must hold the same checks,
sources, placements and nodes, dangle exactly what was dangling, decide nothing and
owe the store nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dispatcher.core.model import (
    CheckConfig,
    CheckResult,
    CheckStats,
    Digest,
    NodeName,
    SourceName,
    make_config,
)
from dispatcher.core.snapshot import NodeRecord, Snapshot, StateDelta
from dispatcher.core.state import NEVER, ClusterState
from dispatcher.errors import RequestError
from tests.core.test_state_table import beat, check

WALL = 1e9
"""The wall time results arrive at in these tests: after every run's ``started_at``."""

K = TypeVar("K")
V = TypeVar("V")

S1, S2, S3 = SourceName("s1"), SourceName("s2"), SourceName("s3")
N1, N2, N3 = NodeName("n1"), NodeName("n2"), NodeName("n3")
TIMEOUT_S = 30.0

# ------------------------------------------------------------------- helpers

ConfigView = tuple[object, ...]


def config_view(config: CheckConfig) -> ConfigView:
    """Every field of a config (CheckConfig compares by identity, not by value)."""
    return (
        config.digest,
        config.name,
        config.instances,
        sorted(config.init_config.items()),
        config.interval_s,
        config.timeout_s,
        sorted(config.node_selector.items()),
        config.weight,
    )


def record_view(record: NodeRecord) -> tuple[object, ...]:
    return (sorted(record.labels.items()), record.capacity, record.cordoned)


@dataclass
class StoreModel:
    """A shared store as plain dicts: what applying every delta in order leaves."""

    configs: dict[Digest, ConfigView] = field(default_factory=dict)
    configs_raw: dict[Digest, CheckConfig] = field(default_factory=dict)
    sources: dict[SourceName, frozenset[Digest]] = field(default_factory=dict)
    placement: dict[Digest, NodeName] = field(default_factory=dict)
    nodes: dict[NodeName, NodeRecord] = field(default_factory=dict)

    def apply(self, delta: StateDelta) -> None:
        for digest, config in delta.configs.items():
            if config is None:
                self.configs.pop(digest, None)
                self.configs_raw.pop(digest, None)
            else:
                assert config.digest == digest, "a config is written under another digest"
                self.configs[digest] = config_view(config)
                self.configs_raw[digest] = config
        _apply(self.sources, delta.sources)
        _apply(self.placement, delta.placement)
        _apply(self.nodes, delta.nodes)

    def view(self) -> dict[str, object]:
        return {
            "configs": dict(self.configs),
            "sources": dict(self.sources),
            "placement": dict(self.placement),
            "nodes": {n: record_view(r) for n, r in self.nodes.items()},
        }

    def snapshot(self) -> Snapshot:
        return Snapshot(
            configs=dict(self.configs_raw),
            sources=dict(self.sources),
            placement=dict(self.placement),
            nodes=dict(self.nodes),
        )


def _apply(target: dict[K, V], changes: Mapping[K, V | None]) -> None:
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def snapshot_view(snapshot: Snapshot) -> dict[str, object]:
    return {
        "configs": {d: config_view(c) for d, c in snapshot.configs.items()},
        "sources": dict(snapshot.sources),
        "placement": dict(snapshot.placement),
        "nodes": {n: record_view(r) for n, r in snapshot.nodes.items()},
    }


def tracking(*names: NodeName, now: float = 0.0) -> ClusterState:
    """A tracking state with the given nodes registered, its first delta drained."""
    state = ClusterState(track_changes=True)
    for name in names:
        beat(state, name, now=now)
    state.take_delta()
    return state


# ----------------------------------------------------------- table: deltas


def test_a_state_that_does_not_track_owes_nothing() -> None:
    state = ClusterState()
    beat(state, N1, now=0.0)
    state.add_to_source(S1, [check("a")], now=0.0)
    delta = state.take_delta()
    assert not delta
    assert len(delta) == 0


def test_registration_and_a_new_check_write_the_node_the_config_the_source_and_the_placement() -> (
    None
):
    state = ClusterState(track_changes=True)
    beat(state, N1, now=0.0, labels={"zone": "a"}, capacity=4)
    a = check("a", weight=2.0)
    state.add_to_source(S1, [a], now=0.0)

    delta = state.take_delta()

    assert {d: config_view(c) for d, c in delta.configs.items() if c} == {a.digest: config_view(a)}
    assert set(delta.configs) == {a.digest}
    assert delta.sources == {S1: frozenset({a.digest})}
    assert delta.placement == {a.digest: N1}
    assert delta.nodes == {N1: NodeRecord(labels={"zone": "a"}, capacity=4, cordoned=False)}
    assert len(delta) == 4
    assert not state.take_delta(), "take_delta drains what it returns"


def test_heartbeats_stats_results_and_running_reports_of_placed_checks_change_no_record() -> None:
    state = tracking(N1)
    a = check("a")
    state.add_to_source(S1, [a], now=0.0)
    state.take_delta()

    beat(state, N1, now=5.0)
    beat(state, N1, now=6.0, labels={}, capacity=1)  # the same labels and capacity
    beat(
        state,
        N1,
        now=7.0,
        running=[a.digest],
        stats={a.digest: CheckStats(avg_execution_s=0.5, runs=3, errors=0)},
    )
    result = CheckResult(
        digest=a.digest, run_id="r1", ok=False, errors=("down",), started_at=7.0, duration_s=0.1
    )
    assert state.record_results(N1, [result], now_wall=WALL) == (1, [])
    state.dispatch_dangling(now=8.0)
    state.expire_nodes(now=9.0, timeout_s=TIMEOUT_S)

    assert not state.take_delta()


Checks = Mapping[str, CheckConfig]


@dataclass(frozen=True)
class DeltaCase:
    name: str
    sources: Mapping[SourceName, tuple[str, ...]]
    step: Callable[[ClusterState, Checks], object]
    configs: Mapping[str, bool]  # label -> written (True) or deleted (False)
    source_sets: Mapping[SourceName, tuple[str, ...] | None]
    placement: Mapping[str, NodeName | None]
    node_records: Mapping[NodeName, NodeRecord | None]


def resend_unchanged(state: ClusterState, c: Checks) -> None:
    state.replace_source(S1, [c["a"]], now=1.0)
    state.add_to_source(S1, [c["a"]], now=1.0)


def expire_n1(state: ClusterState, c: Checks) -> None:
    beat(state, N2, now=31.0)
    state.expire_nodes(now=31.0, timeout_s=TIMEOUT_S)


def cordon_twice_then_uncordon(state: ClusterState, c: Checks) -> None:
    state.cordon(N1)
    state.take_delta()
    state.cordon(N1)
    assert not state.take_delta(), "a second cordon changes nothing"
    state.uncordon(N1, now=1.0)


ZONE_A = {"zone": "a"}
ABC = {S1: ("a", "b", "c")}
DELTA_CASES = [
    # Setup: n1 and n2 in zone a; a (selector zone a) and c land on n1, b on n2.
    DeltaCase("remove_last_holder", ABC,
              lambda s, c: s.remove_check(c["a"].digest, source=S1, now=1.0),
              {"a": False}, {S1: ("b", "c")}, {"a": None}, {}),
    DeltaCase("remove_one_holder", {S1: ("a", "b", "c"), S2: ("a",)},
              lambda s, c: s.remove_check(c["a"].digest, source=S1, now=1.0),
              {}, {S1: ("b", "c")}, {}, {}),
    DeltaCase("remove_everywhere", {S1: ("a", "b", "c"), S2: ("a",)},
              lambda s, c: s.remove_check(c["a"].digest, source=None, now=1.0),
              {"a": False}, {S1: ("b", "c"), S2: None}, {"a": None}, {}),
    DeltaCase("replace_keeps_one", ABC, lambda s, c: s.replace_source(S1, [c["b"]], now=1.0),
              {"a": False, "c": False}, {S1: ("b",)}, {"a": None, "c": None}, {}),
    DeltaCase("replace_by_nothing", ABC, lambda s, c: s.replace_source(S1, [], now=1.0),
              {"a": False, "b": False, "c": False}, {S1: None},
              {"a": None, "b": None, "c": None}, {}),
    DeltaCase("move_between_sources", {S1: ("a",), S2: ("b",)},
              lambda s, c: s.replace_sources({S1: [], S2: [c["a"], c["b"]]}, now=1.0),
              {}, {S1: None, S2: ("a", "b")}, {}, {}),
    DeltaCase("weight_change", ABC,
              lambda s, c: s.add_to_source(S1, [check("a", selector=ZONE_A, weight=3.0)], now=1.0),
              {"a": True}, {}, {}, {}),
    DeltaCase("same_again", {S1: ("a",)}, resend_unchanged, {}, {}, {}, {}),
    DeltaCase("leave", ABC, lambda s, c: beat(s, N1, now=1.0, leaving=True),
              {}, {}, {"a": N2, "c": N2}, {N1: None}),
    DeltaCase("expire", ABC, expire_n1, {}, {}, {"a": N2, "c": N2}, {N1: None}),
    DeltaCase("capacity", ABC, lambda s, c: beat(s, N1, now=1.0, capacity=8), {}, {}, {},
              {N1: NodeRecord(labels=ZONE_A, capacity=8, cordoned=False)}),
    DeltaCase("relabel", ABC, lambda s, c: beat(s, N1, now=1.0, labels={"zone": "b"}),
              {}, {}, {"a": N2}, {N1: NodeRecord(labels={"zone": "b"}, capacity=1,
                                                  cordoned=False)}),
    DeltaCase("cordon", ABC, lambda s, c: s.cordon(N1), {}, {}, {},
              {N1: NodeRecord(labels=ZONE_A, capacity=1, cordoned=True)}),
    DeltaCase("uncordon", ABC, cordon_twice_then_uncordon, {}, {}, {},
              {N1: NodeRecord(labels=ZONE_A, capacity=1, cordoned=False)}),
    DeltaCase("drain", ABC, lambda s, c: s.drain(N1, now=1.0), {}, {},
              {"a": N2, "c": N2}, {N1: NodeRecord(labels=ZONE_A, capacity=1, cordoned=True)}),
    DeltaCase("isolate", ABC, lambda s, c: s.isolate(c["a"].digest, now=1.0), {}, {},
              {"c": N2}, {N1: NodeRecord(labels=ZONE_A, capacity=1, cordoned=True)}),
]  # fmt: skip


@pytest.mark.parametrize("case", DELTA_CASES, ids=lambda c: c.name)
def test_each_step_writes_exactly_the_records_it_changed(case: DeltaCase) -> None:
    by_label = {"a": check("a", selector=ZONE_A), "b": check("b"), "c": check("c")}
    state = ClusterState(track_changes=True)
    for name in (N1, N2):
        beat(state, name, now=0.0, labels=ZONE_A)
    for source, labels in case.sources.items():
        state.add_to_source(source, [by_label[label] for label in labels], now=0.0)
    placed = {label: state.placement.get(c.digest) for label, c in by_label.items()}
    if "a" in case.sources.get(S1, ()):
        assert placed["a"] == N1, "the setup puts a on n1"
    model = StoreModel()
    model.apply(state.take_delta())

    case.step(state, by_label)
    delta = state.take_delta()

    assert {
        label: config is not None
        for label, c in by_label.items()
        if (config := delta.configs.get(c.digest, "absent")) != "absent"
    } == dict(case.configs)
    if case.configs.get("a"):
        written = delta.configs[by_label["a"].digest]
        assert written is not None
        assert written.weight == 3.0
    assert delta.sources == {
        s: None if labels is None else frozenset(by_label[label].digest for label in labels)
        for s, labels in case.source_sets.items()
    }
    assert delta.placement == {by_label[label].digest: n for label, n in case.placement.items()}
    assert delta.nodes == dict(case.node_records)
    model.apply(delta)
    assert model.view() == snapshot_view(state.snapshot())


def test_a_reported_check_adopted_from_dangling_writes_its_placement() -> None:
    state = ClusterState(track_changes=True, warmup_until=30.0)
    beat(state, N1, now=0.0)
    a = check("a")
    state.add_to_source(S1, [a], now=0.0)
    assert a.digest in state.dangling, "nothing is placed by itself while warming up"
    state.take_delta()

    beat(state, N1, now=1.0, running=[a.digest])

    assert state.take_delta().placement == {a.digest: N1}


# ---------------------------------------------------------- table: restore


def populated(now: float = 0.0) -> ClusterState:
    """Three nodes (one cordoned, one labelled), two sources, placed and dangling checks."""
    state = ClusterState(track_changes=True)
    beat(state, N1, now=now, labels={"zone": "a"}, capacity=2)
    beat(state, N2, now=now + 1, labels={"zone": "b"})
    beat(state, N3, now=now + 2)
    state.cordon(N3)
    state.replace_source(S1, [check(f"c{i}") for i in range(5)], now=now + 3)
    state.add_to_source(S2, [check("c0"), check("z", selector={"zone": "z"})], now=now + 3)
    state.add_to_source(S2, [check("heavy", weight=4.0, selector={"zone": "b"})], now=now + 3)
    return state


def test_restore_reproduces_the_snapshot_dangles_only_what_dangled_and_decides_nothing() -> None:
    old = populated()
    dangling = set(old.dangling)
    assert dangling == {check("z", selector={"zone": "z"}).digest}
    snapshot = old.snapshot()

    new = ClusterState.restore(snapshot, now=500.0)

    assert snapshot_view(new.snapshot()) == snapshot_view(snapshot)
    assert dict(new.placement) == dict(old.placement)
    assert {s: {d.digest for d in new.source_configs(s)} for s in (S1, S2)} == {
        s: {d.digest for d in old.source_configs(s)} for s in (S1, S2)
    }
    assert set(new.dangling) == dangling
    assert new.take_events().decisions == []
    assert not new.take_delta(), "a consistent snapshot owes the store nothing"
    assert new.nodes[N3].cordoned
    assert new.nodes[N1].capacity == 2
    for name, node in new.nodes.items():
        assert node.digests == old.nodes[name].digests
    assert new.warming_up(500.0) is False
    assert "loaded from the shared store" in new.explain(check("c1").digest, now=500.0)


def test_restore_keeps_loads_so_the_next_check_goes_where_the_old_leader_would_put_it() -> None:
    old = populated()
    new = ClusterState.restore(old.snapshot(), now=500.0)
    extra = check("extra")
    old.add_to_source(S1, [extra], now=10.0)
    new.add_to_source(S1, [extra], now=501.0)
    assert new.placement[extra.digest] == old.placement[extra.digest]


def test_restore_restarts_every_heartbeat_at_now() -> None:
    old = populated()
    old_nodes = set(old.nodes)
    # Long after the old leader last heard from them: every node would be expired.
    assert set(populated().expire_nodes(now=1000.0, timeout_s=TIMEOUT_S)) == old_nodes

    new = ClusterState.restore(old.snapshot(), now=1000.0)
    assert new.expire_nodes(now=1000.0 + TIMEOUT_S, timeout_s=TIMEOUT_S) == []
    assert set(new.nodes) == old_nodes
    beat(new, N1, now=1000.0 + TIMEOUT_S)  # n1 is heard from; the others stay silent
    expired = new.expire_nodes(now=1000.0 + TIMEOUT_S + 0.001, timeout_s=TIMEOUT_S)
    assert sorted(expired) == [N2, N3]
    assert set(new.nodes) == {N1}
    assert all(name == N1 for name in new.placement.values())


def test_restore_counters_are_fresh_and_distinct() -> None:
    new = ClusterState.restore(populated().snapshot(), now=10.0)
    counters = [node.last_change for node in new.nodes.values()]
    assert len(set(counters)) == len(counters)
    assert all(0 < c <= new.change_sequence for c in counters)
    assert beat(new, N1, now=11.0, last_change=new.nodes[N1].last_change) is True


def test_restore_of_an_empty_snapshot_is_an_empty_state_that_is_not_warming_up() -> None:
    new = ClusterState.restore(Snapshot(), now=5.0)
    assert snapshot_view(new.snapshot()) == snapshot_view(Snapshot())
    assert not new.take_delta()
    assert not new.warming_up(5.0)
    beat(new, N1, now=5.0)
    new.add_to_source(S1, [check("a")], now=5.0)
    assert new.placement == {check("a").digest: N1}


def test_restore_drops_inconsistent_records_and_owes_the_store_exactly_their_deletion() -> None:
    a, b, c, orphan = check("a"), check("b"), check("c"), check("orphan")
    ghost, ghost2 = Digest("f" * 32), Digest("e" * 32)
    gone = NodeName("gone")
    snapshot = Snapshot(
        configs={a.digest: a, b.digest: b, c.digest: c, orphan.digest: orphan},
        sources={
            S1: frozenset({a.digest, ghost}),  # names a digest with no config
            S2: frozenset({ghost2}),  # names nothing that exists
            S3: frozenset({b.digest, c.digest}),
        },
        placement={
            a.digest: N1,
            b.digest: gone,  # on a node the store does not know
            orphan.digest: N1,  # a config no source holds
            ghost: N1,  # a placement of no config at all
        },
        nodes={N1: NodeRecord(labels={}, capacity=1, cordoned=False)},
    )

    state = ClusterState.restore(snapshot, now=100.0)
    delta = state.take_delta()

    assert delta.configs == {orphan.digest: None}
    assert delta.sources == {S1: frozenset({a.digest}), S2: None}
    assert delta.placement == {b.digest: None, orphan.digest: None, ghost: None}
    assert delta.nodes == {}
    assert state.take_events().decisions == []
    assert dict(state.placement) == {a.digest: N1}
    assert set(state.dangling) == {b.digest, c.digest}
    assert set(state.configs) == {a.digest, b.digest, c.digest}
    assert state.sources_of(a.digest) == [S1]
    assert state.source_names() == [S1, S3]

    model = StoreModel()
    model.apply(StateDelta(
        configs=dict(snapshot.configs),
        sources=dict(snapshot.sources),
        placement=dict(snapshot.placement),
        nodes=dict(snapshot.nodes),
    ))  # fmt: skip
    model.apply(delta)
    assert model.view() == snapshot_view(state.snapshot()), "the fix-ups make the store consistent"

    assert not state.take_delta()
    assert state.dispatch_dangling(now=100.0) == 2
    assert state.take_delta().placement == {b.digest: N1, c.digest: N1}


# ----------------------------------------------------------- the property

NODES = [N1, N2, N3]
SOURCES = [S1, S2]
LABEL_SETS: list[dict[str, str]] = [{}, {"zone": "a"}, {"zone": "b"}, {"zone": "a", "disk": "ssd"}]
SELECTORS: list[dict[str, str]] = [{}, {}, {"zone": "a"}, {"zone": "b"}, {"disk": "ssd"}]
WEIGHTS = [0.5, 1.0, 2.0]


def catalog(check_id: int, selector: int, weight: float = 1.0) -> CheckConfig:
    return make_config(
        name="tcp",
        instances=[{"host": f"svc-{check_id}", "port": 80 + check_id}],
        node_selector=SELECTORS[selector],
        weight=weight,
    )


CATALOG = sorted({catalog(i, s).digest for i in range(4) for s in range(len(SELECTORS))})
specs = st.tuples(
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=0, max_value=len(SELECTORS) - 1),
    st.sampled_from(WEIGHTS),
)


class PersistenceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = ClusterState(track_changes=True)
        self.model = StoreModel()
        self.now = 0.0
        self.failovers = 0

    @initialize(warmup_s=st.sampled_from([None, None, 20.0]))
    def start(self, warmup_s: float | None) -> None:
        warmup_until = NEVER if warmup_s is None else warmup_s
        self.state = ClusterState(track_changes=True, warmup_until=warmup_until)

    def do(self, step: Callable[[ClusterState], object]) -> object:
        """Runs one step; a domain error is an outcome like any other (and may still
        have changed records, which the next delta must carry)."""
        try:
            return step(self.state)
        except RequestError as exc:
            return exc
        finally:
            self.model.apply(self.state.take_delta())

    # ---------------------------------------------------------------- rules

    @rule(seconds=st.sampled_from([0.5, 5.0, 12.0, 31.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(
        node=st.sampled_from(NODES),
        labels=st.none() | st.sampled_from(LABEL_SETS),
        capacity=st.none() | st.integers(min_value=1, max_value=3),
        running=st.none() | st.lists(st.sampled_from(CATALOG), max_size=3, unique=True),
        avg_s=st.none() | st.sampled_from([0.1, 2.0]),
    )
    def heartbeat(
        self,
        node: NodeName,
        labels: dict[str, str] | None,
        capacity: int | None,
        running: list[Digest] | None,
        avg_s: float | None,
    ) -> None:
        known = self.state.nodes.get(node)
        quiet = (
            known is not None
            and (labels is None or labels == known.labels)
            and (capacity is None or capacity == known.capacity)
            and running is None
        )
        stats = None
        if avg_s is not None and known is not None:
            stats = {d: CheckStats(avg_execution_s=avg_s, runs=2, errors=0) for d in known.digests}
        before = snapshot_view(self.state.snapshot())
        now = self.now
        self.do(
            lambda s: s.node_status(
                node,
                now=now,
                last_change=-1,
                labels=labels,
                capacity=capacity,
                running=running,
                stats=stats,
            )
        )
        if quiet:
            assert snapshot_view(self.state.snapshot()) == before, "a bare heartbeat is persisted"

    @rule(node=st.sampled_from(NODES))
    def leave(self, node: NodeName) -> None:
        now = self.now
        self.do(lambda s: s.node_status(node, now=now, last_change=-1, leaving=True))

    @rule(source=st.sampled_from(SOURCES), items=st.lists(specs, max_size=4))
    def replace_source(self, source: SourceName, items: list[tuple[int, int, float]]) -> None:
        configs, now = [catalog(*i) for i in items], self.now
        self.do(lambda s: s.replace_source(source, configs, now=now))

    @rule(first=st.lists(specs, max_size=3), second=st.lists(specs, max_size=3))
    def replace_both(
        self, first: list[tuple[int, int, float]], second: list[tuple[int, int, float]]
    ) -> None:
        sets = {S1: [catalog(*i) for i in first], S2: [catalog(*i) for i in second]}
        now = self.now
        self.do(lambda s: s.replace_sources(sets, now=now))

    @rule(source=st.sampled_from(SOURCES), items=st.lists(specs, min_size=1, max_size=3))
    def add_to_source(self, source: SourceName, items: list[tuple[int, int, float]]) -> None:
        configs, now = [catalog(*i) for i in items], self.now
        self.do(lambda s: s.add_to_source(source, configs, now=now))

    @rule(pick=st.integers(0, 100), everywhere=st.booleans())
    def remove_check(self, pick: int, everywhere: bool) -> None:
        held = sorted((s, d) for s in SOURCES for d in self.model.sources.get(s, ()))
        source, digest = held[pick % len(held)] if held else (S1, CATALOG[pick % len(CATALOG)])
        which, now = None if everywhere else source, self.now
        self.do(lambda s: s.remove_check(digest, source=which, now=now))

    @rule(node=st.sampled_from(NODES))
    def cordon(self, node: NodeName) -> None:
        self.do(lambda s: s.cordon(node))

    @rule(node=st.sampled_from(NODES))
    def uncordon(self, node: NodeName) -> None:
        now = self.now
        self.do(lambda s: s.uncordon(node, now=now))

    @rule(node=st.sampled_from(NODES))
    def drain(self, node: NodeName) -> None:
        now = self.now
        self.do(lambda s: s.drain(node, now=now))

    @rule(pick=st.integers(0, 100))
    def isolate(self, pick: int) -> None:
        placed = sorted(self.state.placement) or CATALOG
        digest, now = placed[pick % len(placed)], self.now
        self.do(lambda s: s.isolate(digest, now=now))

    @rule(timeout_s=st.sampled_from([10.0, TIMEOUT_S]))
    def expire_nodes(self, timeout_s: float) -> None:
        now = self.now
        self.do(lambda s: s.expire_nodes(now=now, timeout_s=timeout_s))

    @rule()
    def dispatch_dangling(self) -> None:
        now = self.now
        self.do(lambda s: s.dispatch_dangling(now=now))

    @rule()
    def fail_over(self) -> None:
        """A new leader loads what the store holds (the model) and carries on."""
        old = self.state
        new = ClusterState.restore(self.model.snapshot(), now=self.now)
        assert not new.take_delta(), "the store held records that do not fit together"
        assert new.take_events().decisions == []
        assert snapshot_view(new.snapshot()) == snapshot_view(old.snapshot())
        assert dict(new.placement) == dict(old.placement)
        assert set(new.dangling) == set(old.dangling)
        for name, node in new.nodes.items():
            assert node.digests == old.nodes[name].digests, name
            assert node.heartbeat_at == self.now
        assert not new.warming_up(self.now)
        self.state = new
        self.failovers += 1

    # ----------------------------------------------------------- invariants

    @invariant()
    def the_store_holds_what_the_state_would_persist(self) -> None:
        assert self.model.view() == snapshot_view(self.state.snapshot())

    @invariant()
    def what_is_persisted_fits_together(self) -> None:
        snap = self.state.snapshot()
        held = set().union(*snap.sources.values()) if snap.sources else set()
        assert held == set(snap.configs)
        assert all(digests for digests in snap.sources.values()), "an empty source is kept"
        assert set(snap.placement) <= set(snap.configs)
        assert set(snap.placement.values()) <= set(snap.nodes)


PersistenceMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=35,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPersistence = PersistenceMachine.TestCase
