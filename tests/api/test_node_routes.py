"""Node-agent routes: status (heartbeat), configs (with the long poll), results."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from dispatcher.common.clock import FakeClock
from dispatcher.settings import DispatchSettings, Settings
from tests.api.conftest import API, IDENTITY, Api, ApiFactory, Reply, check, result

# ------------------------------------------------------------------- status

EPOCH = 1_763_700_000_000  # the FakeClock's wall time in ms: the standalone epoch
# Fails a long poll that hangs instead of waiting for pytest's timeout; never reached when
# the code is right (the long polls wait on the fake clock, which moves only by hand).
GUARD_S = 10.0


async def start_long_poll(api: Api, clock: FakeClock, query: str) -> asyncio.Task[Reply]:
    """Sends a long poll of node-a and returns once it waits on the clock (its deadline is
    a pending timer), so the test's next step happens during the wait."""
    timers = clock.pending_timers()
    poll = asyncio.create_task(api.get(f"{API}/configs/node-a?{query}"))
    waiting = asyncio.ensure_future(clock.wait_for_timers(timers + 1))
    async with asyncio.timeout(GUARD_S):
        await asyncio.wait({poll, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert not poll.done(), poll.result().text
    return poll


async def answer(poll: asyncio.Task[Reply]) -> Reply:
    """The poll's reply, which must come without the clock being moved on."""
    async with asyncio.timeout(GUARD_S):
        return await poll


async def test_first_heartbeat_registers_the_node_and_replies_with_the_contract(
    make_api: ApiFactory,
) -> None:
    settings = Settings(
        dispatch=DispatchSettings(heartbeat_interval_s=7.5, node_expiration_timeout_s=21.0)
    )
    api = await make_api(settings)
    assert (await api.state())["nodes"] == []

    reply = await api.post(
        f"{API}/status/node-a", {"last_change": 0, "labels": {"zone": "eu-1a"}, "capacity": 8}
    )

    assert reply.status == 200, reply.text
    body = reply.json
    assert set(body) == {
        "is_up_to_date",
        "epoch",
        "leader",
        "heartbeat_interval_s",
        "node_expiration_timeout_s",
        "warmup",  # an extension of API.md: agents keep their checks while it is true
        "send_running_configs",  # API.md, rebuild from the agents (extension)
        "results_interval_s",  # an extension: the fleet's results posts paced
    }
    assert body["warmup"] is False
    assert body["send_running_configs"] is False  # not warming up: nothing to rebuild
    assert body["is_up_to_date"] is False  # a new node has configs to fetch
    assert isinstance(body["epoch"], int)
    assert body["epoch"] == api.service.dispatcher.epoch > 0
    assert body["leader"] == IDENTITY
    assert body["heartbeat_interval_s"] == 7.5
    assert body["node_expiration_timeout_s"] == 21.0
    node = await api.node("node-a")
    assert node is not None
    assert node["labels"] == {"zone": "eu-1a"}
    assert node["capacity"] == 8
    assert node["cordoned"] is False
    assert node["last_change"] > 0


@pytest.mark.parametrize(
    ("posts_per_s", "nodes", "expected"),
    [
        (1000.0, 1, 0.1),  # a small fleet: the agents' own flush interval (1 s) applies
        (2.0, 5, 2.5),  # 5 nodes at 2 posts a second: each posts every 2.5 s
        (2.0, 7, 3.5),
        (1.0, 20, 20.0),
        (1.0, 30, 22.5),  # never beyond three heartbeat intervals
    ],
)
async def test_the_status_reply_paces_results_posts_to_the_fleets_size(
    make_api: ApiFactory, posts_per_s: float, nodes: int, expected: float
) -> None:
    settings = Settings(
        dispatch=DispatchSettings(
            heartbeat_interval_s=7.5, node_expiration_timeout_s=21.0, result_posts_per_s=posts_per_s
        )
    )
    api = await make_api(settings)
    for n in range(nodes - 1):
        await api.heartbeat(f"node-{n}", 0)  # asserts a 200
    reply = await api.post(f"{API}/status/node-last", {"last_change": 0})
    assert reply.status == 200, reply.text
    assert reply.json["results_interval_s"] == expected


async def test_routine_agent_requests_log_at_debug_and_their_failures_at_info(api: Api) -> None:
    """At 10,000 agents a line per heartbeat is thousands a second: a routine request that
    succeeds is logged at debug; one that fails, and every other route, at info."""
    with capture_logs() as logs:
        await api.heartbeat("node-a", 0)  # asserts a 200
        assert (await api.get(f"{API}/configs/node-a")).status == 200
        assert (await api.get(f"{API}/configs/node-gone")).status == 404
        assert (await api.get(API)).status == 200
    levels = {(e["route"], e["status"]): e["log_level"] for e in logs if e["event"] == "request"}
    assert levels == {
        ("node_status", 200): "debug",
        ("node_configs", 200): "debug",
        ("node_configs", 404): "info",
        ("state", 200): "info",
    }


async def test_capacity_defaults_to_one(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    node = await api.node("node-a")
    assert node is not None
    assert node["capacity"] == 1


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        pytest.param(lambda current: -1, True, id="minus-one-is-heartbeat-only"),
        pytest.param(lambda current: current, True, id="equal-to-the-node-counter"),
        pytest.param(lambda current: 0, False, id="older-counter"),
        pytest.param(lambda current: current + 1000, False, id="unknown-newer-counter"),
    ],
)
async def test_is_up_to_date_rules(api: Api, sent: Any, expected: bool) -> None:
    await api.heartbeat("node-a", 0)
    current = (await api.configs("node-a"))["last_change"]
    assert current > 0

    body = await api.heartbeat("node-a", sent(current))

    assert body["is_up_to_date"] is expected


async def test_is_up_to_date_while_the_leader_warms_up(
    make_api: ApiFactory, clock: FakeClock
) -> None:
    api = await make_api(Settings(dispatch=DispatchSettings(warmup_duration_s=30.0)))
    assert (await api.state())["warmup"] is True
    assert (await api.heartbeat("node-a", 0))["is_up_to_date"] is True
    reply = await api.heartbeat("node-a", 123_456)
    assert reply["is_up_to_date"] is True
    assert reply["warmup"] is True, "agents must learn that the leader is warming up"
    assert (await api.configs("node-a"))["warmup"] is True

    clock.advance(31)

    assert (await api.state())["warmup"] is False
    reply = await api.heartbeat("node-a", 123_456)
    assert reply["is_up_to_date"] is False
    assert reply["warmup"] is False
    assert (await api.configs("node-a"))["warmup"] is False


async def test_a_new_check_makes_the_node_out_of_date(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    current = (await api.configs("node-a"))["last_change"]
    assert (await api.heartbeat("node-a", current))["is_up_to_date"] is True

    await api.put_source("ci", [check(0)])

    assert (await api.heartbeat("node-a", current))["is_up_to_date"] is False
    fetched = await api.configs("node-a")
    assert fetched["last_change"] > current
    assert (await api.heartbeat("node-a", fetched["last_change"]))["is_up_to_date"] is True


async def test_labels_replace_when_present_and_are_kept_when_absent(api: Api) -> None:
    await api.heartbeat("node-a", 0, labels={"zone": "eu-1a", "rack": "r1"})
    node = await api.node("node-a")
    assert node is not None
    assert node["labels"] == {"zone": "eu-1a", "rack": "r1"}

    await api.heartbeat("node-a", -1, labels={"zone": "eu-1b"})
    node = await api.node("node-a")
    assert node is not None
    assert node["labels"] == {"zone": "eu-1b"}  # replaced, not merged

    await api.heartbeat("node-a", -1)
    node = await api.node("node-a")
    assert node is not None
    assert node["labels"] == {"zone": "eu-1b"}  # absent: kept

    await api.heartbeat("node-a", -1, labels={})
    node = await api.node("node-a")
    assert node is not None
    assert node["labels"] == {}


async def test_a_label_change_that_unmatches_a_selector_moves_the_check(api: Api) -> None:
    await api.heartbeat("node-a", 0, labels={"zone": "eu"})
    await api.heartbeat("node-b", 0, labels={"zone": "eu"})
    [digest] = await api.put_source("ci", [check(0, node_selector={"zone": "eu"})])
    assert (await api.placement())[digest] == "node-a"  # tie broken by name

    await api.heartbeat("node-a", -1, labels={"zone": "us"})

    assert (await api.placement())[digest] == "node-b"
    assert [c["digest"] for c in (await api.configs("node-b"))["configs"]] == [digest]
    assert (await api.configs("node-a"))["configs"] == []


async def test_leaving_re_dispatches_the_nodes_checks_before_the_reply(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    await api.heartbeat("node-b", 0)
    digests = await api.put_source("ci", [check(0), check(1)])
    placement = await api.placement()
    assert sorted(placement.values()) == ["node-a", "node-b"]  # type: ignore[type-var]
    on_a = next(d for d in digests if placement[d] == "node-a")

    reply = await api.post(f"{API}/status/node-a", {"last_change": -1, "leaving": True})

    assert reply.status == 200, reply.text
    # No tick in between: the move happened before the reply was sent.
    state = await api.state()
    assert [n["name"] for n in state["nodes"]] == ["node-b"]
    assert state["dangling"] == []
    assert (await api.placement())[on_a] == "node-b"
    assert (await api.get(f"{API}/configs/node-a")).code() == "unknown_node"


async def test_the_last_node_leaving_leaves_its_checks_dangling(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    [digest] = await api.put_source("ci", [check(0)])

    await api.heartbeat("node-a", -1, leaving=True)

    state = await api.state()
    assert state["nodes"] == []
    assert state["dangling"] == [digest]
    assert state["totals"] == {"nodes": 0, "checks": 1, "dispatched": 0, "dangling": 1}


async def test_a_node_that_re_registers_never_sees_an_old_change_counter(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    first = (await api.configs("node-a"))["last_change"]
    await api.heartbeat("node-a", -1, leaving=True)

    await api.heartbeat("node-a", 0)

    assert (await api.configs("node-a"))["last_change"] > first


async def test_dangling_checks_go_to_the_first_node_on_the_next_tick(api: Api) -> None:
    [digest] = await api.put_source("ci", [check(0)])
    assert (await api.state())["dangling"] == [digest]
    await api.heartbeat("node-a", 0)

    await api.service.dispatcher.tick()

    assert (await api.placement())[digest] == "node-a"
    assert (await api.state())["dangling"] == []


async def test_a_check_added_while_a_node_exists_is_placed_at_once(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    [digest] = await api.put_source("ci", [check(0)])
    assert (await api.placement())[digest] == "node-a"


@pytest.mark.parametrize("refresh", ["status", "configs", "long_poll", "results"])
async def test_only_the_status_route_refreshes_the_heartbeat(
    api: Api, clock: FakeClock, refresh: str
) -> None:
    await api.heartbeat("node-a", 0)
    registered = clock.monotonic()
    [digest] = await api.put_source("ci", [check(0)])
    clock.advance(20)
    current = (await api.configs("node-a"))["last_change"]
    if refresh == "status":
        await api.heartbeat("node-a", -1)
    elif refresh == "configs":
        await api.configs("node-a")
    elif refresh == "long_poll":
        poll = await start_long_poll(api, clock, f"since={current}&wait_s=1")
        await clock.run_for(1.0)
        assert (await answer(poll)).status == 200
    else:
        body = await api.ok("POST", f"{API}/results/node-a", {"results": [result(digest)]})
        assert body["accepted"] == 1
    # 35 s after registration, 15 s or less after the refresh; timeout 30 s.
    clock.advance(35 - (clock.monotonic() - registered))

    await api.service.dispatcher.tick()

    alive = await api.node("node-a") is not None
    assert alive is (refresh == "status")


# ------------------------------------------------------------------ configs


async def test_configs_of_an_unknown_node_is_404_unknown_node(api: Api) -> None:
    reply = await api.get(f"{API}/configs/ghost")
    assert reply.status == 404
    assert reply.code() == "unknown_node"


async def test_configs_of_an_expired_node_is_404_unknown_node(api: Api, clock: FakeClock) -> None:
    await api.heartbeat("node-a", 0)
    clock.advance(31)
    await api.service.dispatcher.tick()

    reply = await api.get(f"{API}/configs/node-a")

    assert reply.status == 404
    assert reply.code() == "unknown_node"


async def test_configs_reply_holds_the_nodes_check_configs(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    [digest] = await api.put_source("ci", [check(0, interval_s=30, node_selector={})])

    body = await api.configs("node-a")

    assert set(body) == {"last_change", "epoch", "configs", "warmup"}  # warmup: an extension
    assert body["epoch"] == api.service.dispatcher.epoch
    assert isinstance(body["last_change"], int)
    assert body["configs"] == [
        {
            "name": "http",
            "instances": [{"url": "http://svc-0.default.svc/healthz"}],
            "init_config": {},
            "interval_s": 30.0,
            "timeout_s": 10.0,
            "node_selector": {},
            "weight": 1.0,
            "digest": digest,
            "sources": ["ci"],
            "node": "node-a",
        }
    ]


async def test_long_poll_answers_at_once_when_since_differs(api: Api, clock: FakeClock) -> None:
    await api.heartbeat("node-a", 0)
    current = (await api.configs("node-a"))["last_change"]
    started = clock.monotonic()

    async with asyncio.timeout(GUARD_S):
        body = await api.ok("GET", f"{API}/configs/node-a?since={current - 1}&wait_s=30")

    assert clock.pending_timers() == 0  # it never waited: no deadline was set
    assert clock.monotonic() == started
    assert body["last_change"] == current


async def test_long_poll_wakes_when_the_nodes_configs_change(api: Api, clock: FakeClock) -> None:
    await api.heartbeat("node-a", 0)
    current = (await api.configs("node-a"))["last_change"]
    started = clock.monotonic()
    poll = await start_long_poll(api, clock, f"since={current}&wait_s=30")
    await clock.settle()
    assert not poll.done()  # it waits while nothing changes

    [digest] = await api.put_source("ci", [check(0)])
    reply = await answer(poll)

    assert reply.status == 200, reply.text
    assert clock.monotonic() == started  # woken by the change, not by its deadline
    assert clock.pending_timers() == 0
    assert reply.json["last_change"] > current
    assert [c["digest"] for c in reply.json["configs"]] == [digest]


async def test_long_poll_returns_the_unchanged_set_after_wait_s(api: Api, clock: FakeClock) -> None:
    await api.heartbeat("node-a", 0)
    [digest] = await api.put_source("ci", [check(0)])
    current = (await api.configs("node-a"))["last_change"]

    poll = await start_long_poll(api, clock, f"since={current}&wait_s=30")
    await clock.run_for(29.9)
    assert not poll.done(), "the poll answered before its wait_s"
    await clock.run_for(0.1)
    reply = await answer(poll)

    assert reply.status == 200, reply.text
    assert reply.json["last_change"] == current
    assert [c["digest"] for c in reply.json["configs"]] == [digest]


async def test_a_node_that_expires_during_a_long_poll_gets_404(api: Api, clock: FakeClock) -> None:
    await api.heartbeat("node-a", 0)
    current = (await api.configs("node-a"))["last_change"]
    poll = await start_long_poll(api, clock, f"since={current}&wait_s=60")

    clock.advance(31)  # past the node's expiry, not past the poll's wait
    await api.service.dispatcher.tick()
    reply = await answer(poll)

    assert reply.status == 404
    assert reply.code() == "unknown_node"


@pytest.mark.parametrize(
    "query",
    [
        "since=0&wait_s=61",
        "since=0&wait_s=60.001",
        "since=0&wait_s=-1",
        "since=0&wait_s=nan",
        "since=0&wait_s=inf",
        "since=0&wait_s=soon",
        "since=abc&wait_s=1",
        "since=1.5&wait_s=1",
        "since=-2&wait_s=1",
        "since=&wait_s=1",
        "since=99999999999999999999&wait_s=1",
    ],
)
async def test_bad_long_poll_parameters_are_400(api: Api, clock: FakeClock, query: str) -> None:
    await api.heartbeat("node-a", 0)

    async with asyncio.timeout(GUARD_S):
        reply = await api.get(f"{API}/configs/node-a?{query}")

    assert reply.status == 400, reply.text
    assert reply.code() == "invalid_request"
    assert clock.pending_timers() == 0  # refused before any wait began


async def test_wait_s_of_60_is_allowed(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    current = (await api.configs("node-a"))["last_change"]
    body = await api.ok("GET", f"{API}/configs/node-a?since={current - 1}&wait_s=60")
    assert body["last_change"] == current


# ------------------------------------------------------------------ results


async def _two_nodes_two_checks(api: Api) -> tuple[str, str]:
    """node-a and node-b with one check each; returns (digest on a, digest on b)."""
    await api.heartbeat("node-a", 0)
    await api.heartbeat("node-b", 0)
    digests = await api.put_source("ci", [check(0), check(1)])
    placement = await api.placement()
    on_a = next(d for d in digests if placement[d] == "node-a")
    on_b = next(d for d in digests if placement[d] == "node-b")
    return on_a, on_b


async def test_results_are_accepted_for_assigned_checks_and_stale_ones_rejected(
    api: Api,
) -> None:
    on_a, on_b = await _two_nodes_two_checks(api)
    unknown = "0" * 32

    reply = await api.post(
        f"{API}/results/node-a",
        {"results": [result(on_a, ok=False), result(on_b), result(unknown)]},
    )

    assert reply.status == 200, reply.text
    assert reply.json == {
        "epoch": EPOCH,
        "accepted": 1,
        "rejected": [
            {"digest": on_b, "reason": "not_assigned"},
            {"digest": unknown, "reason": "unknown_check"},
        ],
    }
    page = await api.ok("GET", f"{API}/results")
    assert list(page["checks"]) == [on_a]  # the rejected ones are not stored
    assert (await api.check(on_b))["last_result"] is None
    last = (await api.check(on_a))["last_result"]
    assert last == {
        "run_id": f"run-{on_a[:6]}",
        "node": "node-a",
        "ok": False,
        "errors": ["GET http://shop/healthz: 503"],
        "started_at": 1_763_700_000.5,
        "duration_s": 0.21,
        "output": "",
    }


async def test_an_empty_batch_is_accepted(api: Api) -> None:
    body = await api.ok("POST", f"{API}/results/node-a", {"results": []})
    assert body == {"epoch": EPOCH, "accepted": 0, "rejected": []}


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        pytest.param({"ok": True, "errors": ["boom"]}, "results.1", id="ok-true-with-errors"),
        pytest.param({"ok": False, "errors": []}, "results.1", id="ok-false-without-errors"),
        pytest.param({"ok": False, "errors": ["  ", "\t"]}, "results.1", id="blank-errors"),
        pytest.param({"digest": "NOT-A-DIGEST"}, "results.1.digest", id="bad-digest"),
        pytest.param({"duration_s": -1}, "results.1.duration_s", id="negative-duration"),
        pytest.param({"run_id": ""}, "results.1.run_id", id="empty-run-id"),
        pytest.param({"ok": "false"}, "results.1.ok", id="ok-as-string"),
        pytest.param({"surprise": 1}, "results.1.surprise", id="unknown-field"),
    ],
)
async def test_an_invalid_result_makes_the_whole_batch_400_and_stores_nothing(
    api: Api, bad: dict[str, Any], path: str
) -> None:
    on_a, _ = await _two_nodes_two_checks(api)
    before = await api.snapshot()

    reply = await api.post(
        f"{API}/results/node-a", {"results": [result(on_a), {**result(on_a), **bad}]}
    )

    assert reply.status == 400, reply.text
    assert any(p.startswith(path) for p in reply.field_paths()), reply.text
    assert await api.snapshot() == before
    assert (await api.check(on_a))["last_result"] is None


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        pytest.param("x" * 4096, "x" * 4096, id="exactly-4KiB-kept"),
        pytest.param("x" * 5000, "x" * 4096, id="ascii-cut"),
        # 3-byte characters: 1365 fit (4095 bytes); the 1366th would split.
        pytest.param("\u20ac" * 2000, "\u20ac" * 1365, id="utf8-not-split"),
        pytest.param("ab" + "\U0001f600" * 1100, "ab" + "\U0001f600" * 1023, id="4-byte"),
    ],
)
async def test_output_is_cut_to_4_KiB_of_utf8(api: Api, output: str, expected: str) -> None:
    on_a, _ = await _two_nodes_two_checks(api)

    body = await api.ok("POST", f"{API}/results/node-a", {"results": [result(on_a, output=output)]})

    assert body["accepted"] == 1
    stored = (await api.check(on_a))["last_result"]["output"]
    assert len(stored.encode("utf-8")) <= 4096
    assert stored == expected


async def test_running_lets_a_warming_up_leader_adopt_existing_placements(
    make_api: ApiFactory, clock: FakeClock
) -> None:
    api = await make_api(Settings(dispatch=DispatchSettings(warmup_duration_s=20.0)))
    adopted, other = await api.put_source("ci", [check(0), check(1)])
    assert sorted((await api.state())["dangling"]) == sorted([adopted, other])

    await api.heartbeat("node-a", 0, running=[adopted, "f" * 32])

    assert (await api.placement()) == {adopted: "node-a", other: None}
    assert "reported running" in (await api.check(adopted))["explain"]
    assert "warming up" in (await api.check(other))["explain"]
    clock.advance(21)  # warm-up over, node-a not yet expired
    await api.service.dispatcher.tick()
    assert (await api.placement()) == {adopted: "node-a", other: "node-a"}
