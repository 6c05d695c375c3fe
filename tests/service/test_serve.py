"""``service.serve`` in-process on a real port, on a fake clock: what it sets up around
the app (the liveness grace at start-up and during shutdown, the replica reporter)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from dispatcher.common.clock import FakeClock
from dispatcher.common.health import Status
from dispatcher.service import build, connect, serve
from dispatcher.settings import (
    ElectionSettings,
    HealthSettings,
    KubernetesSourceSettings,
    ServerSettings,
    Settings,
    StoreSettings,
)
from tests.k8s_api import (
    LEASES,
    SERVICES,
    FakeKubernetesApi,
    service,
)
from tests.processes import free_port

GUARD_S = 10.0
"""Only keeps a broken test from hanging on a real port; never a measure."""


async def until_ready(session: aiohttp.ClientSession, url: str) -> None:
    """Waits until the server on a real port answers /readyz with 200."""
    for _ in range(round(GUARD_S / 0.02)):
        try:
            async with session.get(f"{url}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} was not ready within {GUARD_S:g} s")


async def test_liveness_passes_during_the_start_up_grace_and_fails_after_it() -> None:
    clock = FakeClock()
    port = free_port()
    settings = Settings(
        server=ServerSettings(port=port),
        store=StoreSettings(backend="memory"),
        health=HealthSettings(liveness_grace_s=20.0, replica_status_period_s=60.0),
    )
    service = build(settings, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(service, stop=stop))
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await until_ready(session, url)
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
        async with asyncio.timeout(GUARD_S):
            await task

    # A planned stop opens a new grace, and removes the record.
    assert service.health.liveness().ok
    assert await service.replicas.directory.list() == []


async def test_connect_leads_through_a_kubernetes_lease_and_serves_checks_from_services(
    k8s_api: FakeKubernetesApi,
    tmp_path: Path,
) -> None:
    """The wiring of ``run``: one client from a kubeconfig for the Lease and the source."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "double",
            "clusters": [{"name": "double", "cluster": {"server": k8s_api.url}}],
            "users": [{"name": "nobody", "user": {}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "nobody"}}],
        }),
        encoding="utf-8",
    )  # fmt: skip
    checks = [{"name": "http", "instances": [{"url": "http://%%host%%:%%port%%/healthz"}]}]
    k8s_api.put(
        SERVICES, "web",
        service("web", "shop", annotations={"clusterchecks.io/checks": json.dumps(checks)}),
    )  # fmt: skip
    port = free_port()
    settings = Settings(
        server=ServerSettings(port=port, identity="replica-0"),
        store=StoreSettings(backend="memory"),
        election=ElectionSettings(
            backend="kubernetes", lease_duration_s=3, renew_deadline_s=2, retry_period_s=0.5,
            lease_namespace="ops",
        ),
        kubernetes_source=KubernetesSourceSettings(enabled=True, watch_timeout_s=2),
        health=HealthSettings(replica_status_period_s=60),
        kubeconfig=kubeconfig,
    ).validate()  # fmt: skip

    service_ = await connect(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(service_, stop=stop))
    url = f"http://127.0.0.1:{port}/v1/api/clusterchecks/checks"
    try:
        async with aiohttp.ClientSession() as session:

            async def urls() -> list[str]:
                try:
                    async with session.get(url) as response:
                        if response.status != 200:
                            return []  # no leader yet
                        body = await response.json()
                        return [c["instances"][0]["url"] for c in body["checks"]]
                except aiohttp.ClientConnectorError:
                    return []  # not listening yet

            for _ in range(round(GUARD_S / 0.02)):  # a guard, not a measure
                if await urls():
                    break
                await asyncio.sleep(0.02)
            assert await urls() == ["http://shop.web.svc.cluster.local:80/healthz"]
        lease = k8s_api.get(LEASES, "ops", "clusterchecks-dispatcher")
        assert lease["spec"]["holderIdentity"] == "replica-0"
    finally:
        stop.set()
        async with asyncio.timeout(GUARD_S):
            await task
    # Released on the way out, and the shared client closed by the service's closers.
    released = k8s_api.get(LEASES, "ops", "clusterchecks-dispatcher")
    assert not released["spec"].get("holderIdentity")
