"""Table tests of the cluster state: placement, expiry, admin steering, sources, results.

Most scenarios are a list of steps run against a fresh ``ClusterState``; ``Expect`` steps
assert the whole placement at that point (every held check and where it is, ``None`` for
dangling), and optionally a phrase of a check's ``explain`` sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from dispatcher.core.model import (
    CheckConfig,
    CheckResult,
    CheckStats,
    Digest,
    NodeName,
    SourceName,
    make_config,
)
from dispatcher.core.outcomes import Move, RejectedResult
from dispatcher.core.state import ClusterState
from dispatcher.errors import NoOtherNode, NotDispatched, UnknownCheck, UnknownNode

WALL = 1e9
"""The wall time results arrive at in these tests: after every run's ``started_at``."""

API = SourceName("api")

# ------------------------------------------------------------------- helpers


def check(
    label: str, *, selector: Mapping[str, str] | None = None, weight: float = 1.0
) -> CheckConfig:
    """A distinct check per label; the same label and selector give the same digest."""
    return make_config(
        name="http",
        instances=[{"url": f"http://{label}/healthz"}],
        node_selector=selector,
        weight=weight,
    )


def beat(
    state: ClusterState,
    name: str,
    *,
    now: float,
    last_change: int = -1,
    labels: Mapping[str, str] | None = None,
    capacity: int | None = None,
    running: Sequence[Digest] | None = None,
    stats: Mapping[Digest, CheckStats] | None = None,
    leaving: bool = False,
) -> bool:
    return state.node_status(
        NodeName(name),
        now=now,
        last_change=last_change,
        labels=labels,
        capacity=capacity,
        running=running,
        stats=stats,
        leaving=leaving,
    )


def add(state: ClusterState, *configs: CheckConfig, now: float, source: str = "api") -> None:
    state.add_to_source(SourceName(source), list(configs), now=now)


def node_of(state: ClusterState, config: CheckConfig) -> str | None:
    return state.placement.get(config.digest)


def counts(state: ClusterState) -> dict[str, int]:
    return {name: len(node.digests) for name, node in state.nodes.items()}


def result(
    config: CheckConfig, *, ok: bool, started_at: float, duration_s: float = 0.5
) -> CheckResult:
    return CheckResult(
        digest=config.digest,
        run_id=f"run-{started_at}",
        ok=ok,
        errors=() if ok else ("GET http://x/healthz: 503",),
        started_at=started_at,
        duration_s=duration_s,
    )


# -------------------------------------------------------------- scenario steps


@dataclass(frozen=True)
class Beat:
    """A heartbeat (registers a new node)."""

    node: str
    at: float = 0.0
    labels: Mapping[str, str] | None = None
    capacity: int | None = None
    leaving: bool = False


@dataclass(frozen=True)
class Add:
    check: str
    at: float = 0.0
    selector: Mapping[str, str] | None = None
    weight: float = 1.0
    source: str = "api"


@dataclass(frozen=True)
class Remove:
    check: str
    at: float = 0.0
    source: str | None = "api"


@dataclass(frozen=True)
class Expire:
    at: float
    timeout_s: float = 30.0
    expired: Sequence[str] = ()


@dataclass(frozen=True)
class Tick:
    at: float


@dataclass(frozen=True)
class Cordon:
    node: str


@dataclass(frozen=True)
class Uncordon:
    node: str
    at: float = 0.0


@dataclass(frozen=True)
class Drain:
    node: str
    at: float = 0.0
    moved: Sequence[str] = ()


@dataclass(frozen=True)
class Expect:
    placement: Mapping[str, str | None]
    explain: Mapping[str, str] = field(default_factory=dict)
    at: float = 0.0


Step = Beat | Add | Remove | Expire | Tick | Cordon | Uncordon | Drain | Expect


def run(steps: Sequence[Step]) -> ClusterState:
    state = ClusterState()
    configs: dict[str, CheckConfig] = {}
    for number, step in enumerate(steps):
        where = f"step {number}: {step}"
        if isinstance(step, Expect):
            assert_expected(state, configs, step, where)
        else:
            apply_step(state, configs, step, where)
    return state


def apply_step(
    state: ClusterState, configs: dict[str, CheckConfig], step: Step, where: str
) -> None:
    match step:
        case Beat():
            beat(
                state,
                step.node,
                now=step.at,
                labels=step.labels,
                capacity=step.capacity,
                leaving=step.leaving,
            )
        case Add():
            configs[step.check] = check(step.check, selector=step.selector, weight=step.weight)
            add(state, configs[step.check], now=step.at, source=step.source)
        case Remove():
            state.remove_check(
                configs[step.check].digest,
                source=SourceName(step.source) if step.source is not None else None,
                now=step.at,
            )
        case Expire():
            expired = state.expire_nodes(now=step.at, timeout_s=step.timeout_s)
            assert expired == list(step.expired), where
        case Tick():
            state.dispatch_dangling(now=step.at)
        case Cordon():
            state.cordon(NodeName(step.node))
        case Uncordon():
            state.uncordon(NodeName(step.node), now=step.at)
        case Drain():
            moves = state.drain(NodeName(step.node), now=step.at)
            by_digest = {c.digest: label for label, c in configs.items()}
            assert sorted(by_digest[m.digest] for m in moves) == sorted(step.moved), where


