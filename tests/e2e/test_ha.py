"""End to end, high availability: three dispatcher replicas electing a leader through a
real redis-server, three real node agents listing every replica, checks put through a
follower. The leader is killed (-9), terminated, frozen past its lease, cut off from
Redis; and, with the memory store, a new leader warms up and adopts what agents run.

Lease 3 s, renew deadline 2 s, retry 1 s (see ha_cluster.py). Every timing assertion
is a bound; the measured times are reported at the end of the module.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.ha_cluster import (
    HEARTBEAT_S,
    LEADER_HEADER,
    LEASE_S,
    PATHS,
    RENEW_DEADLINE_S,
    RETRY_S,
    SOURCE,
    WARMUP_S,
    HaCluster,
    Replica,
    ha_cluster,
)
from tests.e2e.harness import API, Reply, Timings

pytestmark = pytest.mark.e2e

TIMINGS = Timings("test_ha")
measured = TIMINGS.measured


@pytest.fixture(scope="module", autouse=True)
def report_timings(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    TIMINGS.report(request.config)


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[HaCluster]:
    with ha_cluster(tmp_path, store="redis", persistent_redis=True) as cluster:
        yield cluster


@pytest.fixture
def memory_cluster(tmp_path: Path) -> Iterator[HaCluster]:
    with ha_cluster(tmp_path, store="memory") as cluster:
        yield cluster


# ------------------------------------------------------------------------ helpers


def same_placement(c: HaCluster, leader: Replica, before: dict[str, str]) -> dict[str, str]:
    """Waits until ``leader`` places every check where it was before; returns it."""

    def probe() -> dict[str, str] | None:
        state = leader.leads()
        if state is None:
            return None
        placed = {d: n for d, n in HaCluster.placement_of(state).items() if d in before}
        return placed if placed == before else None

    try:
        placed, _ = c.wait(f"{leader.name} places every check as before", probe, timeout_s=6)
    except AssertionError:
        state = leader.leads()
        now = HaCluster.placement_of(state) if state else None
        moved = {
            c.key_of(d): (n, (now or {}).get(d))
            for d, n in before.items()
            if (now or {}).get(d) != n
        }
        raise AssertionError(
            f"placement changed (path: (before, now)): {moved}\nstate: {state}\n{c.logs()}"
        ) from None
    return placed


def results_flow(c: HaCluster, leader: Replica, before: dict[str, str], after: float) -> None:
    """Every check reports to ``leader`` a run later than ``after``, from its node."""

    def probe() -> bool:
        results = leader.results()
        return results is not None and all(
            d in results and results[d]["last_run_at"] > after and results[d]["node"] == n
            for d, n in before.items()
        )

    c.wait(f"results of every check at {leader.name}", probe, timeout_s=8)


def kept_running(c: HaCluster, offsets: dict[str, int]) -> None:
    """No agent stopped or started a check since ``offsets`` (its log positions)."""
    stopped = {a: ks for a, ks in c.agent_events(offsets, "check_stopped").items() if ks}
    started = {a: ks for a, ks in c.agent_events(offsets, "check_started").items() if ks}
    assert not stopped, f"agents stopped checks (agent: paths): {stopped}\n{c.logs()}"
    assert not started, f"agents started checks (agent: paths): {started}\n{c.logs()}"


def agents_on_epoch(c: HaCluster, leader: Replica, epoch: int, offsets: dict[str, int]) -> None:
    """Every agent heartbeats to ``leader`` now, and none moved to any other epoch since
    ``offsets`` (an agent logs new_epoch when a heartbeat brings it; one that learns the
    epoch from a config reply moves silently)."""

    def fresh() -> dict[str, float] | None:
        state = leader.leads()
        if state is None:
            return None
        ages = {n["name"]: n["heartbeat_age_s"] for n in state["nodes"]}
        ok = set(ages) == {a.name for a in c.agents} and all(
            age < 2 * HEARTBEAT_S for age in ages.values()
        )
        return ages if ok else None

    c.wait(f"every agent heartbeating to {leader.name}", fresh, timeout_s=6)
    moves = {
        a.name: [int(r["epoch"]) for r in a.events("new_epoch", since=offsets[a.name])]
        for a in c.agents
    }
    wrong = {name: epochs for name, epochs in moves.items() if set(epochs) - {epoch}}
    assert not wrong, f"agents moved to other epochs than {epoch}: {wrong}\n{c.logs()}"
    stale = {a.name: a.events("stale_epoch_ignored", since=offsets[a.name]) for a in c.agents}
    print(f"stale epoch replies ignored by agents: { {n: len(v) for n, v in stale.items()} }")


def hit_throughout(c: HaCluster, start: float, end: float, limit_s: float) -> None:
    """Each check's target path is hit at least every ``limit_s`` between start and end."""
    gaps = {p: round(c.target.longest_gap(p, start, end), 2) for p in PATHS}
    late = {p: g for p, g in gaps.items() if g > limit_s}
    assert not late, f"checks not run for longer than {limit_s} s: {late}\n{c.logs()}"


