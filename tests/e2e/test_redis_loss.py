"""End to end, Redis losing its data under a Redis pair: three dispatcher replicas
(``--election redis --store redis``) on a redis-server without persistence, three real
node agents, the checks put once through the API. Redis is restarted empty (or
flushed); the leader must put every check back in Redis by itself (no source re-sends
anything), with the same epoch, while the agents keep running every check; then a
``kill -9`` of the leader must leave a new leader that serves every check from Redis.

Lease 6 s, renew deadline 4 s (twice ha_cluster.py's), retry 1 s: the leader must keep
its term while redis-server is stopped and started again, and on a loaded CI machine
that took longer than 2 s once (the leader rightly stepped down, and the same-term
assertion failed). Every timing assertion is a bound derived from those settings; the
measured times are reported at the end of the module.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.ha_cluster import PATHS, RETRY_S, HaCluster, ha_cluster
from tests.e2e.harness import Timings, log_events
from tests.e2e.test_ha import (
    agents_on_epoch,
    hit_throughout,
    kept_running,
    results_flow,
    same_placement,
)

pytestmark = pytest.mark.e2e

TIMINGS = Timings("test_redis_loss")
measured = TIMINGS.measured

LEASE_S = 6.0
RENEW_DEADLINE_S = 4.0
"""Longer than a redis-server restart takes on a busy machine (see the docstring)."""
WRITER_PAUSE_S = min(0.5, RETRY_S)
"""The store writer's pause after a failed write or check (leadership.py)."""
BACK_IN_REDIS_S = RETRY_S + WRITER_PAUSE_S + 1
"""From Redis answering again to every check back in it: the leader's idle check runs
every retry period (a check that failed while Redis was away is followed by the
writer's pause first), then one claim and one write; 1 s of margin for the processes."""


@pytest.fixture(scope="module", autouse=True)
def report_timings(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    TIMINGS.report(request.config)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[HaCluster]:
    with ha_cluster(
        tmp_path,
        store="redis",
        persistent_redis=False,
        lease_s=LEASE_S,
        renew_deadline_s=RENEW_DEADLINE_S,
    ) as made:
        yield made


@pytest.mark.parametrize("loss", ["restart-empty", "flushall"])
def test_redis_loses_its_data_the_leader_writes_it_back_and_a_failover_finds_every_check(
    cluster: HaCluster, loss: str
) -> None:
    c = cluster
    leader, state = c.only_leader()
    epoch = state["epoch"]
    before = HaCluster.placement_of(state)
    digests = sorted(c.digests[p] for p in PATHS)
    expected: dict[str, Any] = {"configs": digests, "source": digests, "placement": before}
    assert c.stored_checks() == expected, "the store did not hold the checks before"
    offsets = c.log_offsets()
    leader_log = len(leader.proc.output())

    lost_at = time.time()
    if loss == "restart-empty":
        away = c.restart_redis_empty()
        measured(f"{loss}: redis-server stopped and answering again, empty", away)
    else:
        c.flushall()
    back = time.monotonic()

    def restored() -> bool:
        return c.stored_checks() == expected

    _, took = c.wait("every check back in Redis", restored, timeout_s=BACK_IN_REDIS_S + 5)
    measured(f"{loss}: Redis answering (empty) to every check back in it", took)
    assert took <= BACK_IN_REDIS_S, (
        f"every check back in Redis after {took:.2f} s (bound {BACK_IN_REDIS_S:g} s)\n{c.logs()}"
    )
    assert c.stored_epoch() == epoch, "the store was claimed by another epoch"

    # The same leader, the same term: the lease given back with its epoch, no new term.
    def lease_back() -> dict[str, Any] | None:
        return c.lease()

    lease, _ = c.wait("the lease given back", lease_back, timeout_s=RETRY_S + 2)
    assert lease["holder"] == leader.name, f"{lease}\n{c.logs()}"
    assert int(lease["epoch"]) == epoch, lease
    current, body = c.only_leader()
    assert current is leader, f"{current.name} leads, not {leader.name}\n{c.logs()}"
    assert body["epoch"] == epoch
    assert body["warmup"] is False
    measured(f"{loss}: Redis answering (empty) to the leader confirmed", time.monotonic() - back)
    since = leader.proc.output()[leader_log:]
    rewritten = log_events(since, "store_lost_rewritten")
    assert rewritten, f"no repair logged\n{leader.tail()}"
    assert rewritten[0]["configs"] == len(PATHS), rewritten
    assert rewritten[0]["epoch"] == epoch, rewritten
    assert not log_events(since, "started_leading"), f"a new term began\n{leader.tail()}"
    # Nothing re-sent, nothing placed again: the checks came back from the leader's state.
    assert not log_events(since, "source_replaced"), f"a source re-sent\n{leader.tail()}"
    assert not log_events(since, "dispatch_decision"), f"checks placed again\n{leader.tail()}"

    # The agents kept running every check, on the same epoch, reporting to the leader.
    agents_on_epoch(c, leader, epoch, offsets)
    results_flow(c, leader, before, time.time())
    hit_throughout(c, lost_at, time.time(), limit_s=2.5)
    kept_running(c, offsets)

    # A later failover finds every check in Redis, where it was.
    offsets = c.log_offsets()
    killed_at = time.time()
    started = time.monotonic()
    leader.proc.signal(signal.SIGKILL)
    survivors = [r for r in c.replicas if r is not leader]
    new, body, _ = c.wait_leader(survivors, timeout_s=15)
    took = measured(
        f"{loss}, then kill -9: kill to the new leader's first 200", time.monotonic() - started
    )
    leader.proc.wait(timeout_s=5)
    bound = LEASE_S + RETRY_S + 1
    assert took <= bound, f"new leader after {took:.2f} s (bound {bound:g} s)\n{c.logs()}"
    assert body["epoch"] > epoch, (body["epoch"], epoch)
    assert body["warmup"] is False, "the new leader found the store empty"
    assert body["totals"]["checks"] == len(PATHS), body["totals"]
    same_placement(c, new, before)
    assert c.stored_checks() == expected
    assert c.stored_epoch() == body["epoch"]
    results_flow(c, new, before, killed_at)
    agents_on_epoch(c, new, body["epoch"], offsets)
    c.only_leader()
    hit_throughout(c, killed_at, time.time(), limit_s=2.5)
    kept_running(c, offsets)