def assert_expected(
    state: ClusterState, configs: Mapping[str, CheckConfig], step: Expect, where: str
) -> None:
    held = {label for label, c in configs.items() if c.digest in state.configs}
    assert held == set(step.placement), where
    for label, expected in step.placement.items():
        digest = configs[label].digest
        assert state.placement.get(digest) == expected, f"{where}: {label}"
        assert (digest in state.dangling) is (expected is None), f"{where}: {label}"
        if expected is not None:
            assert digest in state.nodes[NodeName(expected)].digests, where
    for label, phrase in step.explain.items():
        sentence = state.explain(configs[label].digest, now=step.at)
        assert phrase in sentence, f"{where}: {sentence!r}"


FOUR = [Add("c1"), Add("c2"), Add("c3"), Add("c4")]
TWO_NODES = [Beat("a"), Beat("b")]
SPREAD = {"c1": "a", "c2": "b", "c3": "a", "c4": "b"}

SCENARIOS = [
    # ------------------------------------------------ the scenarios
    pytest.param([*TWO_NODES, *FOUR, Expect(SPREAD)], id="four-checks-over-two-nodes-two-each"),
    pytest.param(
        # c4 sits on b, which loses the name tie-break: it comes back to b only because
        # b is the least loaded once c4 has left it.
        [
            *TWO_NODES,
            *FOUR,
            Remove("c4"),
            Expect({"c1": "a", "c2": "b", "c3": "a"}),
            Add("c4"),
            Expect(SPREAD),
        ],
        id="removed-and-readded-check-stays-on-its-node-b",
    ),
    pytest.param(
        [
            *TWO_NODES,
            *FOUR,
            Remove("c3"),
            Expect({"c1": "a", "c2": "b", "c4": "b"}),
            Add("c3"),
            Expect(SPREAD),
        ],
        id="removed-and-readded-check-stays-on-its-node-a",
    ),
    pytest.param(
        [
            *TWO_NODES,
            *FOUR,
            Beat("c"),
            Expect(SPREAD),  # registering moves nothing
            Add("c5"),
            Add("c6"),
            Add("c7"),
            Expect({**SPREAD, "c5": "c", "c6": "c", "c7": "a"}),
        ],
        id="new-empty-node-gets-the-next-check",
    ),
    pytest.param(
        [
            Beat("b", at=0.0),
            Beat("a", at=10.0),
            Add("c1", at=10.0),
            Add("c2", at=10.0),
            Add("c3", at=10.0),
            Add("c4", at=10.0),
            Expect(SPREAD),
            # a was last seen 25 s ago, b 35 s ago: only b expires, and its checks are
            # re-dispatched to a in the same step, with no tick.
            Expire(at=35.0, timeout_s=30.0, expired=["b"]),
            Expect(
                {"c1": "a", "c2": "a", "c3": "a", "c4": "a"},
                explain={"c2": "previous node expired", "c1": "when the check arrived"},
                at=35.0,
            ),
        ],
        id="expiry-25s-stays-35s-goes-and-its-checks-move",
    ),
    pytest.param(
        [
            Add("c1", at=0.0),
            Add("c2", at=0.0),
            Expect({"c1": None, "c2": None}, explain={"c1": "no node agent is registered"}),
            Beat("a", at=1.0),
            Expect(
                {"c1": None, "c2": None},
                explain={"c1": "waiting for the next dispatch tick"},
                at=1.0,
            ),
            Tick(at=2.0),
            Expect({"c1": "a", "c2": "a"}, explain={"c1": "dispatched from dangling"}, at=2.0),
            Beat("b", at=3.0),
            Tick(at=4.0),
            Expect({"c1": "a", "c2": "a"}),
        ],
        id="dangling-checks-go-to-the-first-node-that-registers",
    ),
    pytest.param(
        [
            Beat("a", labels={"zone": "eu"}),
            Add("c1", selector={"zone": "us"}),
            Expect(
                {"c1": None},
                explain={"c1": "no registered node has labels matching the selector"},
            ),
            Tick(at=1.0),
            Expect({"c1": None}, explain={"c1": "selector zone=us."}),
            Beat("b", at=2.0, labels={"zone": "us"}),
            Tick(at=2.0),
            Expect({"c1": "b"}),
        ],
        id="selector-with-no-matching-node-dangles-and-explains",
    ),
    # ------------------------------------------------------------- cordon
    pytest.param(
        [
            *TWO_NODES,
            Add("c1"),
            Cordon("a"),
            Add("c2"),
            Add("c3"),
            Add("c4"),
            Expect({"c1": "a", "c2": "b", "c3": "b", "c4": "b"}),
        ],
        id="cordon-stops-new-placements-but-keeps-checks",
    ),
    pytest.param(
        [
            Beat("a"),
            Cordon("a"),
            Add("c1"),
            Tick(at=1.0),
            Expect({"c1": None}, explain={"c1": "every node matching its selector is cordoned"}),
            Uncordon("a", at=2.0),
            Expect({"c1": "a"}),
        ],
        id="uncordon-places-dangling-checks-at-once",
    ),
    pytest.param(
        [Beat("a"), Cordon("a"), Beat("a", at=1.0), Add("c1", at=1.0), Expect({"c1": None})],
        id="heartbeat-does-not-uncordon",
    ),
    # -------------------------------------------------------------- drain
    pytest.param(
        [
            *TWO_NODES,
            *FOUR,
            Drain("a", moved=["c1", "c3"]),
            Expect({"c1": "b", "c2": "b", "c3": "b", "c4": "b"}, explain={"c1": "drained"}),
            Add("c5"),
            Expect({"c1": "b", "c2": "b", "c3": "b", "c4": "b", "c5": "b"}),
        ],
        id="drain-moves-checks-away-and-cordons",
    ),
    pytest.param(
        [
            Beat("a", labels={"disk": "ssd"}),
            Beat("b"),
            Add("c1", selector={"disk": "ssd"}),
            Add("c2"),
            Add("c3"),
            Expect({"c1": "a", "c2": "b", "c3": "a"}),
            Drain("a", moved=["c3"]),
            Expect({"c1": "a", "c2": "b", "c3": "b"}),
        ],
        id="drain-leaves-a-check-no-other-node-may-run",
    ),
    pytest.param(
        [
            Beat("a"),
            Beat("b"),
            Beat("c"),
            *FOUR,
            Expect({"c1": "a", "c2": "b", "c3": "c", "c4": "a"}),
            Drain("a", moved=["c1", "c4"]),
            Expect({"c1": "b", "c2": "b", "c3": "c", "c4": "c"}),
        ],
        id="drain-spreads-by-load",
    ),
    # ---------------------------------------------------- leaving and labels
    pytest.param(
        [
            *TWO_NODES,
            *FOUR,
            Beat("a", at=1.0, leaving=True),
            Expect({"c1": "b", "c2": "b", "c3": "b", "c4": "b"}, explain={"c1": "left"}),
        ],
        id="leaving-node-checks-are-redispatched-at-once",
    ),
    pytest.param(
        [
            Beat("a"),
            Add("c1"),
            Beat("a", at=1.0, leaving=True),
            Expect({"c1": None}),
            Beat("b", at=2.0),
            Tick(at=3.0),
            Expect({"c1": "b"}),
        ],
        id="leaving-last-node-dangles-its-checks",
    ),
    pytest.param(
        [
            Beat("a", labels={"zone": "eu"}),
            Beat("b", labels={"zone": "eu"}),
            Add("c1", selector={"zone": "eu"}),
            Add("c2"),
            Expect({"c1": "a", "c2": "b"}),
            Beat("a", at=1.0, labels={"zone": "us"}),
            Expect({"c1": "b", "c2": "b"}, explain={"c1": "labels stopped matching"}),
        ],
        id="label-change-that-unmatches-moves-the-check",
    ),
    pytest.param(
        [
            Beat("a", labels={"zone": "eu"}),
            Add("c1", selector={"zone": "eu"}),
            Beat("a", at=1.0, labels={"zone": "us"}),
            Expect({"c1": None}),
            Tick(at=1.5),  # nothing to place yet
            Expect({"c1": None}),
            Beat("a", at=2.0, labels={"zone": "eu"}),
            Tick(at=3.0),
            Expect({"c1": "a"}),
        ],
        id="label-change-back-places-the-dangling-check",
    ),
    pytest.param(
        [
            Beat("a", labels={"zone": "eu"}),
            Add("c1", selector={"zone": "eu"}),
            Beat("a", at=1.0),  # labels absent: kept
            Expect({"c1": "a"}),
        ],
        id="absent-labels-are-kept",
    ),
    # ----------------------------------------------------- costs and capacity
    pytest.param(
        [
            *TWO_NODES,
            Add("c1", weight=3.0),
            Add("c2"),
            Add("c3"),
            Add("c4"),
            Add("c5"),
            Expect({"c1": "a", "c2": "b", "c3": "b", "c4": "b", "c5": "a"}),
        ],
        id="unmeasured-checks-cost-their-weight",
    ),
    pytest.param(
        [
            Beat("a", capacity=1),
            Beat("b", capacity=4),
            Add("c1"),
            Add("c2"),
            Add("c3"),
            Add("c4"),
            Add("c5"),
            Expect({"c1": "a", "c2": "b", "c3": "b", "c4": "b", "c5": "b"}),
            Add("c6"),  # both at relative load 1: the name breaks the tie
            Expect({"c1": "a", "c2": "b", "c3": "b", "c4": "b", "c5": "b", "c6": "a"}),
        ],
        id="placement-is-relative-to-capacity",
    ),
    pytest.param(
        [
            Beat("a", capacity=1),
            Beat("b", capacity=1),
            *FOUR,
            Beat("b", at=1.0, capacity=3),
            Add("c5", at=1.0),
            Add("c6", at=1.0),
            Add("c7", at=1.0),
            Expect({**SPREAD, "c5": "b", "c6": "b", "c7": "b"}),
        ],
        id="capacity-change-re-ranks-the-node",
    ),
    # ------------------------------------------------------------- sources
    pytest.param(
        [
            Beat("a"),
            Add("c1", source="s1"),
            Add("c1", source="s2"),
            Remove("c1", source="s1"),
            Expect({"c1": "a"}),
            Remove("c1", source="s2"),
            Expect({}),
        ],
        id="check-stays-while-one-source-holds-it",
    ),
    pytest.param(
        [
            Beat("a"),
            Add("c1", source="s1"),
            Add("c1", source="s2"),
            Remove("c1", source=None),
            Expect({}),
        ],
        id="remove-from-every-source",
    ),
]