# -------------------------------------------------------------------------- tests


def test_kill_9_the_leader_a_survivor_leads_with_the_same_placement(
    redis_cluster: HaCluster,
) -> None:
    c = redis_cluster
    leader, state = c.only_leader()
    before = HaCluster.placement_of(state)
    assert set(before) == set(c.digests.values()), state
    assert c.stored_placement() == before
    offsets = c.log_offsets()

    killed_at = time.time()
    started = time.monotonic()
    leader.proc.signal(signal.SIGKILL)
    survivors = [r for r in c.replicas if r is not leader]
    new, body, _ = c.wait_leader(survivors, timeout_s=15)
    took = measured("kill -9: kill to the new leader's first 200", time.monotonic() - started)
    leader.proc.wait(timeout_s=5)
    bound = LEASE_S + RETRY_S + 1
    assert took <= bound, f"new leader after {took:.2f} s (bound {bound} s)\n{c.logs()}"
    assert body["epoch"] > state["epoch"], (body["epoch"], state["epoch"])
    assert body["leader"] == new.name

    same_placement(c, new, before)
    assert c.stored_placement() == before
    assert c.stored_epoch() == body["epoch"]
    results_flow(c, new, before, killed_at)
    agents_on_epoch(c, new, body["epoch"], offsets)
    c.only_leader()
    hit_throughout(c, killed_at, time.time(), limit_s=2.5)
    kept_running(c, offsets)


def test_sigterm_hands_leadership_over_at_once(redis_cluster: HaCluster) -> None:
    c = redis_cluster
    leader, state = c.only_leader()
    before = HaCluster.placement_of(state)
    offsets = c.log_offsets()

    signalled_at = time.time()
    started = time.monotonic()
    leader.proc.signal(signal.SIGTERM)
    survivors = [r for r in c.replicas if r is not leader]
    new, body, _ = c.wait_leader(survivors, timeout_s=10)
    took = measured("SIGTERM: signal to the new leader's first 200", time.monotonic() - started)
    try:
        code = leader.proc.wait(timeout_s=8)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{leader.name} still running 8 s after SIGTERM\n{c.logs()}") from None
    assert code == 0, leader.tail()
    bound = RETRY_S + 1
    assert took <= bound, f"handover after {took:.2f} s (bound {bound} s)\n{c.logs()}"
    assert body["epoch"] > state["epoch"], (body["epoch"], state["epoch"])

    same_placement(c, new, before)
    assert c.stored_placement() == before
    results_flow(c, new, before, signalled_at)
    agents_on_epoch(c, new, body["epoch"], offsets)
    c.only_leader()
    kept_running(c, offsets)


