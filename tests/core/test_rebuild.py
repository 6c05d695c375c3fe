"""Rebuild from the agents: a leader that starts empty and warms up asks each agent for
the full configs of what it runs and adopts them with their placement.

The state's part is pure (time passed in); the engine's (the digest check and its
warning, the store write before the reply) runs on a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

import pytest
from structlog.testing import capture_logs

from dispatcher.common.clock import FakeClock
from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName, make_config
from dispatcher.core.rebuild import RunningConfig, split_intact
from dispatcher.core.state import ClusterState
from dispatcher.engine import Dispatcher
from dispatcher.settings import DispatchSettings
from dispatcher.storage.memory import MemoryStateStore
from dispatcher.storage.writer import StoreWriter

S1, S2, S3 = SourceName("s1"), SourceName("s2"), SourceName("s3")
N1, N2 = NodeName("n1"), NodeName("n2")
WARMUP_UNTIL = 30.0
GUARD_S = 10.0
"""Fails a step that hangs instead of waiting for pytest's timeout; never reached."""


def check(label: str, *, selector: Mapping[str, str] | None = None) -> CheckConfig:
    return make_config(
        name="http", instances=[{"url": f"http://{label}/healthz"}], node_selector=selector
    )


def report(config: CheckConfig, *sources: SourceName, digest: str | None = None) -> RunningConfig:
    return RunningConfig(
        config=config,
        sources=frozenset(sources),
        reported_digest=Digest(digest) if digest is not None else config.digest,
    )


def warming(*, track_changes: bool = False) -> ClusterState:
    """A state as a term that starts empty makes it: warming up until ``WARMUP_UNTIL``."""
    return ClusterState(warmup_until=WARMUP_UNTIL, track_changes=track_changes)


def register(
    state: ClusterState, *names: NodeName, now: float = 0.0, labels: Mapping[str, str] | None = None
) -> None:
    for name in names:
        state.node_status(name, now=now, last_change=-1, labels=labels)


def sources(state: ClusterState, configs: Iterable[CheckConfig]) -> dict[str, list[str]]:
    return {c.digest: list(state.sources_of(c.digest)) for c in configs}


# --------------------------------------------------------------------- the state


def test_unknown_checks_are_added_with_their_sources_and_stay_on_the_reporting_node() -> None:
    state = warming()
    register(state, N1, N2)
    x, y = check("x"), check("y")
    counter = state.node(N1).last_change

    state.adopt_running(N1, [report(x, S1, S2), report(y, S2)], now=1.0)

    assert set(state.configs) == {x.digest, y.digest}
    assert sources(state, [x, y]) == {x.digest: ["s1", "s2"], y.digest: ["s2"]}
    assert dict(state.placement) == {x.digest: N1, y.digest: N1}
    assert state.dangling == {}
    assert sorted(state.source_names()) == ["s1", "s2"]
    assert state.node(N1).last_change > counter, "the agent refetches its set after warm-up"
    decisions = state.take_events().decisions
    assert [(d.digest, d.node, d.reason) for d in decisions] == [
        (x.digest, N1, "adopted"),
        (y.digest, N1, "adopted"),
    ]


def test_the_adopted_checks_stay_where_they_are_after_the_warm_up() -> None:
    state = warming()
    register(state, N1, N2)
    configs = [check(f"c{i}") for i in range(4)]
    state.adopt_running(N1, [report(c, S1) for c in configs], now=1.0)

    register(state, N1, N2, now=WARMUP_UNTIL + 1)
    assert state.dispatch_dangling(now=WARMUP_UNTIL + 1) == 0
    assert dict(state.placement) == {c.digest: N1 for c in configs}
    counter, served = state.node_configs(N1)
    assert [c.digest for c in served] == sorted(c.digest for c in configs)
    assert counter == state.node(N1).last_change


def test_a_report_whose_digest_does_not_match_its_content_is_split_off() -> None:
    x, y = check("x"), check("y")
    forged = report(x, S1, digest=y.digest)
    good = report(y, S1)

    intact, mismatched = split_intact([forged, good])

    assert intact == [good]
    assert mismatched == [forged]
    assert not forged.intact


def test_a_check_two_agents_report_goes_to_the_first() -> None:
    state = warming()
    register(state, N1, N2)
    x = check("x")

    state.adopt_running(N1, [report(x, S1)], now=1.0)
    state.adopt_running(N2, [report(x, S1, S2)], now=2.0)

    assert state.placement[x.digest] == N1
    assert state.sources_of(x.digest) == [S1], "a known check keeps its holders"
    assert x.digest not in state.node(N2).digests


