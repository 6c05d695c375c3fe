"""The text views of the admin command line: pure functions of wire models."""

from __future__ import annotations

from typing import Any

import click
import pytest

from dispatcher import wire
from dispatcher.admin import render

NOW = 1_800_000_000.0
D1 = "05b38cea9331df73899c0b0476b0973c"
D2 = "e975a1afa0e6a3635c3daccbb1d16053"
D3 = "2ccde49e682cfd4752c20f4cb2cac1ab"
RED, GREEN, YELLOW, BOLD = "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[1m"


def plain(text: str) -> list[str]:
    return click.unstyle(text).splitlines()


def column_starts(header: str, names: list[str]) -> list[int]:
    return [header.index(name) for name in names]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.0s"),
        (2.14, "2.1s"),
        (59.9, "59.9s"),
        (59.96, "1m00s"),
        (60.0, "1m00s"),
        (184.7, "3m04s"),
        (3599.0, "59m59s"),
        (3600.0, "1h00m"),
        (5 * 3600 + 7 * 60 + 30, "5h07m"),
        (2 * 86400 + 3 * 3600, "2d03h"),
        (-4.0, "0.0s"),
    ],
)
def test_durations_read_like_people_write_them(seconds: float, text: str) -> None:
    assert render.duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(15.0, "15s"), (2.5, "2.5s"), (300.0, "5m00s"), (86400.0, "1d00h")]
)
def test_intervals(seconds: float, text: str) -> None:
    assert render.interval(seconds) == text


def node(name: str, **fields: Any) -> wire.NodeOut:
    values: dict[str, Any] = {
        "name": name,
        "labels": {},
        "heartbeat_age_s": 2.1,
        "last_change": 3,
        "cordoned": False,
        "busyness": 0.31,
        "capacity": 8,
        "configs": [D1],
    }
    return wire.NodeOut(**(values | fields))


def state(**fields: Any) -> wire.StateOut:
    values: dict[str, Any] = {
        "leader": "dispatcher-0",
        "is_leader": True,
        "epoch": 7,
        "warmup": False,
        "nodes": [
            node("node-a", labels={"zone": "eu-1a", "tier": "db"}),
            node("node-bbbbbbbb", cordoned=True, heartbeat_age_s=184.0, configs=[D1, D2]),
        ],
        "dangling": [D3],
        "totals": {"nodes": 2, "checks": 3, "dispatched": 2, "dangling": 1},
    }
    return wire.StateOut(**(values | fields))


def test_state_summary_table_and_dangling_list() -> None:
    lines = plain(render.state(state()))
    assert lines[0] == (
        "leader: dispatcher-0   epoch: 7   warmup: no   nodes: 2   "
        "checks: 3 (2 dispatched, 1 dangling)"
    )
    header = lines[2]
    assert header.split() == [
        "NODE", "CHECKS", "BUSYNESS", "CAPACITY", "HEARTBEAT", "CORDONED", "LABELS",
    ]  # fmt: skip
    assert lines[3].split() == ["node-a", "1", "0.31", "8", "2.1s", "no", "tier=db,zone=eu-1a"]
    assert lines[4].split() == ["node-bbbbbbbb", "2", "0.31", "8", "3m04s", "yes", "-"]
    # Aligned: left columns start under their header, numbers end under theirs.
    assert lines[4].index("yes") == header.index("CORDONED")
    assert lines[3].index("2.1s") + len("2.1s") == header.index("HEARTBEAT") + len("HEARTBEAT")
    assert lines[6:] == ["dangling checks (1):", f"  {D3[:12]}"]


def test_state_without_nodes_leader_or_dangling_checks() -> None:
    text = render.state(
        state(
            leader=None,
            warmup=True,
            nodes=[],
            dangling=[],
            totals={"nodes": 0, "checks": 0, "dispatched": 0, "dangling": 0},
        )
    )
    lines = plain(text)
    assert lines[0].startswith("leader: none   epoch: 7   warmup: yes")
    assert "no nodes" in lines
    assert lines[-1] == "dangling checks: none"
    assert f"{YELLOW}none" in text
    assert f"{YELLOW}yes" in text


def test_headers_are_bold_and_colour_does_not_break_alignment() -> None:
    text = render.state(state())
    assert f"{BOLD}NODE" in text
    assert f"{YELLOW}yes" in text  # cordoned
    unstyled = plain(text)
    assert unstyled[4].index("yes") == unstyled[2].index("CORDONED")


def last_result(ok: bool, **fields: Any) -> wire.LastResultOut:
    values: dict[str, Any] = {
        "run_id": "r1",
        "node": "node-a",
        "ok": ok,
        "errors": [] if ok else ["GET http://shop/healthz: 503"],
        "started_at": NOW - 12.5,
        "duration_s": 0.5,
        "output": "",
    }
    return wire.LastResultOut(**(values | fields))


