"""End to end: ``/replicas`` of a Redis-backed pair of real dispatcher processes.

Each replica writes its status to Redis every ``--replica-status-period`` (0.5 s here)
with a time-to-live of three periods. The leader answers ``/replicas`` (a follower
forwards it) with both replicas; a replica stopped with SIGTERM leaves the list at
once, one killed with -9 leaves it once its record lapses.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import API, call, wait_until
from tests.processes import Proc, dispatcher_argv, free_port, wait_http_ok
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

PERIOD_S = 0.5
TTL_S = 3 * PERIOD_S
TOKEN = "admin-token-for-replicas"


def start_replica(tmp_path: Path, redis_url: str) -> tuple[Proc, str]:
    port = free_port()
    argv = dispatcher_argv(
        port,
        "--election", "redis",
        "--store", "redis",
        "--redis-url", redis_url,
        "--lease-duration", "3",
        "--renew-deadline", "2",
        "--retry-period", "0.5",
        "--replica-status-period", str(PERIOD_S),
        "--admin-token", TOKEN,
    )  # fmt: skip
    proc = Proc(f"dispatcher-{port}", argv, tmp_path / f"dispatcher-{port}.log").start()
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def pair(
    tmp_path: Path,
    redis_server: RedisServer,
) -> Iterator[list[tuple[Proc, str]]]:
    replicas = [start_replica(tmp_path, redis_server.url) for _ in range(2)]
    try:
        for proc, url in replicas:
            wait_http_ok(f"{url}/healthz", proc=proc)
        yield replicas
    finally:
        for proc, _ in replicas:
            proc.stop(timeout_s=8)


def replicas_via(url: str) -> list[dict[str, Any]] | None:
    reply = call("GET", f"{url}{API}/replicas", token=TOKEN, timeout_s=3)
    if reply.status != 200:
        return None
    found = reply.body["replicas"]
    assert isinstance(found, list)
    return found


def logs(pair: list[tuple[Proc, str]]) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.output()[-2000:]}" for p, _ in pair)


def test_the_leader_lists_both_replicas_of_a_redis_pair(pair: list[tuple[Proc, str]]) -> None:
    (proc_a, url_a), (proc_b, url_b) = pair
    names = {
        url_a: f"dispatcher-{url_a.rsplit(':', 1)[1]}",
        url_b: f"dispatcher-{url_b.rsplit(':', 1)[1]}",
    }

    def both_known() -> list[dict[str, Any]] | None:
        found = replicas_via(url_a)
        roles = sorted(r["role"] for r in found or [])
        return found if roles == ["follower", "leader"] else None

    found, _ = wait_until(
        both_known, timeout_s=15, what="both replicas listed", context=lambda: logs(pair)
    )
    by_url = {r["url"]: r for r in found}
    assert set(by_url) == {url_a, url_b}
    for url, replica in by_url.items():
        assert replica["identity"] == names[url]
        assert replica["status"] == "healthy"
        assert replica["ready"] is True
        assert replica["epoch"] > 0
        assert 0 <= replica["age_s"] <= TTL_S
        assert replica["reported_at"] > 1_700_000_000
    assert by_url[url_a]["epoch"] == by_url[url_b]["epoch"], "both know the same term"
    assert [r["identity"] for r in found] == sorted(names.values())

    # The follower forwards to the leader: the same list from either replica.
    via_b = replicas_via(url_b)
    assert via_b is not None
    assert {r["identity"] for r in via_b} == set(names.values())

    leader_url = next(u for u, r in by_url.items() if r["role"] == "leader")
    follower_url = url_b if leader_url == url_a else url_a
    # The dashboard on the follower: its page is served there, its API calls forwarded.
    page = call("GET", f"{follower_url}/ui/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    overview = call("GET", f"{follower_url}{API}/overview", token=TOKEN, timeout_s=3)
    assert overview.status == 200, overview
    assert overview.body["leader"] == by_url[leader_url]["identity"]
    assert overview.body["is_leader"] is True  # answered by the leader, through the follower
    assert {r["identity"] for r in overview.body["replicas"]} == set(names.values())

    # SIGTERM: the stopped replica removes its own record on the way out.
    follower_proc = proc_b if follower_url == url_b else proc_a
    follower_proc.signal(signal.SIGTERM)
    assert follower_proc.wait(timeout_s=8) == 0
    after = replicas_via(leader_url)
    assert after is not None
    assert [r["url"] for r in after] == [leader_url], "a graceful stop leaves the list at once"


def test_a_killed_replica_drops_out_once_its_record_lapses(
    pair: list[tuple[Proc, str]],
) -> None:
    (proc_a, url_a), (proc_b, _) = pair

    def leader_url() -> str | None:
        found = replicas_via(url_a)
        if found is None or len(found) != 2:
            return None
        return next((r["url"] for r in found if r["role"] == "leader"), None)

    leader, _ = wait_until(leader_url, timeout_s=15, what="a leader", context=lambda: logs(pair))
    victim = proc_b if leader == url_a else proc_a
    victim.signal(signal.SIGKILL)
    victim.wait(timeout_s=5)

    def only_leader() -> list[dict[str, Any]] | None:
        found = replicas_via(leader)
        return found if found is not None and len(found) == 1 else None

    found, took = wait_until(
        only_leader, timeout_s=TTL_S + 3, what="the killed replica lapsed",
        context=lambda: logs(pair),
    )  # fmt: skip
    assert found[0]["url"] == leader
    assert took <= TTL_S + 1.5, took