def test_a_check_the_node_may_not_run_dangles_and_is_placed_after_the_warm_up() -> None:
    state = warming()
    register(state, N1, labels={"zone": "b"})
    register(state, N2, labels={"zone": "a"})
    x = check("x", selector={"zone": "a"})

    state.adopt_running(N1, [report(x, S1)], now=1.0)

    assert x.digest in state.configs
    assert state.sources_of(x.digest) == [S1]
    assert x.digest not in state.placement
    assert list(state.dangling) == [x.digest]
    assert state.dispatch_dangling(now=2.0) == 0, "nothing is placed while warming up"

    assert state.dispatch_dangling(now=WARMUP_UNTIL) == 1
    assert state.placement[x.digest] == N2


def test_a_known_check_gets_its_placement_adopted_and_keeps_its_holders() -> None:
    """A source that re-sent during warm-up is what holds its checks; the agent's report
    only says where the check runs."""
    state = warming()
    register(state, N1, N2)
    x = check("x")
    state.replace_source(S1, [x], now=1.0)
    assert list(state.dangling) == [x.digest], "new checks wait while warming up"

    state.adopt_running(N2, [report(x, S1, S2)], now=2.0)

    assert state.placement[x.digest] == N2
    assert state.sources_of(x.digest) == [S1]
    assert state.dangling == {}


def test_sources_that_re_send_replace_their_sets_as_usual() -> None:
    state = warming()
    register(state, N1)
    x, y = check("x"), check("y")
    state.adopt_running(N1, [report(x, S1), report(y, S1, S2)], now=1.0)

    state.replace_source(S1, [x], now=2.0)  # y was deleted from s1 just before the crash

    assert sources(state, [x, y]) == {x.digest: ["s1"], y.digest: ["s2"]}
    state.replace_source(S2, [], now=3.0)
    assert set(state.configs) == {x.digest}
    assert dict(state.placement) == {x.digest: N1}


def test_a_report_without_a_source_adds_nothing() -> None:
    state = warming()
    register(state, N1)

    state.adopt_running(N1, [report(check("x"))], now=1.0)

    assert state.configs == {}
    assert state.dangling == {}


def test_nothing_is_adopted_past_the_warm_up() -> None:
    state = warming()
    register(state, N1, now=WARMUP_UNTIL)

    state.adopt_running(N1, [report(check("x"), S1)], now=WARMUP_UNTIL)

    assert state.configs == {}
    assert not state.wants_running_configs(N1, now=WARMUP_UNTIL)


def test_each_node_is_asked_only_while_warming_up_and_until_it_answered() -> None:
    state = warming()
    assert not state.wants_running_configs(N1, now=1.0), "an unknown node is not asked"
    register(state, N1, N2)
    assert state.wants_running_configs(N1, now=1.0)
    assert state.wants_running_configs(N2, now=1.0)

    state.adopt_running(N1, [], now=2.0)  # nothing runs there: answered all the same

    assert not state.wants_running_configs(N1, now=2.0)
    assert state.wants_running_configs(N2, now=2.0)
    assert not state.wants_running_configs(N2, now=WARMUP_UNTIL), "warm-up is over"


def test_a_leader_that_loaded_its_state_never_asks() -> None:
    state = ClusterState()  # not warming up: restored from a store, or no warm-up at all
    register(state, N1)
    assert not state.wants_running_configs(N1, now=0.0)
    state.adopt_running(N1, [report(check("x"), S1)], now=0.0)
    assert state.configs == {}


def test_adoption_goes_through_the_change_tracker() -> None:
    state = warming(track_changes=True)
    register(state, N1)
    state.take_delta()  # the node's record
    x, y = check("x"), check("y")

    state.adopt_running(N1, [report(x, S1, S2), report(y, S2)], now=1.0)

    delta = state.take_delta()
    assert delta.configs == {x.digest: x, y.digest: y}
    assert delta.sources == {S1: frozenset({x.digest}), S2: frozenset({x.digest, y.digest})}
    assert delta.placement == {x.digest: N1, y.digest: N1}
    assert not state.take_delta(), "every change was handed over once"


# ------------------------------------------------- agents keep the current sources