@pytest.mark.parametrize("steps", SCENARIOS)
def test_scenario(steps: Sequence[Step]) -> None:
    run(steps)


# ---------------------------------------------------------------- expiry


def test_expired_node_checks_dangle_when_no_survivor_may_run_them() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0, labels={"zone": "eu"})
    beat(state, "b", now=10.0, labels={"zone": "us"})
    eu = check("eu", selector={"zone": "eu"})
    add(state, eu, now=10.0)
    state.take_events()

    assert state.expire_nodes(now=35.0, timeout_s=30.0) == [NodeName("a")]

    assert eu.digest in state.dangling
    assert "a" not in state.nodes
    events = state.take_events()
    assert [(d.digest, d.node, d.previous, d.reason) for d in events.decisions] == [
        (eu.digest, None, "a", "node_expired")
    ]
    assert events.removed_nodes == ["a"]


def test_heartbeat_exactly_at_the_timeout_is_not_expired() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    assert state.expire_nodes(now=30.0, timeout_s=30.0) == []
    assert state.expire_nodes(now=30.001, timeout_s=30.0) == [NodeName("a")]


def test_a_heartbeat_resets_the_expiry_clock() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    beat(state, "a", now=20.0, last_change=-1)
    assert state.expire_nodes(now=40.0, timeout_s=30.0) == [NodeName("b")]
    assert set(state.nodes) == {"a"}