def detail(digest: str, **fields: Any) -> wire.CheckDetailOut:
    values: dict[str, Any] = {
        "name": "http",
        "instances": [{"url": "http://shop/healthz"}],
        "init_config": {},
        "interval_s": 15.0,
        "timeout_s": 10.0,
        "node_selector": {},
        "weight": 1.0,
        "digest": digest,
        "sources": ["ci"],
        "node": "node-a",
        "last_result": None,
        "explain": None,
    }
    return wire.CheckDetailOut(**(values | fields))


def test_checks_table() -> None:
    reply = wire.ChecksOut(
        checks=[
            detail(D1, last_result=last_result(False)),
            detail(D2, name="dns", last_result=last_result(True), sources=["a", "b"]),
            detail(D3, node=None, interval_s=300.0),
        ]
    )
    text = render.checks(reply, now=NOW)
    lines = plain(text)
    assert lines[0].split() == ["DIGEST", "NAME", "NODE", "SOURCES", "INTERVAL", "LAST", "RESULT"]
    assert lines[1].split() == [D2[:12], "dns", "node-a", "a,b", "15s", "ok", "12.0s", "ago"]
    assert lines[2].split() == [D1[:12], "http", "node-a", "ci", "15s", "FAIL", "12.0s", "ago"]
    assert lines[3].split() == [D3[:12], "http", "-", "(dangling)", "ci", "5m00s", "-"]
    assert f"{RED}FAIL" in text
    assert f"{GREEN}ok" in text
    assert render.checks(wire.ChecksOut(checks=[]), now=NOW) == "no checks"


def test_one_check_as_keys_and_values() -> None:
    reply = detail(
        D1,
        node_selector={"zone": "eu-1a"},
        last_result=last_result(False, output="line 1\nline 2"),
        explain="Dispatched to node-a: the least loaded eligible node.",
    )
    lines = plain(render.check(reply, now=NOW))
    values = {line[:15].strip(): line[15:] for line in lines}
    assert values["digest"] == D1
    assert values["node selector"] == "zone=eu-1a"
    assert values["instances"] == '[{"url": "http://shop/healthz"}]'
    assert values["last result"] == "FAIL 12.0s ago on node-a, took 0.5s"
    assert values["error"] == "GET http://shop/healthz: 503"
    assert values["output"] == "line 1 line 2"
    assert values["explain"] == "Dispatched to node-a: the least loaded eligible node."
    dangling = plain(render.check(detail(D3, node=None), now=NOW))
    assert "node           - (dangling)" in dangling
    assert "last result    none yet" in dangling


def status(ok: bool, **fields: Any) -> wire.CheckStatusOut:
    values: dict[str, Any] = {
        "name": "http",
        "node": "node-a",
        "ok": ok,
        "errors": [] if ok else ["GET http://shop/healthz: 503 " + "x" * 100],
        "last_run_at": NOW - 184.0,
        "duration_s": 0.2,
        "consecutive_failures": 0 if ok else 3,
        "success_count": 10,
        "failure_count": 0 if ok else 3,
        "last_ok_at": None,
    }
    return wire.CheckStatusOut(**(values | fields))


def test_results_put_failing_checks_first_and_end_with_the_overall_line() -> None:
    page = wire.ResultsPageOut(
        ok=False,
        errors=["http shop: 503"],
        checks={D1: status(True, name="aaa"), D2: status(False, name="zzz")},
    )
    text = render.results(page, now=NOW)
    lines = plain(text)
    assert lines[0].split() == [
        "DIGEST", "NAME", "NODE", "STATUS", "CONSEC", "FAILS", "OK/FAIL", "LAST", "RUN", "ERROR",
    ]  # fmt: skip
    assert lines[1].split()[:8] == [D2[:12], "zzz", "node-a", "FAIL", "3", "10/3", "3m04s", "ago"]
    error = lines[1][lines[0].index("ERROR") :]
    assert error.startswith("GET http://shop/healthz: 503 xxx")
    assert error.endswith("…")
    assert len(error) == render.ERROR_WIDTH
    assert lines[2].split() == [D1[:12], "aaa", "node-a", "ok", "0", "10/0", "3m04s", "ago", "-"]
    assert lines[3] == "overall: FAIL: 1 of 2 checks failing"
    assert f"{RED}FAIL" in text
    assert render.failing(page)


