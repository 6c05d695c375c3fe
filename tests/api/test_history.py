"""GET /checks/{digest}/history: newest first, ``since`` and ``limit`` and their bounds,
uptime windows and duration percentiles, 404 for a check not held (and once dropped),
400 for a bad query, ``uptime_24h`` on /checks and /results, a follower forwarding."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from dispatcher.common.clock import FakeClock
from dispatcher.election.base import LeaderInfo
from dispatcher.engine import Dispatcher
from dispatcher.settings import DispatchSettings, ServerSettings, Settings
from tests.api.conftest import (
    ADMIN_TOKEN,
    API,
    AUTH,
    IDENTITY,
    SOURCE_TOKEN,
    Api,
    ApiFactory,
    check,
    follower_client,
    result,
)


def history_path(digest: str, query: str = "") -> str:
    return f"{API}/checks/{digest}/history{query}"


async def one_check(api: Api) -> str:
    await api.heartbeat("node-a", 0)
    [digest] = await api.put_source("ci", [check(0)])
    return digest


async def report(
    api: Api, digest: str, runs: list[tuple[float, bool, float]], clock: FakeClock
) -> None:
    """Posts runs given as (seconds before now, ok, duration) in one request."""
    now = clock.time()
    results = [
        result(digest, ok=ok, run_id=f"run-{i}", started_at=now - ago, duration_s=duration)
        for i, (ago, ok, duration) in enumerate(runs)
    ]
    body = await api.ok("POST", f"{API}/results/node-a", {"results": results})
    assert body["accepted"] == len(runs)


async def test_history_is_newest_first_with_uptime_and_percentiles(
    api: Api, clock: FakeClock
) -> None:
    digest = await one_check(api)
    # 2 h ago a failure, then three ok runs in the last hour.
    await report(
        api,
        digest,
        [(7200, False, 4.0), (1800, True, 0.2), (600, True, 0.3), (60, True, 0.1)],
        clock,
    )

    body = await api.ok("GET", history_path(digest))

    assert set(body) == {"digest", "results", "uptime", "duration_s"}
    assert body["digest"] == digest
    assert [r["run_id"] for r in body["results"]] == ["run-3", "run-2", "run-1", "run-0"]
    newest, oldest = body["results"][0], body["results"][-1]
    assert newest == {
        "run_id": "run-3",
        "node": "node-a",
        "ok": True,
        "errors": [],
        "started_at": clock.time() - 60,
        "duration_s": 0.1,
    }
    assert (oldest["ok"], oldest["errors"]) == (False, ["GET http://shop/healthz: 503"])
    assert body["uptime"] == {"1h": 1.0, "24h": 0.75, "7d": 0.75}
    assert body["duration_s"] == {"p50": 0.2, "p95": 4.0, "p99": 4.0}


async def test_a_check_without_runs_has_empty_history_and_null_uptime(api: Api) -> None:
    digest = await one_check(api)
    body = await api.ok("GET", history_path(digest))
    assert body == {
        "digest": digest,
        "results": [],
        "uptime": {"1h": None, "24h": None, "7d": None},
        "duration_s": {"p50": None, "p95": None, "p99": None},
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["run-4", "run-3", "run-2", "run-1", "run-0"]),
        ("?limit=2", ["run-4", "run-3"]),
        ("?limit=1", ["run-4"]),
        ("?limit=5000", ["run-4", "run-3", "run-2", "run-1", "run-0"]),
        ("?since={since}", ["run-4", "run-3"]),
        ("?since={since}&limit=1", ["run-4"]),
        ("?since=0", ["run-4", "run-3", "run-2", "run-1", "run-0"]),
    ],
)
async def test_since_and_limit(api: Api, clock: FakeClock, query: str, expected: list[str]) -> None:
    digest = await one_check(api)
    await report(api, digest, [(50 - 10 * i, True, 0.1) for i in range(5)], clock)
    # since is inclusive: run-3 ran exactly 20 s ago.
    body = await api.ok("GET", history_path(digest, query.format(since=clock.time() - 20)))
    assert [r["run_id"] for r in body["results"]] == expected


async def test_the_default_limit_is_500_and_the_count_bound_applies(
    make_api: ApiFactory, clock: FakeClock
) -> None:
    api = await make_api(Settings(dispatch=DispatchSettings(history_max_results=600)))
    digest = await one_check(api)
    await report(api, digest, [(1000 - i, i % 4 != 0, 0.1) for i in range(700)], clock)

    default = await api.ok("GET", history_path(digest))
    assert len(default["results"]) == 500
    assert default["results"][0]["run_id"] == "run-699"
    everything = await api.ok("GET", history_path(digest, "?limit=5000"))
    # The 100 oldest went when the 600 bound was reached.
    assert len(everything["results"]) == 600
    assert everything["results"][-1]["run_id"] == "run-100"
    assert everything["uptime"]["1h"] == 0.75


async def test_the_age_bound_applies_as_time_passes(make_api: ApiFactory, clock: FakeClock) -> None:
    api = await make_api(Settings(dispatch=DispatchSettings(history_max_age_s=3600)))
    digest = await one_check(api)
    await report(api, digest, [(1800, False, 0.1), (60, True, 0.1)], clock)
    assert (await api.ok("GET", history_path(digest)))["uptime"]["1h"] == 0.5

    clock.advance(2400)  # the failure is now 70 min old, past the 1 h bound

    body = await api.ok("GET", history_path(digest))
    assert [r["run_id"] for r in body["results"]] == ["run-1"]
    assert body["uptime"] == {"1h": 1.0, "24h": 1.0, "7d": 1.0}


@pytest.mark.parametrize(
    "query",
    [
        "?limit=0",
        "?limit=5001",
        "?limit=-1",
        "?limit=abc",
        "?limit=1.5",
        "?limit=",
        "?since=-1",
        "?since=nan",
        "?since=inf",
        "?since=yesterday",
    ],
)
async def test_a_bad_query_is_400_invalid_request(api: Api, query: str) -> None:
    digest = await one_check(api)
    reply = await api.get(history_path(digest, query))
    assert (reply.status, reply.code()) == (400, "invalid_request"), reply.text
    key = query[1:].partition("=")[0]
    assert reply.field_paths() == [f"query.{key}"]


@pytest.mark.parametrize(
    "digest", ["0" * 32, "9f2c4e7a1b3d5f60", "not-a-digest", "ABCDEF0123456789"]
)
async def test_a_check_not_held_is_404_unknown_check(api: Api, digest: str) -> None:
    await one_check(api)
    reply = await api.get(history_path(digest))
    assert (reply.status, reply.code()) == (404, "unknown_check"), reply.text


async def test_the_history_is_dropped_with_its_check(api: Api, clock: FakeClock) -> None:
    digest = await one_check(api)
    await report(api, digest, [(10, False, 0.1)], clock)
    await api.ok("DELETE", f"{API}/checks/{digest}")

    gone = await api.get(history_path(digest))
    assert (gone.status, gone.code()) == (404, "unknown_check")

    assert await api.put_source("ci", [check(0)]) == [digest]
    body = await api.ok("GET", history_path(digest))
    assert (body["results"], body["uptime"]["24h"]) == ([], None)


async def test_rejected_results_are_not_kept(api: Api, clock: FakeClock) -> None:
    digest = await one_check(api)
    await api.heartbeat("node-b", 0)
    reply = await api.ok(
        "POST", f"{API}/results/node-b", {"results": [result(digest, started_at=clock.time())]}
    )
    assert [r["reason"] for r in reply["rejected"]] == ["not_assigned"]
    assert (await api.ok("GET", history_path(digest)))["results"] == []


async def test_checks_and_results_carry_uptime_24h(api: Api, clock: FakeClock) -> None:
    await api.heartbeat("node-a", 0)
    d0, d1 = await api.put_source("ci", [check(0), check(1)])
    await report(api, d0, [(25 * 3600, True, 0.1), (120, False, 0.1), (60, True, 0.1)], clock)

    checks = {c["digest"]: c for c in (await api.ok("GET", f"{API}/checks"))["checks"]}
    assert (checks[d0]["uptime_24h"], checks[d1]["uptime_24h"]) == (0.5, None)
    assert (await api.check(d0))["uptime_24h"] == 0.5
    page = await api.ok("GET", f"{API}/results")
    assert page["checks"][d0]["uptime_24h"] == 0.5
    assert d1 not in page["checks"]


async def test_the_history_needs_the_admin_role(make_api: ApiFactory) -> None:
    api = await make_api(Settings(auth=AUTH), token=ADMIN_TOKEN)
    digest = await one_check(api)
    source = await api.get(history_path(digest), token=SOURCE_TOKEN)
    anonymous = await api.get(history_path(digest), token=None)
    assert (source.status, source.code()) == (403, "forbidden")
    assert anonymous.status == 401
    assert (await api.get(history_path(digest))).status == 200


async def test_a_follower_forwards_the_history_to_the_leader(
    api: Api, clock: FakeClock, aiohttp_client: AiohttpClient
) -> None:
    digest = await one_check(api)
    await report(api, digest, [(30, True, 0.1)], clock)
    leader_url = str(api.client.make_url("")).rstrip("/")
    follower = await follower_client(
        aiohttp_client,
        LeaderInfo(IDENTITY, leader_url, 1),
        settings=Settings(server=ServerSettings(identity="follower-1")),
    )

    forwarded = await follower.get(history_path(digest, "?limit=1"))

    assert forwarded.status == 200, forwarded.text
    assert forwarded.headers["X-Clusterchecks-Leader"] == IDENTITY
    body: dict[str, Any] = forwarded.json
    assert [r["run_id"] for r in body["results"]] == ["run-0"]
    assert body == (await api.ok("GET", history_path(digest, "?limit=1")))


async def test_history_max_results_0_keeps_no_history(
    make_api: ApiFactory, clock: FakeClock
) -> None:
    api = await make_api(Settings(dispatch=DispatchSettings(history_max_results=0)))
    digest = await one_check(api)
    await report(api, digest, [(120, False, 0.1), (60, True, 0.2)], clock)

    assert await api.ok("GET", history_path(digest)) == {
        "digest": digest,
        "results": [],
        "uptime": {"1h": None, "24h": None, "7d": None},
        "duration_s": {"p50": None, "p95": None, "p99": None},
    }
    assert (await api.check(digest))["uptime_24h"] is None
    page = await api.ok("GET", f"{API}/results")
    # The last result is still the status page's: only the history is off.
    assert (page["checks"][digest]["ok"], page["checks"][digest]["uptime_24h"]) == (True, None)


def test_settings_bounds_reach_the_state() -> None:
    dispatch = replace(
        DispatchSettings(), history_max_results=9, history_max_total=77, history_max_age_s=120.0
    )
    dispatcher = Dispatcher(settings=dispatch, clock=FakeClock())
    limits = dispatcher.new_state().history.limits
    assert (limits.max_results, limits.max_total, limits.max_age_s) == (9, 77, 120.0)