def test_a_placed_check_gaining_or_losing_a_holder_touches_its_node() -> None:
    """Source A pushed x to n1; source B adds x (200). The holder set is {A, B}: n1's
    agent must be told (it refetches; the digest is the same, nothing restarts), or a
    leader that rebuilds from it would adopt x held by A alone, and A's next PUT without
    x would remove a check B was told was stored."""
    state = ClusterState()
    register(state, N1)
    x = check("x")
    state.replace_source(S1, [x], now=1.0)
    assert state.placement[x.digest] == N1
    state.take_events()

    writes: list[Callable[[float], object]] = [
        lambda now: state.add_to_source(S2, [x], now=now),
        lambda now: state.replace_source(S3, [x], now=now),
        lambda now: state.remove_check(x.digest, source=S2, now=now),
        lambda now: state.replace_source(S1, [], now=now),
    ]
    for step, write in enumerate(writes):
        counter = state.node(N1).last_change
        write(2.0 + step)
        assert state.node(N1).last_change > counter, f"step {step}: the agent refetches"
        assert state.take_events().changed_nodes == {N1}, f"step {step}: its long poll wakes"
        assert state.placement[x.digest] == N1
    assert state.sources_of(x.digest) == [S3]
    _, served = state.node_configs(N1)
    assert [c.digest for c in served] == [x.digest], "the same check: nothing restarts"


def test_holding_what_is_held_touches_no_node() -> None:
    state = ClusterState()
    register(state, N1)
    x = check("x")
    state.replace_source(S1, [x], now=1.0)
    state.add_to_source(S2, [x], now=1.0)
    counter = state.node(N1).last_change

    state.replace_source(S1, [x], now=2.0)
    state.add_to_source(S2, [x], now=2.0)

    assert state.node(N1).last_change == counter


# ------------------------------------- what a source says in the warm-up wins


def test_a_source_that_wrote_its_set_in_the_warm_up_is_not_a_holder_from_a_late_report() -> None:
    """A PUTs {y} during the warm-up (200); n1's report of x, held by A when it got it,
    arrives afterwards: A must not hold x again."""
    state = warming()
    register(state, N1)
    x, y = check("x"), check("y")
    state.replace_source(S1, [y], now=1.0)

    state.adopt_running(N1, [report(x, S1), report(y, S1)], now=2.0)

    assert set(state.configs) == {y.digest}
    assert state.source_configs(S1) == [y]
    assert dict(state.placement) == {y.digest: N1}, "y's placement is still adopted"


def test_a_reported_check_keeps_the_holders_that_did_not_write_in_the_warm_up() -> None:
    state = warming()
    register(state, N1)
    x = check("x")
    state.replace_source(S1, [], now=1.0)  # a set written empty: no work, still written

    state.adopt_running(N1, [report(x, S1, S2)], now=2.0)

    assert state.sources_of(x.digest) == [S2]
    assert state.placement[x.digest] == N1


def test_a_check_deleted_from_every_source_in_the_warm_up_is_not_adopted_again() -> None:
    state = warming()
    register(state, N1, N2)
    x, y = check("x"), check("y")
    state.adopt_running(N1, [report(x, S1, S2)], now=1.0)

    state.remove_check(x.digest, source=None, now=2.0)
    state.adopt_running(N2, [report(x, S1, S2), report(y, S1)], now=3.0)

    assert set(state.configs) == {y.digest}, "x stays deleted; S1's other checks come"
    assert state.sources_of(y.digest) == [S1]


def test_a_check_deleted_from_one_source_in_the_warm_up_is_not_held_by_it_again() -> None:
    """A DELETE from one source says nothing of its other checks: those are adopted."""
    state = warming()
    register(state, N1, N2)
    x, w = check("x"), check("w")
    state.adopt_running(N1, [report(x, S1)], now=1.0)

    state.remove_check(x.digest, source=S1, now=2.0)
    state.adopt_running(N2, [report(x, S1), report(w, S1)], now=3.0)

    assert set(state.configs) == {w.digest}
    assert state.source_configs(S1) == [w]


def test_an_add_in_the_warm_up_keeps_the_sources_other_checks_adoptable() -> None:
    """A POST adds to a source's set and says nothing of the rest: a late report still
    brings back the checks that source held (else they would be lost)."""
    state = warming()
    register(state, N1)
    x, y = check("x"), check("y")
    state.add_to_source(S1, [y], now=1.0)

    state.adopt_running(N1, [report(x, S1)], now=2.0)

    assert sorted(c.digest for c in state.source_configs(S1)) == sorted([x.digest, y.digest])


