"""Local routes served without a token: /healthz, /readyz, health components, /metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.common.health import Status
from dispatcher.settings import Settings
from tests.api.conftest import API, AUTH, IDENTITY, Api, ApiFactory, check

COMPONENTS = {"api", "election", "store", "dispatch_loop"}


async def test_healthz_and_readyz_when_every_component_is_healthy(api: Api) -> None:
    for path in ("/healthz", "/readyz", "/v1/api/health/components"):
        reply = await api.get(path)
        assert reply.status == 200, (path, reply.text)
        body = reply.json
        assert body["status"] == "healthy"
        assert set(body["components"]) == COMPONENTS
        for component in body["components"].values():
            assert set(component) == {"status", "message", "metadata"}
            assert component["status"] == "healthy"


@pytest.mark.parametrize(
    ("status", "label", "healthz", "readyz"),
    [
        (Status.DEGRADED, "degraded", 200, 200),
        (Status.UNSPECIFIED, "unspecified", 200, 503),
        (Status.UNHEALTHY, "unhealthy", 503, 503),
    ],
)
async def test_health_follows_the_worst_component(
    api: Api, status: Status, label: str, healthz: int, readyz: int
) -> None:
    api.service.health.report("store", status, "store trouble")

    live = await api.get("/healthz")
    ready = await api.get("/readyz")
    components = await api.get("/v1/api/health/components")

    assert (live.status, ready.status) == (healthz, readyz)
    for reply in (live, ready, components):
        assert reply.json["status"] == label
        assert reply.json["components"]["store"] == {
            "status": label,
            "message": "store trouble",
            "metadata": {},
        }


async def test_healthz_never_fails_during_the_liveness_grace_period(api: Api) -> None:
    api.service.health.suppress_liveness(60)
    api.service.health.report("store", Status.UNHEALTHY, "down")

    assert (await api.get("/healthz")).status == 200
    assert (await api.get("/readyz")).status == 503


async def test_one_component(api: Api) -> None:
    api.service.health.report("store", Status.DEGRADED, "slow", metadata={"latency_ms": 250})

    reply = await api.get("/v1/api/health/components/store")

    assert reply.status == 200
    assert reply.json == {"status": "degraded", "message": "slow", "metadata": {"latency_ms": 250}}


@pytest.mark.parametrize("name", ["bogus", "API", "store.x"])
async def test_an_unknown_component_is_404(api: Api, name: str) -> None:
    reply = await api.get(f"/v1/api/health/components/{name}")
    assert reply.status == 404
    assert reply.code() == "not_found"


async def test_metrics_are_prometheus_text_named_clusterchecks(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    await api.put_source("ci", [check(0), check(1)])
    await api.put_source("other", [check(2, node_selector={"zone": "mars"})])
    await api.get(f"{API}/configs/ghost")

    reply = await api.get("/metrics")

    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    assert families
    assert all(name.startswith("clusterchecks_") for name in families), sorted(families)

    def value(family: str, **labels: str) -> float:
        for sample in families[family].samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
        raise AssertionError(f"no sample of {family} with {labels}")

    assert value("clusterchecks_leader") == 1
    assert value("clusterchecks_checks") == 3
    assert value("clusterchecks_checks_dangling") == 1
    assert value("clusterchecks_checks_dispatched", node="node-a") == 2
    assert value("clusterchecks_http_requests", route="node_configs", status="404") == 1
    assert value("clusterchecks_http_requests", route="source_put", status="200") == 2


async def test_local_routes_need_no_token_and_name_the_leader(make_api: ApiFactory) -> None:
    api = await make_api(Settings(auth=AUTH))
    for path in ("/healthz", "/readyz", "/metrics", "/v1/api/health/components"):
        reply = await api.get(path, token=None)
        assert reply.status == 200, (path, reply.text)
        assert reply.headers["X-Clusterchecks-Leader"] == IDENTITY