def test_results_all_ok_and_empty() -> None:
    page = wire.ResultsPageOut(ok=True, errors=[], checks={D1: status(True)})
    assert plain(render.results(page, now=NOW))[-1] == "overall: ok: 1 checks"
    assert not render.failing(page)
    empty = wire.ResultsPageOut(ok=True, errors=[], checks={})
    assert plain(render.results(empty, now=NOW)) == ["no results yet", "overall: ok: 0 checks"]


def test_failing_trusts_the_page_and_each_check() -> None:
    assert render.failing(wire.ResultsPageOut(ok=False, errors=["x"], checks={}))
    assert render.failing(wire.ResultsPageOut(ok=True, errors=[], checks={D1: status(False)}))


def move(digest: str, source: str, dest: str) -> wire.MoveOut:
    return wire.MoveOut(
        digest=digest, check_name="http", weight=0.4, source_node=source, dest_node=dest
    )


def test_moves_rebalance_and_isolate() -> None:
    moves = [move(D1, "node-a", "node-b"), move(D2, "node-a", "node-c")]
    weights = render.Weights({D1: 2.0, D2: 1.0})
    lines = plain(
        render.rebalance(
            wire.RebalanceOut(applied=True, moves=moves), dry_run=False, weights=weights
        )
    )
    assert lines[0] == "rebalanced: 2 moves applied"
    assert lines[1].split() == ["DIGEST", "CHECK", "WEIGHT", "COST", "FROM", "TO"]
    assert lines[2].split() == [D1[:12], "http", "2", "0.4", "node-a", "node-b"]
    assert lines[4] == render.MOVES_LEGEND
    dry = render.rebalance(wire.RebalanceOut(applied=False, moves=[]), dry_run=True)
    assert plain(dry) == ["dry run: 0 moves planned, none applied", "no moves"]
    isolated = plain(
        render.isolate(wire.IsolateOut(digest=D3, node="node-a", moves=moves), weights)
    )
    assert isolated[0].startswith(f"check {D3[:12]} isolated on node node-a, now cordoned")
    assert "2 other checks moved" in isolated[0]
    assert isolated[3].split() == [D2[:12], "http", "1", "0.4", "node-a", "node-c"]


def test_a_weight_that_could_not_be_read_is_a_dash_and_the_reason_is_said() -> None:
    moves = [move(D1, "node-a", "node-b"), move(D2, "node-a", "node-c")]
    unread = render.Weights(problem="no reply from the dispatcher within 10 s")
    lines = plain(render.rebalance(wire.RebalanceOut(applied=True, moves=moves), dry_run=False,
                                   weights=unread))  # fmt: skip
    assert lines[2].split() == [D1[:12], "http", "-", "0.4", "node-a", "node-b"]
    assert lines[-1] == "weights not shown: no reply from the dispatcher within 10 s"
    # A check deleted between the move and the read of the weights has none either.
    partial = plain(render.moves(moves, render.Weights({D2: 3.0})))
    assert [line.split()[2] for line in partial[1:3]] == ["-", "3"]


def test_a_rebalance_shows_its_outcome_spread_and_the_loads_around_each_move() -> None:
    planned = wire.MoveOut(
        digest=D1, check_name="tls", weight=0.2, source_node="node-a", dest_node="node-b",
        source_load_before=0.9, source_load_after=0.7, dest_load_before=0.3,
        dest_load_after=0.5,
    )  # fmt: skip
    reply = wire.RebalanceOut(
        applied=False, moves=[planned], outcome="gain_too_small",
        spread_before=0.125, spread_after=0.12,
    )  # fmt: skip

    lines = plain(render.rebalance(reply, dry_run=False))

    assert lines[0].startswith("not applied: the gain is below the minimum (--force")
    assert lines[0].endswith("(1 moves planned)")
    assert lines[1] == "spread (busiest node above the mean): 12.5% -> 12.0%"
    assert lines[2].split() == [
        "DIGEST", "CHECK", "WEIGHT", "COST", "FROM", "LOAD", "TO", "LOAD"
    ]  # fmt: skip
    # The reply's ``weight`` is the measured cost; the configured weight comes apart.
    assert lines[3].split() == [
        D1[:12], "tls", "-", "0.2", "node-a", "0.9->0.7", "node-b", "0.3->0.5"
    ]  # fmt: skip
    assert lines[4] == render.MOVES_LEGEND + render.LOADS_LEGEND
    weighed = plain(render.rebalance(reply, dry_run=False, weights=render.Weights({D1: 5.0})))
    assert weighed[3].split()[2:4] == ["5", "0.2"]


@pytest.mark.parametrize(
    ("action", "word"), [("cordon", "cordoned"), ("uncordon", "uncordoned"), ("drain", "drained")]
)
def test_a_node_after_an_action(action: str, word: str) -> None:
    lines = plain(render.node(node("node-a", cordoned=action != "uncordon"), action=action))
    assert lines[0] == f"node node-a {word}"
    assert lines[1].split()[0] == "NODE"
    assert lines[2].split()[0] == "node-a"