def test_what_the_warm_up_remembered_is_forgotten_when_it_ends() -> None:
    state = warming()
    register(state, N1, N2)
    x, y = check("x"), check("y")
    state.adopt_running(N1, [report(x, S1), report(y, S2)], now=1.0)
    state.replace_source(S3, [], now=2.0)
    state.remove_check(x.digest, source=None, now=2.0)
    state.remove_check(y.digest, source=S2, now=2.0)
    assert state._replaced_in_warmup == {S3}
    assert state._released_in_warmup == {(S1, x.digest), (S2, y.digest)}
    assert state._deleted_in_warmup == {x.digest}
    assert state._sent_running_configs == {N1}

    state.dispatch_dangling(now=WARMUP_UNTIL)
    state.replace_source(S1, [x], now=WARMUP_UNTIL + 1)  # past the warm-up: not noted
    state.remove_check(x.digest, source=None, now=WARMUP_UNTIL + 2)

    assert state._replaced_in_warmup == set()
    assert state._released_in_warmup == set()
    assert state._deleted_in_warmup == set()
    assert state._sent_running_configs == set()


# -------------------------------------------------------------------- the engine


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def warming_dispatcher(clock: FakeClock) -> Dispatcher:
    return Dispatcher(settings=DispatchSettings(warmup_duration_s=WARMUP_UNTIL), clock=clock)


async def test_the_engine_drops_a_mismatched_digest_with_a_warning_and_adopts_the_rest(
    clock: FakeClock,
) -> None:
    dispatcher = warming_dispatcher(clock)
    x, y = check("x"), check("y")
    await dispatcher.node_status(N1, last_change=-1)
    assert dispatcher.wants_running_configs(N1)

    with capture_logs() as logs:
        up_to_date = await dispatcher.node_status(
            N1, last_change=5, running_configs=[report(x, S1, digest="ab" * 8), report(y, S1)]
        )

    assert up_to_date is True, "the heartbeat succeeds (up to date while warming up)"
    assert set(dispatcher.state.configs) == {y.digest}
    assert dispatcher.state.placement[y.digest] == N1
    assert not dispatcher.wants_running_configs(N1)
    [warning] = [e for e in logs if e["event"] == "running_config_dropped"]
    assert warning["log_level"] == "warning"
    assert warning["digest"] == "ab" * 8
    assert warning["content_digest"] == x.digest
    assert warning["node"] == N1


async def test_the_status_reply_waits_until_the_store_holds_what_was_adopted(
    clock: FakeClock,
) -> None:
    """A term that found its store empty tracks changes: the adopted configs, sources and
    placements reach the store before the reply is sent."""
    dispatcher = warming_dispatcher(clock)
    store = MemoryStateStore()
    await store.claim(epoch=1)
    writer = StoreWriter(store, epoch=1, on_fenced=lambda: None, clock=clock, retry_s=0.5)
    dispatcher.begin_term(state=dispatcher.new_state(track_changes=True), epoch=1, writer=writer)
    task = asyncio.create_task(writer.run(), name="store_writer")
    try:
        await dispatcher.node_status(N1, last_change=-1)
        x = check("x")
        store.down = True
        status = asyncio.create_task(
            dispatcher.node_status(N1, last_change=-1, running_configs=[report(x, S1)])
        )
        await clock.settle()
        assert not status.done(), "replied before the store had the adopted check"
        assert x.digest not in store.configs

        store.down = False
        clock.advance(0.5)  # the writer's retry
        async with asyncio.timeout(GUARD_S):
            assert await status is True
        assert set(store.configs) == {x.digest}
        assert store.sources == {S1: frozenset({x.digest})}
        assert store.placement == {x.digest: N1}
    finally:
        writer.close()
        async with asyncio.timeout(GUARD_S):
            await task


async def test_a_write_through_the_dispatcher_in_the_warm_up_wins_over_a_late_report(
    clock: FakeClock,
) -> None:
    """The dispatcher's write path (planned, then applied whole or in slices) notes the
    sources it replaces, an empty set too (no work at all); an import goes through it."""
    dispatcher = Dispatcher(
        settings=DispatchSettings(warmup_duration_s=WARMUP_UNTIL, apply_slice_checks=1),
        clock=clock,
    )
    x, y, z = check("x"), check("y"), check("z")
    await dispatcher.node_status(N1, last_change=-1)
    await dispatcher.replace_sources({S1: [], S2: [y, z]})  # S2's is applied in slices

    await dispatcher.node_status(
        N1, last_change=-1, running_configs=[report(x, S1, S3), report(y, S2), report(z, S1)]
    )

    state = dispatcher.state
    assert {d: state.sources_of(d) for d in state.configs} == {
        x.digest: [S3],
        y.digest: [S2],
        z.digest: [S2],
    }
    assert S1 not in state.source_names()