def test_nodes_expiring_together_never_receive_each_others_checks() -> None:
    """Orphans of an expired node go to live nodes only, with one decision each.

    a and b both expire in one step; b is emptier than c, so a's checks must not pass
    through b (a dispatch to a dying node, logged and counted, and a wrong ``previous``).
    """
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=5.0)
    beat(state, "c", now=40.0)
    first, second, third = check("x1"), check("x2"), check("x3")
    add(state, first, second, now=40.0)  # x1 -> a, x2 -> b (c registered last, empty)
    state.cordon(NodeName("c"))
    add(state, third, now=40.0)
    state.uncordon(NodeName("c"), now=40.0)
    assert {node_of(state, c) for c in (first, second, third)} == {"a", "b"}
    on_a = [c.digest for c in (first, second, third) if node_of(state, c) == "a"]
    state.take_events()

    assert state.expire_nodes(now=45.0, timeout_s=30.0) == [NodeName("a"), NodeName("b")]

    assert set(state.placement.values()) == {"c"}
    decisions = state.take_events().decisions
    assert [d.node for d in decisions] == ["c"] * 3, decisions
    assert {d.previous for d in decisions if d.digest in on_a} == {"a"}, decisions


# ---------------------------------------------------------------- isolate


def isolated_setup() -> tuple[ClusterState, list[CheckConfig]]:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    configs = [check(f"c{i}") for i in range(1, 5)]
    add(state, *configs, now=0.0)
    assert [node_of(state, c) for c in configs] == ["a", "b", "a", "b"]
    return state, configs


def test_isolate_keeps_the_check_cordons_and_moves_the_others() -> None:
    state, (c1, c2, c3, c4) = isolated_setup()

    node, moves = state.isolate(c1.digest, now=1.0)

    assert node == "a"
    assert moves == [Move(c3.digest, "http", 1.0, NodeName("a"), NodeName("b"))]
    assert state.nodes[NodeName("a")].cordoned
    assert state.nodes[NodeName("a")].digests == {c1.digest}
    assert {node_of(state, c) for c in (c2, c3, c4)} == {"b"}
    c5 = check("c5")
    add(state, c5, now=1.0)
    assert node_of(state, c5) == "b"
    state.uncordon(NodeName("a"), now=2.0)
    assert not state.nodes[NodeName("a")].cordoned


def test_isolate_the_only_check_of_the_only_node_just_cordons() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    only = check("only")
    add(state, only, now=0.0)
    assert state.isolate(only.digest, now=1.0) == ("a", [])
    assert state.nodes[NodeName("a")].cordoned


def test_isolate_a_dangling_check_is_refused() -> None:
    state = ClusterState()
    lonely = check("lonely")
    add(state, lonely, now=0.0)
    with pytest.raises(NotDispatched):
        state.isolate(lonely.digest, now=1.0)


def test_isolate_an_unknown_check_is_refused() -> None:
    state, _ = isolated_setup()
    with pytest.raises(UnknownCheck):
        state.isolate(check("unknown").digest, now=1.0)


@pytest.mark.parametrize(
    "other_node",
    [
        pytest.param(None, id="one-node"),
        pytest.param({"zone": "us"}, id="other-node-does-not-match"),
    ],
)
def test_isolate_without_anywhere_to_go_changes_nothing(
    other_node: Mapping[str, str] | None,
) -> None:
    state = ClusterState()
    beat(state, "a", now=0.0, labels={"zone": "eu"})
    if other_node is not None:
        beat(state, "b", now=0.0, labels=other_node)
        state.cordon(NodeName("b"))  # so that every check lands on a
    keep, free = check("keep"), check("free")
    pinned = check("pinned", selector={"zone": "eu"})
    add(state, keep, free, pinned, now=0.0)
    if other_node is not None:
        state.uncordon(NodeName("b"), now=0.0)
    a = state.nodes[NodeName("a")]
    assert a.digests == {keep.digest, free.digest, pinned.digest}
    before = (dict(state.placement), state.change_sequence, a.last_change)

    # All or nothing: ``free`` could go to b, but ``pinned`` cannot, so neither moves.
    with pytest.raises(NoOtherNode):
        state.isolate(keep.digest, now=1.0)

    assert (dict(state.placement), state.change_sequence, a.last_change) == before
    assert not a.cordoned