def test_a_leader_frozen_past_its_lease_resumes_as_a_follower(redis_cluster: HaCluster) -> None:
    c = redis_cluster
    leader, state = c.only_leader()
    before = HaCluster.placement_of(state)
    offsets = c.log_offsets()

    frozen_at = time.time()
    started = time.monotonic()
    leader.proc.signal(signal.SIGSTOP)
    try:
        others = [r for r in c.replicas if r is not leader]
        new, body, took = c.wait_leader(others, timeout_s=12)
        measured("SIGSTOP: freeze to the new leader's first 200", took)
        assert took <= LEASE_S + RETRY_S + 1, f"new leader after {took:.2f} s\n{c.logs()}"
        epoch = body["epoch"]
        assert epoch > state["epoch"], (epoch, state["epoch"])
        time.sleep(max(0.0, started + LEASE_S + 2 - time.monotonic()))  # frozen 5 s
    finally:
        leader.proc.signal(signal.SIGCONT)
    resumed_at = time.time()

    # The resumed replica answers as a follower of the new leader, at once and after.
    def follows() -> Reply | None:
        direct = leader.state(direct=True, timeout_s=2.0)
        return direct if direct is not None and direct.status == 508 else None

    _, took = c.wait(f"{leader.name} resumes as a follower", follows, timeout_s=3)
    measured("SIGCONT: resume to the old leader answering as a follower", took)
    time.sleep(2 * RETRY_S)  # room for a late write or a campaign of the resumed replica
    for _ in range(2):
        direct = leader.state(direct=True, timeout_s=2.0)
        assert direct is not None, c.logs()
        assert direct.status == 508, f"{direct}\n{c.logs()}"
        assert direct.headers.get(LEADER_HEADER) == new.name, direct.headers
        forwarded = leader.state(timeout_s=2.0)
        assert forwarded is not None, c.logs()
        assert forwarded.status == 200, f"{forwarded}\n{c.logs()}"
        assert forwarded.headers.get(LEADER_HEADER) == new.name, forwarded.headers
        assert forwarded.body["leader"] == new.name, forwarded.body
        assert forwarded.body["epoch"] == epoch, forwarded.body
    current, _ = c.only_leader()
    assert current is new

    # The store is held by the new epoch alone; the placement did not move.
    assert c.stored_epoch() == epoch, f"store fenced by {c.stored_epoch()}, want {epoch}"
    lease = c.lease()
    assert lease is not None, "no lease record"
    assert lease["holder"] == new.name, lease
    assert int(lease["epoch"]) == epoch, lease
    same_placement(c, new, before)
    assert c.stored_placement() == before
    agents_on_epoch(c, new, epoch, offsets)
    results_flow(c, new, before, resumed_at)
    hit_throughout(c, frozen_at, time.time(), limit_s=2.5)
    kept_running(c, offsets)


def test_redis_restart_the_leader_steps_down_and_a_leader_returns(
    redis_cluster: HaCluster,
) -> None:
    c = redis_cluster
    leader, state = c.only_leader()
    before = HaCluster.placement_of(state)
    offsets = c.log_offsets()

    down_at = time.time()
    started = time.monotonic()
    c.redis_server.stop()

    def stepped_down() -> Reply | None:
        reply = leader.state(timeout_s=1.0)
        return reply if reply is not None and reply.status in (503, 508) else None

    reply, took = c.wait(f"{leader.name} steps down", stepped_down, timeout_s=8)
    measured("Redis down: stop to the leader answering 503/508", took)
    bound = RENEW_DEADLINE_S + 1
    assert took <= bound, f"stepped down after {took:.2f} s (bound {bound} s)\n{c.logs()}"
    if reply.status == 503:
        assert reply.error_code() == "no_leader", reply
        assert reply.headers.get("Retry-After"), reply.headers
    assert c.leaders() == [], f"a replica leads without Redis\n{c.logs()}"

    def every_replica_says_no_leader() -> list[Reply] | None:
        replies = [r.state(timeout_s=1.0) for r in c.replicas]
        if all(x is not None and x.status == 503 for x in replies):
            return [x for x in replies if x is not None]
        return None

    # Followers forget the leader they last read once it may have stopped (a renew
    # deadline after Redis last answered): 503 no_leader, not a forward that meets 508.
    replies, _ = c.wait("every replica 503", every_replica_says_no_leader, timeout_s=8)
    took = time.monotonic() - started
    measured("Redis down: stop to every replica answering 503 no_leader", took)
    bound = RENEW_DEADLINE_S + 1
    assert took <= bound, f"every replica 503 after {took:.2f} s (bound {bound} s)\n{c.logs()}"
    assert [x.error_code() for x in replies] == ["no_leader"] * len(replies), replies

    time.sleep(0.5)
    c.redis_server.start()
    restarted = time.monotonic()
    new, body, took = c.wait_leader(timeout_s=15)
    measured("Redis back: restart to a leader's first 200", took)
    measured("Redis down: stop to a leader's first 200", time.monotonic() - started)
    bound = LEASE_S + RETRY_S + 2
    assert took <= bound, f"leader back after {took:.2f} s (bound {bound} s)\n{c.logs()}"
    assert body["epoch"] > state["epoch"], (body["epoch"], state["epoch"])
    assert time.monotonic() - restarted < bound + 2

    same_placement(c, new, before)
    assert c.stored_placement() == before
    assert c.stored_epoch() == body["epoch"]
    results_flow(c, new, before, time.time())
    agents_on_epoch(c, new, body["epoch"], offsets)
    c.only_leader()
    # The agents ran their checks through the outage: no dispatcher needed for that.
    hit_throughout(c, down_at, time.time(), limit_s=2.5)
    kept_running(c, offsets)


