"""``service.serve`` in-process on a real port, on a fake clock: what it sets up around
the app (the liveness grace at start-up and during shutdown, the replica reporter)."""

from __future__ import annotations

import asyncio

import aiohttp

from dispatcher.common.clock import FakeClock
from dispatcher.common.health import Status
from dispatcher.service import build, serve
from dispatcher.settings import HealthSettings, ServerSettings, Settings
from tests.processes import free_port


async def test_liveness_passes_during_the_start_up_grace_and_fails_after_it() -> None:
    clock = FakeClock()
    port = free_port()
    settings = Settings(
        server=ServerSettings(port=port),
        health=HealthSettings(liveness_grace_s=20.0, replica_status_period_s=60.0),
    )
    service = build(settings, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(service, stop=stop))
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"{url}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.02)
            service.health.report("store", Status.UNHEALTHY, "lost")

            async with session.get(f"{url}/healthz") as response:
                assert response.status == 200, "within the start-up grace"
            clock.advance(19.0)
            async with session.get(f"{url}/healthz") as response:
                assert response.status == 200, "still within the start-up grace"
            clock.advance(1.5)
            async with session.get(f"{url}/healthz") as response:
                assert response.status == 503, "the grace is over: an unhealthy component fails"

            # This replica's record is in the directory from the start.
            [record] = await service.replicas.directory.list()
            assert (record.status.identity, record.status.role) == ("dispatcher", "leader")
            assert record.status.status == "unhealthy"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)

    # A planned stop opens a new grace, and removes the record.
    assert service.health.liveness().ok
    assert await service.replicas.directory.list() == []
