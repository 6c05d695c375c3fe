"""Local routes served without a token: /healthz, /readyz, health components, /metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.common.clock import FakeClock
from dispatcher.common.health import Status
from dispatcher.errors import StoreError
from dispatcher.settings import Settings
from dispatcher.storage.replicas import LocalReplicaDirectory, ReplicaRecord
from tests.api.conftest import ADMIN, API, AUTH, IDENTITY, Api, ApiFactory, check

COMPONENTS = {"api", "election", "store", "dispatch_loop", "config_sources"}


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


# --------------------------------------------------------- health gauge, probes


def gauge(api: Api, family: str, **labels: str) -> float | None:
    return api.service.metrics.registry.get_sample_value(family, labels)


async def test_every_component_has_a_health_gauge_that_follows_its_transitions(api: Api) -> None:
    for name in COMPONENTS:
        assert gauge(api, "clusterchecks_health_status", component=name) == 0, name

    api.service.health.report("store", Status.UNHEALTHY, "down")
    assert gauge(api, "clusterchecks_health_status", component="store") == 3
    api.service.health.report("store", Status.DEGRADED, "slow")
    assert gauge(api, "clusterchecks_health_status", component="store") == 2

    # A component registered later gets its series too (unspecified until it reports).
    api.service.health.register("late")
    assert gauge(api, "clusterchecks_health_status", component="late") == 1


async def test_the_dispatch_loop_is_unhealthy_when_the_leader_stops_ticking(
    api: Api, clock: FakeClock
) -> None:
    health = api.service.health
    await api.service.dispatcher.tick()
    await health.probe_once()
    assert health.components()["dispatch_loop"].status is Status.HEALTHY

    clock.advance(4.9)  # within the bound: max(5 s, 5 ticks)
    await health.probe_once()
    assert health.components()["dispatch_loop"].status is Status.HEALTHY

    clock.advance(0.2)
    await health.probe_once()
    component = health.components()["dispatch_loop"]
    assert component.status is Status.UNHEALTHY
    assert "no tick for 5.1 s" in component.message
    assert (await api.get("/healthz")).status == 503

    await api.service.dispatcher.tick()
    await health.probe_once()
    assert health.components()["dispatch_loop"].status is Status.HEALTHY
    assert (await api.get("/healthz")).status == 200


async def test_a_replica_that_does_not_lead_reports_its_dispatch_loop_on_standby(
    api: Api, clock: FakeClock
) -> None:
    api.service.dispatcher.end_term()
    clock.advance(600)
    await api.service.health.probe_once()
    component = api.service.health.components()["dispatch_loop"]
    assert (component.status, component.message) == (
        Status.HEALTHY,
        "standby: ticks only while leading",
    )


async def test_without_a_config_dir_the_config_sources_component_says_api_only(api: Api) -> None:
    reply = await api.get("/v1/api/health/components/config_sources")
    assert reply.json["status"] == "healthy"
    assert "API sources only" in reply.json["message"]


# ----------------------------------------------------------------- per-check metrics


async def test_the_leader_exports_every_checks_last_result(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    ok_digest, bad_digest = await api.put_source("ci", [check(0), check(1)])
    body = {
        "results": [
            {"digest": ok_digest, "run_id": "1", "ok": True, "errors": [],
             "started_at": 100.0, "duration_s": 0.5},
            {"digest": bad_digest, "run_id": "2", "ok": False, "errors": ["503"],
             "started_at": 101.0, "duration_s": 1.5},
            {"digest": bad_digest, "run_id": "3", "ok": False, "errors": ["503"],
             "started_at": 111.0, "duration_s": 2.5},
        ]
    }  # fmt: skip
    await api.ok("POST", f"{API}/results/node-a", body, token=ADMIN)

    families = {f.name: f for f in text_string_to_metric_families((await api.get("/metrics")).text)}

    def by_digest(family: str) -> dict[str, float]:
        samples = families[family].samples
        assert all(s.labels["node"] == "node-a" and s.labels["check"] == "http" for s in samples)
        return {s.labels["digest"]: s.value for s in samples}

    assert by_digest("clusterchecks_check_ok") == {ok_digest: 1, bad_digest: 0}
    assert by_digest("clusterchecks_check_consecutive_failures") == {ok_digest: 0, bad_digest: 2}
    assert by_digest("clusterchecks_check_duration_seconds") == {ok_digest: 0.5, bad_digest: 2.5}
    assert by_digest("clusterchecks_check_last_run_timestamp_seconds") == {
        ok_digest: 100.0,
        bad_digest: 111.0,
    }

    await api.ok("DELETE", f"{API}/checks/{bad_digest}", token=ADMIN)
    text = (await api.get("/metrics")).text
    assert bad_digest not in text, "a removed check's series must go"


async def test_drain_and_isolate_count_their_moves(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    digests = await api.put_source("ci", [check(i) for i in range(4)])
    await api.heartbeat("node-b", 0)
    await api.ok("POST", f"{API}/nodes/node-a/drain", token=ADMIN)
    assert gauge(api, "clusterchecks_rebalance_moves_total", trigger="drain") == 4

    await api.ok("POST", f"{API}/nodes/node-a/uncordon", token=ADMIN)
    reply = await api.ok("POST", f"{API}/isolate/{digests[0]}", token=ADMIN)
    assert gauge(api, "clusterchecks_rebalance_moves_total", trigger="isolate") == len(
        reply["moves"]
    )
    assert reply["moves"], "isolate moved nothing; the test proves less"


# ------------------------------------------------------------------------ replicas


async def test_replicas_without_a_shared_store_lists_this_replica(api: Api) -> None:
    reply = await api.ok("GET", f"{API}/replicas", token=ADMIN)

    [replica] = reply["replicas"]
    assert replica["identity"] == IDENTITY
    assert replica["role"] == "leader"
    assert replica["url"] == api.service.settings.server.url
    assert replica["status"] == "healthy"
    assert replica["ready"] is True
    assert replica["epoch"] == api.service.dispatcher.epoch > 0
    assert replica["age_s"] == 0.0  # the answering replica refreshes its own record


class _DownDirectory(LocalReplicaDirectory):
    async def list(self) -> list[ReplicaRecord]:
        raise StoreError("connection refused")


async def test_replicas_when_the_shared_store_is_down_is_503_store_unavailable(
    api: Api, clock: FakeClock
) -> None:
    api.service.replicas.directory = _DownDirectory(clock)

    reply = await api.get(f"{API}/replicas", token=ADMIN)

    assert reply.status == 503
    assert reply.code() == "store_unavailable"
    assert "connection refused" in reply.json["error"]["message"]
    assert reply.headers["Retry-After"] == "2"
