"""Admin routes: state, checks (with explain and last result), rebalance, cordon,
uncordon, drain, isolate and the results status page."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dispatcher.common.clock import FakeClock
from dispatcher.settings import DispatchSettings, Settings
from tests.api.conftest import API, IDENTITY, Api, ApiFactory, check, result

# -------------------------------------------------------------------- state


async def test_state_of_an_empty_dispatcher(api: Api) -> None:
    body = await api.state()
    assert body == {
        "leader": IDENTITY,
        "is_leader": True,
        "epoch": api.service.dispatcher.epoch,
        "warmup": False,
        "nodes": [],
        "dangling": [],
        "totals": {"nodes": 0, "checks": 0, "dispatched": 0, "dangling": 0},
    }


async def test_state_lists_nodes_dangling_checks_and_totals(api: Api, clock: FakeClock) -> None:
    await api.heartbeat("node-b", 0, labels={"zone": "eu"})
    await api.heartbeat("node-a", 0)
    digests = await api.put_source("ci", [check(0), check(1)])
    [dangling] = await api.put_source("other", [check(2, node_selector={"zone": "mars"})])
    clock.advance(2.5)

    body = await api.state()

    assert [n["name"] for n in body["nodes"]] == ["node-a", "node-b"]
    for node in body["nodes"]:
        assert set(node) >= {
            "name",
            "labels",
            "heartbeat_age_s",
            "last_change",
            "cordoned",
            "busyness",
            "configs",
        }
        assert node["heartbeat_age_s"] == pytest.approx(2.5)
        assert node["cordoned"] is False
        assert isinstance(node["busyness"], float)
        assert len(node["configs"]) == 1
    assert body["nodes"][1]["labels"] == {"zone": "eu"}
    assert sorted(c for n in body["nodes"] for c in n["configs"]) == sorted(digests)
    assert body["dangling"] == [dangling]
    assert body["totals"] == {"nodes": 2, "checks": 3, "dispatched": 2, "dangling": 1}


# ------------------------------------------------------------------- checks


async def test_checks_lists_every_check_with_its_node_and_last_result(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    d0, d1 = await api.put_source("ci", [check(0), check(1)])
    await api.ok("POST", f"{API}/results/node-a", {"results": [result(d0, ok=False)]})

    body = await api.ok("GET", f"{API}/checks")

    assert set(body) == {"checks"}
    by_digest = {c["digest"]: c for c in body["checks"]}
    assert set(by_digest) == {d0, d1}
    assert by_digest[d0]["node"] == "node-a"
    assert by_digest[d0]["sources"] == ["ci"]
    assert by_digest[d0]["last_result"]["ok"] is False
    assert by_digest[d0]["last_result"]["errors"] == ["GET http://shop/healthz: 503"]
    assert by_digest[d1]["last_result"] is None


async def test_one_check_has_its_config_last_result_and_explain(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    [digest] = await api.put_source("ci", [check(0, weight=2.0)])
    await api.ok("POST", f"{API}/results/node-a", {"results": [result(digest)]})

    body = await api.check(digest)

    assert body["digest"] == digest
    assert body["name"] == "http"
    assert body["weight"] == 2.0
    assert body["node"] == "node-a"
    assert body["last_result"]["ok"] is True
    assert body["last_result"]["node"] == "node-a"
    assert isinstance(body["explain"], str)
    assert "node-a" in body["explain"]


async def _explain_no_node(api: Api) -> str:
    return (await api.put_source("ci", [check(0)]))[0]


async def _explain_selector(api: Api) -> str:
    await api.heartbeat("node-a", 0, labels={"zone": "eu"})
    return (await api.put_source("ci", [check(0, node_selector={"zone": "us"})]))[0]


async def _explain_cordoned(api: Api) -> str:
    await api.heartbeat("node-a", 0)
    await api.ok("POST", f"{API}/nodes/node-a/cordon")
    return (await api.put_source("ci", [check(0)]))[0]


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        pytest.param(_explain_no_node, ["no node"], id="no-node"),
        pytest.param(_explain_selector, ["selector"], id="no-eligible-node"),
        pytest.param(_explain_cordoned, ["cordoned"], id="every-eligible-node-cordoned"),
    ],
)
async def test_explain_says_why_a_check_dangles(api: Api, setup: Any, words: list[str]) -> None:
    digest = await setup(api)
    assert (await api.state())["dangling"] == [digest]

    explain = (await api.check(digest))["explain"]

    assert explain.startswith("Dangling")
    for word in words:
        assert word in explain.lower()


async def test_explain_during_warmup(make_api: ApiFactory) -> None:
    api = await make_api(Settings(dispatch=DispatchSettings(warmup_duration_s=30)))
    await api.heartbeat("node-a", 0)
    [digest] = await api.put_source("ci", [check(0)])

    explain = (await api.check(digest))["explain"]

    assert "warming up" in explain


@pytest.mark.parametrize(
    "digest", ["ffffffffffffffffffffffffffffffff", "NOT-A-DIGEST", "0" * 15, "a" * 300]
)
async def test_a_check_not_held_is_404_unknown_check(api: Api, digest: str) -> None:
    await api.put_source("ci", [check(0)])
    reply = await api.get(f"{API}/checks/{digest}")
    assert reply.status == 404
    assert reply.code() == "unknown_check"


# ---------------------------------------------------------------- rebalance


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="no-body"),
        pytest.param({}, id="empty-object"),
        pytest.param({"force": True, "dry_run": False}, id="force"),
        pytest.param({"force": False, "dry_run": True}, id="dry-run"),
    ],
)
async def test_rebalance_takes_an_optional_body_and_never_moves_checks_that_have_not_run(
    api: Api, body: dict[str, Any] | None
) -> None:
    await api.heartbeat("node-a", 0)
    await api.put_source("ci", [check(n) for n in range(4)])
    await api.heartbeat("node-b", 0)
    before = await api.snapshot()

    if body is None:
        reply = await api.post(f"{API}/rebalance")
    else:
        reply = await api.post(f"{API}/rebalance", body)

    assert reply.status == 200, reply.text
    assert set(reply.json) >= {"applied", "moves", "outcome", "spread_before", "spread_after"}
    assert reply.json["applied"] is False
    assert reply.json["outcome"] == "nothing_to_move"  # all four on node-a, none has run
    assert reply.json["spread_before"] == reply.json["spread_after"] == 1.0
    assert reply.json["moves"] == []
    assert await api.snapshot() == before
    again = await api.ok("POST", f"{API}/rebalance")
    assert again["moves"] == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param({"force": "yes"}, "invalid_request", id="force-not-bool"),
        pytest.param({"apply": True}, "invalid_request", id="unknown-field"),
        pytest.param([], "invalid_request", id="not-an-object"),
    ],
)
async def test_rebalance_with_a_bad_body_is_400(api: Api, body: Any, code: str) -> None:
    reply = await api.post(f"{API}/rebalance", body)
    assert reply.status == 400, reply.text
    assert reply.code() == code


# --------------------------------------------------- cordon, uncordon, drain


@pytest.mark.parametrize("action", ["cordon", "uncordon", "drain"])
async def test_node_actions_on_an_unknown_node_are_404_unknown_node(api: Api, action: str) -> None:
    await api.heartbeat("node-a", 0)
    before = await api.snapshot()

    reply = await api.post(f"{API}/nodes/ghost/{action}")

    assert reply.status == 404, reply.text
    assert reply.code() == "unknown_node"
    assert await api.snapshot() == before


async def test_cordon_keeps_new_checks_off_the_node_and_uncordon_undoes_it(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    [kept] = await api.put_source("ci", [check(0)])

    reply = await api.post(f"{API}/nodes/node-a/cordon")

    assert reply.status == 200, reply.text
    node = reply.json
    assert node["name"] == "node-a"
    assert node["cordoned"] is True
    assert node["configs"] == [kept]  # cordon moves nothing
    [new] = await api.put_source("more", [check(1)])
    assert (await api.state())["dangling"] == [new]

    reply = await api.post(f"{API}/nodes/node-a/uncordon")

    assert reply.status == 200, reply.text
    assert reply.json["cordoned"] is False
    assert sorted(reply.json["configs"]) == sorted([kept, new])
    assert (await api.state())["dangling"] == []


async def test_drain_cordons_and_moves_the_checks_away_now(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    digests = await api.put_source("ci", [check(0), check(1)])
    await api.heartbeat("node-b", 0)

    reply = await api.post(f"{API}/nodes/node-a/drain")

    assert reply.status == 200, reply.text
    assert reply.json["name"] == "node-a"
    assert reply.json["cordoned"] is True
    assert reply.json["configs"] == []
    placement = await api.placement()
    assert all(placement[d] == "node-b" for d in digests)
    [new] = await api.put_source("more", [check(2)])
    assert (await api.placement())[new] == "node-b"


# ------------------------------------------------------------------ isolate


async def _three_checks_on_two_nodes(api: Api) -> tuple[str, list[str]]:
    """Returns a check on node-a and the other checks on node-a."""
    await api.heartbeat("node-a", 0)
    digests = await api.put_source("ci", [check(0), check(1), check(2)])
    await api.heartbeat("node-b", 0)
    placement = await api.placement()
    on_a = sorted(d for d in digests if placement[d] == "node-a")
    assert len(on_a) == 3
    return on_a[0], on_a[1:]


async def test_isolate_keeps_the_check_cordons_its_node_and_moves_the_others(
    api: Api,
) -> None:
    target, others = await _three_checks_on_two_nodes(api)

    reply = await api.post(f"{API}/isolate/{target}")

    assert reply.status == 200, reply.text
    body = reply.json
    assert body["digest"] == target
    assert body["node"] == "node-a"
    assert sorted(m["digest"] for m in body["moves"]) == others
    for move in body["moves"]:
        assert move["source_node"] == "node-a"
        assert move["dest_node"] == "node-b"
        assert move["check_name"] == "http"
        assert move["weight"] > 0
    node_a = await api.node("node-a")
    assert node_a is not None
    assert node_a["cordoned"] is True
    assert node_a["configs"] == [target]

    await api.ok("POST", f"{API}/nodes/node-a/uncordon")

    node_a = await api.node("node-a")
    assert node_a is not None
    assert node_a["cordoned"] is False


@pytest.mark.parametrize("digest", ["ffffffffffffffffffffffffffffffff", "NOT-A-DIGEST"])
async def test_isolate_of_a_check_not_held_is_404_unknown_check(api: Api, digest: str) -> None:
    await api.heartbeat("node-a", 0)
    await api.put_source("ci", [check(0)])
    before = await api.snapshot()

    reply = await api.post(f"{API}/isolate/{digest}")

    assert reply.status == 404
    assert reply.code() == "unknown_check"
    assert await api.snapshot() == before


async def test_isolate_of_a_dangling_check_is_409_not_dispatched(api: Api) -> None:
    [digest] = await api.put_source("ci", [check(0)])
    before = await api.snapshot()

    reply = await api.post(f"{API}/isolate/{digest}")

    assert reply.status == 409
    assert reply.code() == "not_dispatched"
    assert await api.snapshot() == before


async def test_isolate_with_nowhere_to_move_the_others_is_409_and_changes_nothing(
    api: Api,
) -> None:
    await api.heartbeat("node-a", 0)
    digest, _ = await api.put_source("ci", [check(0), check(1)])
    before = await api.snapshot()

    reply = await api.post(f"{API}/isolate/{digest}")

    assert reply.status == 409
    assert reply.code() == "no_other_node"
    assert await api.snapshot() == before
    node = await api.node("node-a")
    assert node is not None
    assert node["cordoned"] is False


# ------------------------------------------------------------- status page


async def test_results_page_of_a_new_dispatcher_is_ok(api: Api) -> None:
    assert await api.ok("GET", f"{API}/results") == {"ok": True, "errors": [], "checks": {}}


async def test_results_page_is_not_ok_while_a_last_result_failed(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    bad, good = await api.put_source("ci", [check(0), check(1)])
    url = f"{API}/results/node-a"
    await api.ok("POST", url, {"results": [result(bad, started_at=100.0), result(good)]})
    await api.ok("POST", url, {"results": [result(bad, ok=False, started_at=200.0)]})
    await api.ok(
        "POST", url, {"results": [result(bad, ok=False, started_at=300.0, errors=["timeout"])]}
    )

    page = await api.ok("GET", f"{API}/results")

    assert page["ok"] is False
    assert len(page["errors"]) == 1
    assert "timeout" in page["errors"][0]
    assert set(page["checks"]) == {bad, good}
    failing = page["checks"][bad]
    assert failing["name"] == "http"
    assert failing["node"] == "node-a"
    assert failing["ok"] is False
    assert failing["errors"] == ["timeout"]
    assert failing["last_run_at"] == 300.0
    assert failing["duration_s"] == 0.21
    assert failing["consecutive_failures"] == 2
    assert failing["success_count"] == 1
    assert failing["failure_count"] == 2
    assert failing["last_ok_at"] == pytest.approx(100.21)
    assert page["checks"][good]["ok"] is True
    assert page["checks"][good]["consecutive_failures"] == 0

    await api.ok("POST", url, {"results": [result(bad, started_at=400.0)]})

    page = await api.ok("GET", f"{API}/results")
    assert page["ok"] is True
    assert page["errors"] == []
    assert page["checks"][bad]["consecutive_failures"] == 0
    assert page["checks"][bad]["success_count"] == 2
    assert page["checks"][bad]["failure_count"] == 2


def stats(cost_by_digest: dict[str, float], interval_s: float = 15.0) -> dict[str, Any]:
    """Heartbeat stats that price each check at ``cost`` (avg execution / interval)."""
    return {
        d: {"avg_execution_s": cost * interval_s, "runs": 3, "errors": 0,
            "last_error": None, "last_run_at": 1_763_700_000.0}
        for d, cost in cost_by_digest.items()
    }  # fmt: skip


async def loaded_node_a(api: Api, costs: list[float]) -> list[str]:
    """node-a holds checks of these measured costs, each with an ok result; node-b is
    registered afterwards, empty."""
    await api.heartbeat("node-a", 0)
    digests = await api.put_source("ci", [check(n) for n in range(len(costs))])
    await api.heartbeat("node-a", -1, stats=stats(dict(zip(digests, costs, strict=True))))
    await api.post(f"{API}/results/node-a", {"results": [result(d) for d in digests]})
    await api.heartbeat("node-b", 0)
    return digests


async def test_a_rebalance_relieves_the_heavy_node_and_counts_itself(api: Api) -> None:
    digests = await loaded_node_a(api, [0.05, 0.02, 0.1, 0.2])

    dry = await api.ok("POST", f"{API}/rebalance", {"dry_run": True})
    assert (dry["applied"], dry["outcome"]) == (False, "dry_run")
    assert (await api.state())["nodes"][1]["configs"] == [], "a dry run moves nothing"

    done = await api.ok("POST", f"{API}/rebalance", {})

    assert (done["applied"], done["outcome"]) == (True, "applied")
    assert done["moves"] == dry["moves"], "the dry run showed the plan that was applied"
    [move] = done["moves"]  # 0.37 vs 0: moving the 0.2 check brings both within 10 %
    assert move == {
        "digest": digests[3], "check_name": "http", "weight": 0.2,
        "source_node": "node-a", "dest_node": "node-b",
        "source_load_before": 0.37, "source_load_after": 0.17,
        "dest_load_before": 0.0, "dest_load_after": 0.2,
    }  # fmt: skip
    assert done["mean_load"] == pytest.approx(0.185, abs=1e-6)
    assert done["spread_before"] == pytest.approx(0.37 / 0.185 - 1, abs=1e-6)
    assert done["spread_after"] == pytest.approx(0.2 / 0.185 - 1, abs=1e-6)
    nodes = {n["name"]: n for n in (await api.state())["nodes"]}
    assert nodes["node-b"]["configs"] == [digests[3]]

    again = await api.ok("POST", f"{API}/rebalance", {"force": True})
    assert (again["applied"], again["outcome"], again["moves"]) == (False, "nothing_to_move", [])

    registry = api.service.metrics.registry
    runs = "clusterchecks_rebalances_total"
    assert registry.get_sample_value(runs, {"trigger": "api", "outcome": "dry_run"}) == 1
    assert registry.get_sample_value(runs, {"trigger": "api", "outcome": "applied"}) == 1
    assert registry.get_sample_value(runs, {"trigger": "api", "outcome": "nothing_to_move"}) == 1
    moves = registry.get_sample_value(
        "clusterchecks_rebalance_moves_total", {"trigger": "rebalance"}
    )
    assert moves == 1
    assert registry.get_sample_value("clusterchecks_rebalance_duration_seconds_count") == 3


async def test_a_small_gain_is_not_applied_unless_forced(make_api: ApiFactory) -> None:
    api = await make_api(Settings(dispatch=DispatchSettings(rebalance_min_gain=0.6)))
    digests = await loaded_node_a(api, [0.3, 0.1])

    # Mean 0.2: only the 0.1 check fits on node-b; node-a stays at 0.3, so the spread
    # goes from 100 % to 50 % of the mean: a gain of 0.5, under the minimum of 0.6.
    held = await api.ok("POST", f"{API}/rebalance", {})

    assert (held["applied"], held["outcome"]) == (False, "gain_too_small")
    assert [m["digest"] for m in held["moves"]] == [digests[1]], "the plan is shown"
    assert held["spread_before"] == pytest.approx(1.0)
    assert held["spread_after"] == pytest.approx(0.5)
    assert (await api.state())["nodes"][1]["configs"] == []

    forced = await api.ok("POST", f"{API}/rebalance", {"force": True})
    assert (forced["applied"], forced["outcome"]) == (True, "applied")
    nodes = {n["name"]: n for n in (await api.state())["nodes"]}
    assert nodes["node-b"]["configs"] == [digests[1]]


async def test_a_failing_check_stays_even_on_the_heavy_node(api: Api) -> None:
    digests = await loaded_node_a(api, [0.3, 0.01])
    await api.post(f"{API}/results/node-a", {"results": [result(digests[0], ok=False)]})

    reply = await api.ok("POST", f"{API}/rebalance", {"force": True})

    # Only the cheap check may move: the failing 0.3 one, the better move, stays.
    assert [m["digest"] for m in reply["moves"]] == [digests[1]]
    nodes = {n["name"]: n for n in (await api.state())["nodes"]}
    assert nodes["node-a"]["configs"] == [digests[0]]


async def test_the_leader_rebalances_every_period_by_itself(
    make_api: ApiFactory, clock: FakeClock
) -> None:
    api = await make_api(Settings(dispatch=DispatchSettings(rebalance_period_s=10.0)))
    digests = await loaded_node_a(api, [0.05, 0.02, 0.1, 0.2])
    stop = asyncio.Event()
    loops = asyncio.create_task(api.service.dispatcher.run(stop))
    registry = api.service.metrics.registry
    runs = {"trigger": "periodic", "outcome": "applied"}
    idle = {"trigger": "periodic", "outcome": "nothing_to_move"}

    def count(labels: dict[str, str]) -> float:
        return registry.get_sample_value("clusterchecks_rebalances_total", labels) or 0.0

    try:
        await clock.run_for(9.9)
        assert (count(runs), count(idle)) == (0, 0), "no rebalance before the first period"
        await clock.run_for(0.1)
        assert (count(runs), count(idle)) == (1, 0)
        # The next period finds nothing to move (a second run moves nothing).
        await clock.run_for(10.0)
        assert (count(runs), count(idle)) == (1, 1)
    finally:
        stop.set()
        await loops
    nodes = {n["name"]: n for n in (await api.state())["nodes"]}
    assert nodes["node-b"]["configs"] == [digests[3]]