# ----------------------------------------------------------- admin errors


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda s: s.cordon(NodeName("ghost")), id="cordon"),
        pytest.param(lambda s: s.uncordon(NodeName("ghost"), now=1.0), id="uncordon"),
        pytest.param(lambda s: s.drain(NodeName("ghost"), now=1.0), id="drain"),
        pytest.param(lambda s: s.node_configs(NodeName("ghost")), id="node-configs"),
    ],
)
def test_operations_on_an_unknown_node_raise(operation: Callable[[ClusterState], object]) -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    with pytest.raises(UnknownNode):
        operation(state)


def test_remove_check_errors() -> None:
    state = ClusterState()
    held = check("held")
    add(state, held, now=0.0, source="s1")
    with pytest.raises(UnknownCheck):
        state.remove_check(check("never").digest, source=None, now=1.0)
    with pytest.raises(UnknownCheck):
        state.remove_check(held.digest, source=SourceName("s2"), now=1.0)
    assert held.digest in state.configs
    assert state.sources_of(held.digest) == ["s1"]


# ---------------------------------------------------------------- sources


@pytest.mark.parametrize(
    ("before", "after", "added", "removed", "unchanged"),
    [
        pytest.param([], ["c1", "c2"], 2, 0, 0, id="new-source"),
        pytest.param(["c1", "c2", "c3"], ["c2", "c3", "c4"], 1, 1, 2, id="one-in-one-out"),
        pytest.param(["c1", "c2"], ["c1", "c2"], 0, 0, 2, id="idempotent-resend"),
        pytest.param(["c1", "c2"], ["c2", "c1"], 0, 0, 2, id="order-does-not-matter"),
        pytest.param(["c1", "c2"], [], 0, 2, 0, id="emptied"),
    ],
)
def test_replace_source_counts_against_its_own_set(
    before: list[str], after: list[str], added: int, removed: int, unchanged: int
) -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    # Another source holding c1 must not change this source's counts.
    add(state, check("c1"), now=0.0, source="other")
    src = SourceName("s")
    state.replace_source(src, [check(label) for label in before], now=0.0)

    change = state.replace_source(src, [check(label) for label in after], now=1.0)

    assert (change.added, change.removed, change.unchanged) == (added, removed, unchanged)
    assert change.digests == [check(label).digest for label in after]
    assert [c.digest for c in state.source_configs(src)] == sorted(
        check(label).digest for label in after
    )
    expected_held = {check(label).digest for label in [*after, "c1"]}
    assert set(state.configs) == expected_held
    assert set(state.placement) == expected_held
    assert (src in state.source_names()) is bool(after)


def test_replace_source_keeps_checks_another_source_holds() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    shared, own = check("shared"), check("own")
    state.replace_source(SourceName("s1"), [shared, own], now=0.0)
    state.replace_source(SourceName("s2"), [shared], now=0.0)
    where = node_of(state, shared)

    state.replace_source(SourceName("s1"), [], now=1.0)

    assert node_of(state, shared) == where
    assert state.sources_of(shared.digest) == ["s2"]
    assert own.digest not in state.configs
    assert own.digest not in state.placement
    assert all(own.digest not in n.digests for n in state.nodes.values())


def test_a_check_moving_between_sources_in_one_step_keeps_its_node_and_results() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    first, moving = check("first"), check("moving")
    old, new = SourceName("file:old.yaml"), SourceName("file:new.yaml")
    state.replace_source(old, [first, moving], now=0.0)
    assert node_of(state, moving) == "b"
    state.record_results(NodeName("b"), [result(moving, ok=True, started_at=1.0)], now_wall=WALL)
    b_counter = state.nodes[NodeName("b")].last_change
    state.take_events()

    changes = state.replace_sources({old: [first], new: [moving]}, now=2.0)

    assert (changes[old].added, changes[old].removed, changes[old].unchanged) == (0, 1, 1)
    assert (changes[new].added, changes[new].removed, changes[new].unchanged) == (1, 0, 0)
    assert node_of(state, moving) == "b"
    assert state.sources_of(moving.digest) == [new]
    assert state.results[moving.digest].success_count == 1
    # Its holders changed: node b's agent refetches to keep the current sources (what it
    # reports to a leader that rebuilds from the agents); same digest, nothing restarts.
    assert state.nodes[NodeName("b")].last_change > b_counter
    assert state.take_events().changed_nodes == {NodeName("b")}


def test_a_check_moving_between_sources_in_two_steps_is_dropped_and_readded() -> None:
    # The contrast that makes the one-step form worth having.
    state = ClusterState()
    beat(state, "a", now=0.0)
    moving = check("moving")
    old, new = SourceName("file:old.yaml"), SourceName("file:new.yaml")
    state.replace_source(old, [moving], now=0.0)
    state.record_results(NodeName("a"), [result(moving, ok=True, started_at=1.0)], now_wall=WALL)
    state.replace_source(old, [], now=2.0)
    state.replace_source(new, [moving], now=2.0)
    assert moving.digest not in state.results