def replica(identity: str, **fields: Any) -> wire.ReplicaOut:
    values: dict[str, Any] = {
        "identity": identity,
        "role": "follower",
        "url": f"http://{identity}:5005",
        "status": "healthy",
        "ready": True,
        "epoch": 7,
        "reported_at": NOW - 2.0,
        "age_s": 2.0,
    }
    return wire.ReplicaOut(**(values | fields))


def test_replicas() -> None:
    reply = wire.ReplicasOut(
        replicas=[
            replica("d-0", role="leader"),
            replica("d-1", status="degraded"),
            replica("d-2", status="unhealthy", ready=False, age_s=61.0),
        ]
    )
    text = render.replicas(reply)
    lines = plain(text)
    assert lines[0].split() == ["IDENTITY", "ROLE", "URL", "STATUS", "READY", "EPOCH", "REPORTED"]
    assert lines[1].split() == [
        "d-0", "leader", "http://d-0:5005", "healthy", "yes", "7", "2.0s", "ago",
    ]  # fmt: skip
    assert lines[3].split() == [
        "d-2", "follower", "http://d-2:5005", "unhealthy", "no", "7", "1m01s", "ago",
    ]  # fmt: skip
    assert f"{GREEN}healthy" in text
    assert f"{YELLOW}degraded" in text
    assert f"{RED}unhealthy" in text
    assert render.replicas(wire.ReplicasOut(replicas=[])) == "no replicas reported"


# ------------------------------------------------------------------- import


def import_reply(**fields: Any) -> wire.ImportOut:
    values: dict[str, Any] = {
        "epoch": 3,
        "mode": "replace",
        "dry_run": False,
        "sources": {
            "ci": {"added": 0, "removed": 4, "unchanged": 0},
            "api:team-a": {"added": 2, "removed": 1, "unchanged": 10},
        },
        "skipped_sources": ["file:web.yaml"],
        "cordoned": ["node-a"],
        "skipped_cordons": [],
    }
    return wire.ImportOut.model_validate(values | fields)


def test_an_import_shows_its_counts_per_source_and_what_it_skipped() -> None:
    text = render.imported(import_reply(skipped_cordons=["node-x", "node-y"]))
    lines = plain(text)
    assert lines[0] == (
        "imported (replace): 2 sources written (2 added, 5 removed, 10 unchanged, "
        "counted per source)"
    )
    assert lines[1].split() == ["SOURCE", "ADDED", "REMOVED", "UNCHANGED"]
    assert lines[2].split() == ["api:team-a", "2", "1", "10"]
    assert lines[3].split() == ["ci", "0", "4", "0"]
    assert lines[1].rstrip().endswith("UNCHANGED")
    assert len(lines[1].rstrip()) == len(lines[2].rstrip())  # counts right-aligned
    assert lines[4].startswith("skipped, fed by the dispatcher itself")
    assert lines[4].endswith(": file:web.yaml")
    assert lines[5] == "cordoned: node-a"
    assert lines[6].startswith("not cordoned, not registered here: node-x, node-y")
    assert f"{YELLOW}not cordoned" in text


def test_a_dry_run_says_nothing_changed() -> None:
    reply = import_reply(dry_run=True, mode="merge", skipped_sources=[], sources={})
    assert plain(render.imported(reply)) == [
        "dry run (merge), nothing changed: would write 0 sources",
        "would cordon: node-a",
    ]


def _runs(*runs: tuple[bool, float]) -> list[wire.HistoryResultOut]:
    """Runs given oldest first, returned newest first as the reply holds them."""
    return [
        wire.HistoryResultOut(
            run_id=f"r{i}", node="n", ok=ok, errors=[], started_at=float(i), duration_s=d
        )
        for i, (ok, d) in reversed(list(enumerate(runs)))
    ]


@pytest.mark.parametrize(
    ("runs", "line"),
    [
        ((), ""),
        (((True, 0.5),), "▁"),
        (((True, 0.1), (True, 0.8)), "▁█"),
        (((True, 0.0), (True, 0.5), (True, 1.0)), "▁▅█"),
        (((False, 9.0), (True, 0.2), (True, 0.2)), "x▁▁"),
        (((True, 0.1), (False, 30.0), (True, 0.3)), "▁x█"),
        (((False, 1.0), (False, 2.0)), "xx"),
    ],
)
def test_sparkline_scales_ok_runs_and_marks_failures(
    runs: tuple[tuple[bool, float], ...], line: str
) -> None:
    assert click.unstyle(render.sparkline(_runs(*runs))) == line
