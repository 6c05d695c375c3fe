"""A standalone dispatcher on its data dir starts a term above the epoch that last held
the file, even when the clock was set back since the last start: agents ignore replies
with a lower epoch, and the file would refuse it (Fenced), leaving no leader at all."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dispatcher.common.clock import FakeClock
from dispatcher.service import build
from dispatcher.settings import Settings, StoreSettings
from dispatcher.storage.sqlite import SqliteStateStore
from tests.node_agent.helpers import eventually

LAST_RUN_EPOCH = 2_000_000_000_000
"""A start time in ms well after the fake clock's: the clock went back since."""


async def test_a_clock_set_back_still_starts_above_the_last_epoch(tmp_path: Path) -> None:
    previous = SqliteStateStore.open(tmp_path)
    await previous.claim(epoch=LAST_RUN_EPOCH)
    await previous.close()
    clock = FakeClock()
    assert clock.time() * 1000 < LAST_RUN_EPOCH
    service = build(Settings(store=StoreSettings(backend="sqlite", data_dir=tmp_path)), clock=clock)
    assert service.handler is not None
    stop = asyncio.Event()
    running = asyncio.create_task(service.handler.run(stop))
    try:
        await eventually(service.leadership.is_leader)
        assert service.dispatcher.epoch == LAST_RUN_EPOCH + 1
    finally:
        stop.set()
        await running
        for close in service.closers:
            await close()