def test_removing_a_check_frees_its_node_and_bumps_its_counter() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    c1, c2 = check("c1"), check("c2")
    add(state, c1, c2, now=0.0)
    a, b = state.nodes[NodeName("a")], state.nodes[NodeName("b")]
    a_before, b_before = a.last_change, b.last_change

    state.remove_check(c1.digest, source=API, now=1.0)

    assert a.digests == set()
    assert a.last_change > a_before
    assert b.last_change == b_before
    decisions = state.take_events().decisions
    assert (decisions[-1].digest, decisions[-1].reason) == (c1.digest, "check_removed")


def test_weight_change_without_new_digest_updates_the_cost() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    add(state, check("c1"), check("c2"), now=0.0)  # a: c1, b: c2
    add(state, check("c1", weight=5.0), now=1.0)  # same check, heavier
    assert len(state.configs) == 2
    assert state.node_load(NodeName("a")) == 5.0
    c3 = check("c3")
    add(state, c3, now=1.0)
    assert node_of(state, c3) == "b"


# ------------------------------------------------------------------- costs


def test_unmeasured_checks_cost_weight_times_mean_measured_cost() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    c1, c2, c3 = check("c1"), check("c2"), check("c3", weight=2.0)
    add(state, c1, c2, c3, now=0.0)  # a: c1, c3 ; b: c2
    assert state.mean_measured_cost() == 1.0
    assert state.cost(c3.digest) == 2.0

    beat(state, "a", now=1.0, stats={c1.digest: CheckStats(avg_execution_s=1.5, runs=3, errors=0)})
    beat(state, "b", now=1.0, stats={c2.digest: CheckStats(avg_execution_s=4.5, runs=3, errors=0)})

    # Utilisation = avg execution / interval (15 s): 0.1 and 0.3, mean 0.2.
    assert state.cost(c1.digest) == pytest.approx(0.1)
    assert state.cost(c2.digest) == pytest.approx(0.3)
    assert state.mean_measured_cost() == pytest.approx(0.2)
    assert state.cost(c3.digest) == pytest.approx(0.4)
    assert state.node_load(NodeName("a")) == pytest.approx(0.5)
    assert state.node_load(NodeName("b")) == pytest.approx(0.3)
    # b carries the least load: the next check goes there.
    c4 = check("c4")
    add(state, c4, now=1.0)
    assert node_of(state, c4) == "b"


def test_measured_costs_decide_placement_against_counts() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    c1, c2, c3 = check("c1"), check("c2"), check("c3")
    add(state, c1, c2, c3, now=0.0)  # a: c1, c3 ; b: c2
    beat(state, "a", now=1.0, stats={c1.digest: CheckStats(avg_execution_s=1.5, runs=1, errors=0)})
    beat(state, "b", now=1.0, stats={c2.digest: CheckStats(avg_execution_s=13.5, runs=1, errors=0)})
    # a = 0.1 + 1 x mean(0.1, 0.9) = 0.6 < b = 0.9, though a runs two checks to b's one.
    c4 = check("c4")
    add(state, c4, now=1.0)
    assert node_of(state, c4) == "a"


def test_a_new_mean_cost_re_ranks_nodes_that_did_not_change() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    light, measured = check("light", weight=0.5), check("measured")
    add(state, light, measured, now=0.0)  # a: light (0.5) ; b: measured (1)
    assert (node_of(state, light), node_of(state, measured)) == ("a", "b")

    # Only b reports; the mean cost falls to 0.3, so a's load falls to 0.5 x 0.3 though
    # nothing about a itself changed.
    beat(state, "b", now=1.0, stats={measured.digest: CheckStats(4.5, runs=2, errors=0)})

    assert state.node_load(NodeName("a")) == pytest.approx(0.15)
    assert state.node_load(NodeName("b")) == pytest.approx(0.3)
    nxt = check("next")
    add(state, nxt, now=1.0)
    assert node_of(state, nxt) == "a"


def test_stats_without_runs_and_stale_stats_are_ignored() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    c1, c2 = check("c1"), check("c2")
    add(state, c1, c2, now=0.0)  # a: c1, b: c2
    beat(state, "a", now=1.0, stats={c1.digest: CheckStats(avg_execution_s=9.0, runs=0, errors=0)})
    beat(state, "a", now=1.0, stats={c2.digest: CheckStats(avg_execution_s=9.0, runs=5, errors=0)})
    assert state.mean_measured_cost() == 1.0
    assert state.cost(c1.digest) == 1.0
    assert state.cost(c2.digest) == 1.0
    assert c2.digest not in state.nodes[NodeName("a")].stats


# ----------------------------------------------------------------- results


def test_results_for_checks_not_on_that_node_are_rejected() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    on_a, on_b = check("on-a"), check("on-b")
    add(state, on_a, on_b, now=0.0)
    unknown = check("unknown")

    accepted, rejected = state.record_results(
        NodeName("a"),
        [
            result(on_a, ok=True, started_at=1.0),
            result(on_b, ok=True, started_at=1.0),
            result(unknown, ok=True, started_at=1.0),
        ],
        now_wall=WALL,
    )

    assert accepted == 1
    assert rejected == [
        RejectedResult(on_b.digest, "not_assigned"),
        RejectedResult(unknown.digest, "unknown_check"),
    ]
    assert set(state.results) == {on_a.digest}
    assert state.results[on_a.digest].node == "a"


