"""A standalone dispatcher on the durable store keeps each check's history across a
restart: what the API answered before, it answers after (the API reads the same state)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from dispatcher.common.clock import FakeClock
from dispatcher.core.model import CheckResult, NodeName, SourceName, make_config
from dispatcher.core.state import ClusterState
from dispatcher.service import DispatcherService, build
from dispatcher.settings import Settings, StoreSettings
from tests.node_agent.helpers import eventually

T = TypeVar("T")
NODE = NodeName("node-a")
CONFIG = make_config(name="http", instances=[{"url": "http://svc/healthz"}])


async def serving(
    settings: Settings, clock: FakeClock, work: Callable[[DispatcherService], Awaitable[T]]
) -> T:
    """Starts the service, runs ``work`` once it leads with its stored history, and
    stops it (closing the store)."""
    service = build(settings, clock=clock)
    assert service.handler is not None
    stop = asyncio.Event()
    running = asyncio.create_task(service.handler.run(stop))
    try:
        await eventually(service.leadership.is_leader)
        # A new leader serves first and installs the stored history just after.
        await eventually(lambda: not service.dispatcher.state.history.loading)
        return await work(service)
    finally:
        stop.set()
        await running
        for close in service.closers:
            await close()


async def test_the_history_survives_a_restart_on_the_sqlite_store(tmp_path: Path) -> None:
    settings = Settings(store=StoreSettings(backend="sqlite", data_dir=tmp_path))
    clock = FakeClock()
    now = clock.time()

    async def first_run(service: DispatcherService) -> list[str]:
        dispatcher = service.dispatcher
        await dispatcher.node_status(NODE, last_change=-1)
        await dispatcher.replace_source(SourceName("ci"), [CONFIG])
        results = [
            CheckResult(
                CONFIG.digest, f"run-{i}", i != 1, () if i != 1 else ("503",), now - 30 + i, 0.2
            )
            for i in range(3)
        ]
        assert (await dispatcher.record_results(NODE, results))[0] == 3
        # A read answers from the state (the results are there; the stop writes them).
        return await dispatcher.read(history_of)

    before = await serving(settings, clock, first_run)
    after = await serving(settings, clock, lambda service: service.dispatcher.read(history_of))

    assert before == ["run-2", "run-1", "run-0"]
    assert after == before


def history_of(state: ClusterState) -> list[str]:
    return [e.run_id for e in state.history.results(CONFIG.digest, now_wall=1_763_700_000.0)]


async def test_results_waiting_for_their_write_are_written_before_a_planned_stop(
    tmp_path: Path,
) -> None:
    """No read after the results: they wait for their timer (no fake time passes), and
    the stop writes them before the term ends."""
    settings = Settings(store=StoreSettings(backend="sqlite", data_dir=tmp_path))
    clock = FakeClock()
    now = clock.time()

    async def record(service: DispatcherService) -> None:
        dispatcher = service.dispatcher
        await dispatcher.node_status(NODE, last_change=-1)
        await dispatcher.replace_source(SourceName("ci"), [CONFIG])
        result = CheckResult(CONFIG.digest, "last-run", True, (), now - 1, 0.2)
        assert (await dispatcher.record_results(NODE, [result]))[0] == 1

    await serving(settings, clock, record)
    after = await serving(settings, clock, lambda service: service.dispatcher.read(history_of))

    assert after == ["last-run"]
