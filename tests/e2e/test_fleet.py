"""The fleet benchmark in small (issue 16): the same simulator (``tests.bench.fleet``), a
real dispatcher process and load-generator processes speaking the node protocol over
HTTP, at 40 agents with short intervals, so that ``make test`` runs every phase of it
end to end: registration and the checks' load, a steady window with results, a change
fanned out, a rebalance moved onto slow agents' peers, a zone outage and the leave.

The bounds are the settings' (the heartbeat interval, the expiry and the dispatcher's
tick), with seconds of slack for a busy CI machine; speed goals belong to ``make bench``.
"""

from __future__ import annotations

import pytest

from dispatcher.settings import TICK_INTERVAL_S
from tests.bench.fleet import FleetResults, run_fleet

pytestmark = pytest.mark.e2e

AGENTS = 40
CHECKS_PER_AGENT = 5
HEARTBEAT_S = 1.0
EXPIRY_S = 4.0
TICK_S = TICK_INTERVAL_S  # the dispatcher's expiry tick (DispatchSettings.tick_interval_s)
SLACK_S = 3.0  # a busy 2-core CI machine


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> FleetResults:
    work = tmp_path_factory.mktemp("fleet")
    return run_fleet(
        log_dir=work / "logs",
        work_dir=work,
        agents=AGENTS,
        checks_per_agent=CHECKS_PER_AGENT,
        window_s=3.0,
        heartbeat_interval_s=HEARTBEAT_S,
        expiry_s=EXPIRY_S,
        check_interval_s=2,
        results_flush_s=1.0,
        ramp_s=1.0,
        big_puts=False,  # a source at the per-source limit (100,000 checks) is bench work
        progress=lambda _: None,
    )


def test_every_phase_ran_and_every_check_was_held(fleet: FleetResults) -> None:
    assert fleet.phase_errors == {}, fleet.phase_errors
    assert fleet.ran == ["start", "settle", "steady", "change", "rebalance", "outage", "leave"]
    assert fleet.checks == AGENTS * CHECKS_PER_AGENT
    assert fleet.all_held_s < 10 * HEARTBEAT_S + SLACK_S


def test_heartbeats_and_results_flow_without_errors(fleet: FleetResults) -> None:
    steady = fleet.probe["steady"]
    assert steady.count > 0
    assert steady.errors == 0
    assert fleet.heartbeats_per_s > 0
    assert fleet.results_per_s > 0  # ingested by the dispatcher
    assert fleet.results_rejected == 0
    assert fleet.result_errors == 0
    # At 40 agents the leader paces nothing: each posts at its own 1 s.
    assert fleet.results_interval_s is not None
    assert fleet.results_interval_s <= 1.0


def test_a_change_and_a_rebalance_reach_every_agent_they_concern(fleet: FleetResults) -> None:
    for name in ("change", "rebalance"):
        fanout = fleet.fanout(name)
        assert fanout is not None, name
        assert fanout.added > 0, fanout
        assert fanout.missing == 0, fanout
        assert fanout.done is not None
        # A held long poll answers at once; a poll between two requests is asked again
        # at the next heartbeat at the latest.
        assert fanout.done.max_ms < (2 * HEARTBEAT_S + SLACK_S) * 1e3, fanout


def test_a_zone_outage_is_re_dispatched_after_the_expiry_and_within_a_tick_of_it(
    fleet: FleetResults,
) -> None:
    assert fleet.outage_agents == AGENTS // 10
    assert fleet.outage_orphans > 0
    assert fleet.outage_missing == 0
    # Not before the expiry (counted from the agents' last heartbeats, at most one
    # interval before they stopped), and within a tick of it, plus the orphans' fetch.
    assert fleet.outage_s >= EXPIRY_S - HEARTBEAT_S
    assert fleet.outage_s <= EXPIRY_S + TICK_S + SLACK_S


def test_the_rest_leave_gracefully(fleet: FleetResults) -> None:
    assert fleet.left == AGENTS - fleet.outage_agents


def test_the_leader_holds_a_connection_per_agent(fleet: FleetResults) -> None:
    assert fleet.leader_rss_max_bytes > 0
    assert fleet.leader_fds > AGENTS  # a held long poll each