@pytest.mark.parametrize(
    ("outcomes", "consecutive", "successes", "failures", "last_ok_at"),
    [
        pytest.param([True], 0, 1, 0, 10.5, id="one-ok"),
        pytest.param([False, False], 2, 0, 2, None, id="failures-never-ok"),
        pytest.param([True, False, False, False], 3, 1, 3, 10.5, id="failing-since-ok"),
        pytest.param([False, False, True], 0, 1, 2, 30.5, id="recovered"),
        pytest.param([True, True, False], 1, 2, 1, 20.5, id="last-ok-is-the-latest-ok"),
    ],
)
def test_result_summary_counts(
    outcomes: list[bool],
    consecutive: int,
    successes: int,
    failures: int,
    last_ok_at: float | None,
) -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    probe = check("probe")
    add(state, probe, now=0.0)
    runs = [
        result(probe, ok=ok, started_at=10.0 * (i + 1), duration_s=0.5)
        for i, ok in enumerate(outcomes)
    ]
    # Reported one per batch, as an agent that reports after every run would.
    for run_result in runs:
        assert state.record_results(NodeName("a"), [run_result], now_wall=WALL) == (1, [])

    summary = state.results[probe.digest]
    assert summary.last == runs[-1]
    assert (summary.consecutive_failures, summary.success_count, summary.failure_count) == (
        consecutive,
        successes,
        failures,
    )
    assert summary.last_ok_at == last_ok_at


def test_a_late_older_result_does_not_reset_the_failure_streak() -> None:
    """The summary's streak follows run order, as its ``last`` already does.

    A batch that arrives late (an agent retrying a failed POST) carries an older run; it
    counts in the totals but must not make the newest result, a failure, look healthy.
    """
    state = ClusterState()
    beat(state, "a", now=0.0)
    probe = check("probe")
    add(state, probe, now=0.0)
    newer_failure = result(probe, ok=False, started_at=20.0)
    older_success = result(probe, ok=True, started_at=10.0)

    state.record_results(NodeName("a"), [newer_failure], now_wall=WALL)
    state.record_results(NodeName("a"), [older_success], now_wall=WALL)

    summary = state.results[probe.digest]
    assert summary.last == newer_failure
    assert (summary.success_count, summary.failure_count) == (1, 1)
    assert summary.last_ok_at == 10.5
    assert summary.consecutive_failures == 1, "the newest run failed: the streak is 1, not 0"


def test_results_of_a_removed_check_are_dropped_and_refused() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    probe = check("probe")
    add(state, probe, now=0.0)
    state.record_results(NodeName("a"), [result(probe, ok=True, started_at=1.0)], now_wall=WALL)
    state.remove_check(probe.digest, source=None, now=2.0)
    assert probe.digest not in state.results
    assert state.record_results(
        NodeName("a"), [result(probe, ok=True, started_at=3.0)], now_wall=WALL
    ) == (
        0,
        [RejectedResult(probe.digest, "unknown_check")],
    )


def test_results_from_the_previous_node_after_a_move_are_rejected() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    probe = check("probe")
    add(state, probe, now=0.0)
    assert node_of(state, probe) == "a"
    state.drain(NodeName("a"), now=1.0)
    late = result(probe, ok=False, started_at=2.0)
    assert state.record_results(NodeName("a"), [late], now_wall=WALL) == (
        0,
        [RejectedResult(probe.digest, "not_assigned")],
    )
    assert state.record_results(NodeName("b"), [late], now_wall=WALL) == (1, [])


# ---------------------------------------------------------- is_up_to_date


@pytest.mark.parametrize(
    ("sent", "warming", "expected"),
    [
        pytest.param("minus-one", False, True, id="minus-one-is-heartbeat-only"),
        pytest.param("current", False, True, id="equal-counter"),
        pytest.param("previous", False, False, id="older-counter"),
        pytest.param("zero", False, False, id="fresh-agent"),
        pytest.param("future", False, False, id="counter-from-another-term"),
        pytest.param("previous", True, True, id="older-counter-during-warmup"),
        pytest.param("zero", True, True, id="fresh-agent-during-warmup"),
    ],
)
def test_is_up_to_date(sent: str, warming: bool, expected: bool) -> None:
    state = ClusterState(warmup_until=100.0 if warming else float("-inf"))
    c1 = check("c1")
    beat(state, "a", now=0.0)
    previous = state.nodes[NodeName("a")].last_change
    # A reported check is placed (adopted) even during warm-up: the counter moves.
    beat(state, "a", now=1.0, running=[c1.digest])
    add(state, c1, now=1.0)
    assert node_of(state, c1) == "a"
    current = state.nodes[NodeName("a")].last_change
    assert current > previous
    last_change = {
        "minus-one": -1,
        "current": current,
        "previous": previous,
        "zero": 0,
        "future": current + 1000,
    }[sent]

    assert beat(state, "a", now=2.0, last_change=last_change) is expected


def test_up_to_date_answers_change_when_warmup_ends() -> None:
    state = ClusterState(warmup_until=30.0)
    beat(state, "a", now=0.0)
    assert beat(state, "a", now=29.9, last_change=0) is True
    assert beat(state, "a", now=30.0, last_change=0) is False
    current = state.nodes[NodeName("a")].last_change
    assert beat(state, "a", now=31.0, last_change=current) is True