def test_memory_store_new_leader_warms_up_and_adopts_what_agents_run(
    memory_cluster: HaCluster,
) -> None:
    c = memory_cluster
    leader, state = c.only_leader()
    assert state["warmup"] is False, state
    before = HaCluster.placement_of(state)
    offsets = c.log_offsets()

    killed_at = time.time()
    started = time.monotonic()
    leader.proc.signal(signal.SIGKILL)
    survivors = [r for r in c.replicas if r is not leader]
    new, body, _ = c.wait_leader(survivors, timeout_s=15)
    first_reply = time.monotonic()
    took = measured(
        "memory store, kill -9: kill to the new leader's first 200", first_reply - started
    )
    assert took <= LEASE_S + RETRY_S + 1, f"new leader after {took:.2f} s\n{c.logs()}"
    assert body["epoch"] > state["epoch"], (body["epoch"], state["epoch"])
    assert body["warmup"] is True, f"a new leader with an empty store: {body}"
    # Its store is empty; what the agents report may be adopted already (rebuild from the
    # agents, tests/e2e/test_rebuild.py), and a source that re-sends changes nothing of it.
    assert body["totals"]["checks"] <= len(PATHS), body

    # The source re-sends its set through the other survivor (a follower). Until that
    # follower has seen the new lease (within a retry period) it answers 503 no_leader
    # with Retry-After, and the source retries (here sooner than it says).
    other = next(r for r in survivors if r is not new)

    def accepted() -> Reply | None:
        reply = other.call("PUT", f"{API}/sources/{SOURCE}", {"configs": c.configs()})
        if reply is not None and reply.status == 503:
            assert reply.error_code() == "no_leader", reply
            assert reply.headers.get("Retry-After"), reply.headers
            return None
        return reply

    put, _ = c.wait("the re-sent checks accepted", accepted, timeout_s=RETRY_S * 1.2 + 2)
    assert put.status == 200, f"{put}\n{c.logs()}"
    assert put.headers.get(LEADER_HEADER) == new.name, put.headers
    assert put.body["digests"] == [c.digests[p] for p in PATHS], put.body
    assert put.body["epoch"] == body["epoch"], put.body

    def warm() -> dict[str, Any] | None:
        current = new.leads()
        return current if current is not None and current["warmup"] is False else None

    warmed, _ = c.wait("warm-up over", warm, timeout_s=WARMUP_S + 6)
    warm_for = measured(
        "memory store: new leader's first 200 to warmup false", time.monotonic() - first_reply
    )
    assert WARMUP_S - 1 <= warm_for <= WARMUP_S + 2, f"warm-up lasted {warm_for:.2f} s"
    warm_at = time.time()

    placed = HaCluster.placement_of(warmed)
    assert placed == before, (
        f"adopted placement differs: "
        f"{ {c.key_of(d): (n, placed.get(d)) for d, n in before.items() if placed.get(d) != n} }"
        f"\n{c.logs()}"
    )
    assert warmed["dangling"] == [], warmed
    time.sleep(2 * HEARTBEAT_S)  # the agents fetch their sets after the warm-up
    same_placement(c, new, before)
    results_flow(c, new, before, warm_at)
    agents_on_epoch(c, new, body["epoch"], offsets)
    c.only_leader()
    hit_throughout(c, killed_at, time.time(), limit_s=2.5)
    kept_running(c, offsets)