# ----------------------------------------------------------------- warm-up


def test_warmup_adopts_reported_placements_instead_of_reshuffling() -> None:
    state = ClusterState(warmup_until=30.0)
    c1, c2, c3 = check("c1"), check("c2"), check("c3")
    # Least load with name ties would give c1 to a and c2 to b: the reports say otherwise.
    beat(state, "a", now=0.0, last_change=7, running=[c2.digest])
    beat(state, "b", now=0.0, last_change=9, running=[c1.digest])

    change = state.replace_source(API, [c1, c2, c3], now=5.0)

    assert change.added == 3
    assert (node_of(state, c1), node_of(state, c2), node_of(state, c3)) == ("b", "a", None)
    assert "reported running" in state.explain(c1.digest, now=5.0)
    assert "warming up for 25.0 s more" in state.explain(c3.digest, now=5.0)
    assert state.dispatch_dangling(now=29.0) == 0
    assert c3.digest in state.dangling

    assert state.dispatch_dangling(now=30.0) == 1
    assert (node_of(state, c1), node_of(state, c2), node_of(state, c3)) == ("b", "a", "a")


def test_warmup_adopts_a_report_that_arrives_after_the_config() -> None:
    state = ClusterState(warmup_until=30.0)
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    c1 = check("c1")
    add(state, c1, now=1.0)
    assert c1.digest in state.dangling

    beat(state, "b", now=2.0, running=[c1.digest])

    assert node_of(state, c1) == "b"
    assert c1.digest not in state.dangling
    assert "reported running" in state.explain(c1.digest, now=2.0)


def test_warmup_does_not_adopt_onto_a_node_the_selector_excludes() -> None:
    state = ClusterState(warmup_until=30.0)
    beat(state, "a", now=0.0, labels={"zone": "eu"})
    eu_only = check("eu-only", selector={"zone": "eu"})
    beat(state, "b", now=0.0, labels={"zone": "us"}, running=[eu_only.digest])
    add(state, eu_only, now=1.0)
    assert eu_only.digest in state.dangling
    state.dispatch_dangling(now=30.0)
    assert node_of(state, eu_only) == "a"


def test_warmup_report_from_a_node_that_then_expires_is_forgotten() -> None:
    state = ClusterState(warmup_until=30.0)
    c1 = check("c1")
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0, running=[c1.digest])
    beat(state, "a", now=20.0)
    assert state.expire_nodes(now=31.0, timeout_s=30.0) == [NodeName("b")]
    beat(state, "b", now=31.0)  # a new incarnation that reports nothing
    add(state, c1, now=31.0)
    # Both are empty: the name tie-break, not the dead incarnation's report, decides.
    assert node_of(state, c1) == "a"
    assert "when the check arrived" in state.explain(c1.digest, now=31.0)


# --------------------------------------------------------- change counters


def test_each_new_node_gets_a_fresh_counter_from_one_sequence() -> None:
    state = ClusterState()
    seen: list[int] = []
    for name in ("a", "b", "c"):
        beat(state, name, now=0.0)
        seen.append(state.nodes[NodeName(name)].last_change)
        assert seen[-1] == state.change_sequence
    assert seen == sorted(set(seen))
    assert seen[0] > 0


def test_counters_strictly_grow_and_only_for_the_changed_node() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    a, b = state.nodes[NodeName("a")], state.nodes[NodeName("b")]
    history = [state.change_sequence]
    c1 = check("c1")

    a_before, b_before = a.last_change, b.last_change
    add(state, c1, now=1.0)  # -> a
    assert a.last_change > a_before
    assert b.last_change == b_before
    history.append(state.change_sequence)

    beat(state, "a", now=2.0, last_change=a.last_change)  # a heartbeat changes nothing
    assert state.change_sequence == history[-1]

    a_before, b_before = a.last_change, b.last_change
    state.drain(NodeName("a"), now=3.0)  # c1 -> b: both change
    assert a.last_change > a_before
    assert b.last_change > b_before
    assert a.last_change != b.last_change
    history.append(state.change_sequence)

    assert history == sorted(set(history))


def test_a_re_registered_node_never_sees_an_old_counter() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    seen_by_a = [state.nodes[NodeName("a")].last_change]
    for i in range(3):
        add(state, check(f"c{i}"), now=1.0)
        seen_by_a.append(state.nodes[NodeName("a")].last_change)
    beat(state, "b", now=20.0)
    assert state.expire_nodes(now=31.0, timeout_s=30.0) == [NodeName("a")]

    beat(state, "a", now=32.0, last_change=max(seen_by_a))

    fresh = state.nodes[NodeName("a")].last_change
    assert fresh > max(seen_by_a)
    assert fresh > state.nodes[NodeName("b")].last_change
    # The agent still holds its old counter: it must refetch, and finds nothing.
    assert beat(state, "a", now=33.0, last_change=max(seen_by_a)) is False
    assert state.node_configs(NodeName("a")) == (fresh, [])


def test_events_name_the_nodes_whose_configs_changed() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    beat(state, "b", now=0.0)
    state.take_events()
    add(state, check("c1"), now=1.0)
    events = state.take_events()
    assert events.changed_nodes == {"a"}
    assert [(d.node, d.reason) for d in events.decisions] == [("a", "new_check")]
    assert state.take_events().decisions == []
