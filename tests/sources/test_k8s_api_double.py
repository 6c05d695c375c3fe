"""The Kubernetes API stand-in (tests/k8s_api.py) as a config source sees it: lists and
watches of Services and ConfigMaps, and Event creation, through kubernetes-asyncio only."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import pytest
from kubernetes_asyncio.client import (
    ApiClient,
    CoreV1Api,
    CoreV1Event,
    V1ConfigMap,
    V1EventSource,
    V1ObjectMeta,
    V1ObjectReference,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
)
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from dispatcher.common.clock import FakeClock
from tests.k8s_api import (
    ALL_RESOURCES,
    CONFIGMAPS,
    SERVICES,
    FakeKubernetesApi,
    configmap,
    service,
)

NS = "apps"
Event = tuple[str, dict[str, Any]]
"""A watch event as (type, the object's JSON)."""


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    """An unclosed session (each Watch makes its own ApiClient) warns when collected, an
    error under this configuration: collect now so it lands on the test that leaked it."""
    yield
    gc.collect()


@pytest.fixture
def v1(k8s_client: ApiClient) -> CoreV1Api:
    return CoreV1Api(k8s_client)


async def watch(
    func: Callable[..., Any],
    *args: Any,
    count: int | None = None,
    timeout_seconds: int | None = 2,
    **kwargs: Any,
) -> list[Event]:
    """The events of a watch, until ``count`` of them or the end of the stream."""
    if timeout_seconds is not None:
        kwargs["timeout_seconds"] = timeout_seconds
    events: list[Event] = []
    async with Watch(return_type="object") as w:
        async for event in w.stream(func, *args, _request_timeout=5, **kwargs):
            events.append((event["type"], event["raw_object"]))
            if len(events) == count:
                break
    return events


def summary(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(t, obj["metadata"]["name"], obj["metadata"]["resourceVersion"]) for t, obj in events]


WEB = {"app": "web"}


# ------------------------------------------------------------------------- list


async def test_a_list_answers_the_items_in_key_order_and_the_current_version(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    k8s_api.put(SERVICES, NS, service(NS, "web", ports=[{"name": "http", "port": 8080}]))
    k8s_api.put(SERVICES, NS, service(NS, "db"))
    k8s_api.put(SERVICES, "other", service("other", "cache"))
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "settings", data={"a": "1"}))

    listed = await v1.list_namespaced_service(NS)
    assert [s.metadata.name for s in listed.items] == ["db", "web"]
    assert listed.metadata.resource_version == str(k8s_api.resource_version) == "4"
    assert (listed.kind, listed.api_version) == ("ServiceList", "v1")
    web: Any = listed.items[1]
    assert (web.kind, web.api_version) == (None, None), "as the API server: not on list items"
    assert (web.metadata.namespace, web.metadata.resource_version) == (NS, "1")
    assert web.metadata.uid
    assert [(p.name, p.port, p.protocol, p.target_port) for p in web.spec.ports] == [
        ("http", 8080, "TCP", 8080)
    ]

    everywhere = await v1.list_service_for_all_namespaces()
    names = [(s.metadata.namespace, s.metadata.name) for s in everywhere.items]
    assert names == [(NS, "db"), (NS, "web"), ("other", "cache")]
    assert (await v1.list_namespaced_service("empty")).items == []

    assert [(r.path, r.status, r.is_watch) for r in k8s_api.lists()] == [
        (f"/api/v1/namespaces/{NS}/services", 200, False),
        ("/api/v1/services", 200, False),
        ("/api/v1/namespaces/empty/services", 200, False),
    ]


async def test_label_selectors_filter_a_list(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "a", labels={"app": "web", "tier": "1"}))
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "b", labels={"app": "db"}))
    k8s_api.put(CONFIGMAPS, "x", configmap("x", "c"))

    async def names(selector: str) -> list[str]:
        found = await v1.list_config_map_for_all_namespaces(label_selector=selector)
        return [c.metadata.name for c in found.items]

    assert await names("") == ["a", "b", "c"]
    assert await names("app=web") == ["a"]
    assert await names("app==db") == ["b"]
    assert await names("app!=web") == ["b", "c"], "!= matches objects without the label"
    assert await names("app") == ["a", "b"]
    assert await names("!app") == ["c"]
    assert await names("app in (web, db),tier") == ["a"]
    assert await names("app notin (web)") == ["b", "c"]
    assert await names("app=web,tier=2") == []
    assert await names("app=") == [], "an empty value is a value"
    assert k8s_api.lists()[1].params == {"labelSelector": "app=web"}
    with pytest.raises(ApiException) as caught:
        await names("app=web=db")
    assert caught.value.status == 400
    assert "unable to parse requirement" in str(caught.value.body)


# ------------------------------------------------------------------------ watch


async def test_a_watch_from_a_version_replays_the_later_changes_in_order(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    k8s_api.put(SERVICES, NS, service(NS, "old"))  # 1
    since = (await v1.list_namespaced_service(NS)).metadata.resource_version
    body = V1Service(
        metadata=V1ObjectMeta(name="web", annotations={"a": "1"}),
        spec=V1ServiceSpec(ports=[V1ServicePort(port=80)]),
    )
    created = await v1.create_namespaced_service(NS, body)  # 2, through HTTP
    created.metadata.annotations = {"a": "2"}
    await v1.replace_namespaced_service("web", NS, created)  # 3
    k8s_api.put(SERVICES, "other", service("other", "elsewhere"))  # 4: not in NS
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "web"))  # 5: not a Service
    await v1.delete_namespaced_service("web", NS)  # 6
    k8s_api.put(SERVICES, NS, service(NS, "old", annotations={"b": "1"}))  # 7
    k8s_api.remove(SERVICES, NS, "old")  # 8

    events = await watch(v1.list_namespaced_service, NS, resource_version=since, count=5)
    assert summary(events) == [
        ("ADDED", "web", "2"),
        ("MODIFIED", "web", "3"),
        ("DELETED", "web", "6"),
        ("MODIFIED", "old", "7"),
        ("DELETED", "old", "8"),
    ]
    added, modified, deleted = (obj for _, obj in events[:3])
    assert (added["apiVersion"], added["kind"]) == ("v1", "Service"), "on watch events, yes"
    assert added["metadata"]["annotations"] == {"a": "1"}
    assert added["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert modified["metadata"]["annotations"] == {"a": "2"}
    assert deleted["metadata"]["annotations"] == {"a": "2"}, "the last state, a new version"
    assert deleted["metadata"]["uid"] == added["metadata"]["uid"]

    everywhere = await watch(v1.list_service_for_all_namespaces, resource_version=since, count=6)
    assert summary(everywhere)[2] == ("ADDED", "elsewhere", "4")


async def test_a_watch_follows_live_changes(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    k8s_api.put(SERVICES, NS, service(NS, "web"))  # 1
    since = (await v1.list_namespaced_config_map(NS)).metadata.resource_version
    following = asyncio.create_task(
        watch(v1.list_namespaced_config_map, NS, resource_version=since, count=3)
    )
    await k8s_api.wait_watching(1)
    assert k8s_api.watching == 1
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "a", data={"k": "1"}))  # 2
    await v1.create_namespaced_config_map(NS, V1ConfigMap(metadata=V1ObjectMeta(name="b")))
    await v1.delete_namespaced_config_map("a", NS)  # 4
    events = await following
    assert summary(events) == [("ADDED", "a", "2"), ("ADDED", "b", "3"), ("DELETED", "a", "4")]
    assert events[2][1]["data"] == {"k": "1"}

    [logged] = k8s_api.watches()
    assert (logged.method, logged.path, logged.status) == (
        "GET", f"/api/v1/namespaces/{NS}/configmaps", 200,
    )  # fmt: skip
    assert logged.params == {"resourceVersion": "1", "timeoutSeconds": "2", "watch": "True"}
    assert logged.is_watch
    assert k8s_api.lists() == [k8s_api.requests[0]], "a watch is not a list"


async def test_a_selector_watch_sees_objects_start_and_stop_matching(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "z"))  # 1
    since = str(k8s_api.resource_version)
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "a", data={"v": "1"}, labels=WEB))  # 2
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "a", data={"v": "2"}))  # 3: label removed
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "b"))  # 4: never matches
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "a", data={"v": "3"}, labels=WEB))  # 5
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "a", data={"v": "4"}, labels=WEB))  # 6
    k8s_api.remove(CONFIGMAPS, NS, "b")  # 7
    k8s_api.remove(CONFIGMAPS, NS, "a")  # 8

    events = await watch(
        v1.list_config_map_for_all_namespaces, label_selector="app=web", resource_version=since,
        count=5,
    )  # fmt: skip
    assert summary(events) == [
        ("ADDED", "a", "2"),
        ("DELETED", "a", "3"),
        ("ADDED", "a", "5"),
        ("MODIFIED", "a", "6"),
        ("DELETED", "a", "8"),
    ]
    unlabelled = events[1][1]
    assert unlabelled["metadata"]["labels"] == WEB, "the state it was last seen in"
    assert unlabelled["data"] == {"v": "1"}


@pytest.mark.parametrize("resource_version", [None, "0"])
async def test_a_watch_without_a_version_starts_with_the_current_objects_as_added(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
    resource_version: str | None,
) -> None:
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "b", labels=WEB))  # 1
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "a", labels=WEB))  # 2
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "b", data={"v": "1"}, labels=WEB))  # 3
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "c"))  # 4
    version: dict[str, Any] = (
        {} if resource_version is None else {"resource_version": resource_version}
    )
    following = asyncio.create_task(
        watch(v1.list_namespaced_config_map, NS, label_selector="app", count=3, **version)
    )
    await k8s_api.wait_watching(1)
    k8s_api.put(CONFIGMAPS, NS, configmap(NS, "a", data={"v": "2"}, labels=WEB))  # 5
    assert summary(await following) == [
        ("ADDED", "a", "2"),
        ("ADDED", "b", "3"),
        ("MODIFIED", "a", "5"),
    ]


async def test_a_watch_from_a_compacted_version_raises_410_and_a_relist_shows(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    for name in ("a", "b", "c"):
        k8s_api.put(SERVICES, NS, service(NS, name))
    k8s_api.compact()  # forgets up to 3
    with pytest.raises(ApiException) as caught:
        await watch(v1.list_namespaced_service, NS, resource_version="1")
    assert caught.value.status == 410
    assert caught.value.reason == "Expired: too old resource version: 1 (3)"
    assert k8s_api.watches()[-1].status == 200, "the error comes in a 200 stream"

    relisted = await v1.list_namespaced_service(NS)
    assert k8s_api.requests.index(k8s_api.lists()[-1]) > k8s_api.requests.index(
        k8s_api.watches()[-1]
    )
    k8s_api.remove(SERVICES, NS, "a")  # 4
    events = await watch(
        v1.list_namespaced_service, NS, resource_version=relisted.metadata.resource_version,
        count=1,
    )  # fmt: skip
    assert summary(events) == [("DELETED", "a", "4")]


async def test_without_timeout_seconds_watch_retries_a_410_once_with_the_same_version(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    for name in ("a", "b"):
        k8s_api.put(SERVICES, NS, service(NS, name))
    k8s_api.compact()
    with pytest.raises(ApiException) as caught:
        await watch(v1.list_namespaced_service, NS, resource_version="1", timeout_seconds=None)
    assert caught.value.status == 410
    assert [r.params["resourceVersion"] for r in k8s_api.watches()] == ["1", "1"]


async def test_a_history_limit_compacts_the_oldest_changes() -> None:
    api = FakeKubernetesApi(ALL_RESOURCES, history_limit=2)
    await api.start()
    try:
        async with api.api_client() as client:
            v1 = CoreV1Api(client)
            for data in ("1", "2", "3", "4"):
                api.put(CONFIGMAPS, NS, configmap(NS, "a", data={"v": data}))
            assert [c.resource_version for c in api.store.history] == [3, 4]
            with pytest.raises(ApiException, match=r"too old resource version: 1 \(2\)"):
                await watch(v1.list_namespaced_config_map, NS, resource_version="1")
            events = await watch(v1.list_namespaced_config_map, NS, resource_version="2", count=2)
            assert summary(events) == [("MODIFIED", "a", "3"), ("MODIFIED", "a", "4")]
    finally:
        await api.stop()


async def test_a_watch_ends_cleanly_after_timeout_seconds(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    clock = FakeClock()
    k8s_api.clock = clock  # the watch's timeoutSeconds runs on fake time
    following = asyncio.create_task(watch(v1.list_namespaced_service, NS, timeout_seconds=3))
    await k8s_api.wait_watching(1)
    await clock.run_for(2.99)
    assert not following.done()
    assert k8s_api.watching == 1, "the watch ended before its timeoutSeconds"
    await clock.run_for(0.01)
    assert await following == []  # its end is real HTTP: awaited, not timed
    assert k8s_api.watching == 0


async def test_close_watches_ends_the_open_streams(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    assert k8s_api.close_watches() == 0
    following = [
        asyncio.create_task(watch(v1.list_namespaced_service, NS, timeout_seconds=5)),
        asyncio.create_task(watch(v1.list_config_map_for_all_namespaces, timeout_seconds=5)),
    ]
    await k8s_api.wait_watching(2)
    k8s_api.put(SERVICES, NS, service(NS, "web"))  # pending: written before a clean end
    assert k8s_api.close_watches() == 2
    assert k8s_api.watching == 0
    services, configmaps = await asyncio.gather(*following)
    assert summary(services) == [("ADDED", "web", "1")]
    assert configmaps == []


async def test_an_aborted_watch_fails_the_read(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    following = asyncio.create_task(watch(v1.list_namespaced_service, NS, timeout_seconds=None))
    await k8s_api.wait_watching(1)
    assert k8s_api.close_watches(abort=True) == 1
    with pytest.raises(aiohttp.ClientPayloadError):
        await following


async def test_without_timeout_seconds_watch_reconnects_from_the_last_version_seen(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    k8s_api.put(SERVICES, NS, service(NS, "a"))  # 1
    async with Watch(return_type="object") as w:
        stream = w.stream(v1.list_namespaced_service, NS, resource_version="1", _request_timeout=5)
        k8s_api.put(SERVICES, NS, service(NS, "b"))  # 2
        first = await anext(stream)
        assert (first["type"], cast(Any, w).resource_version) == ("ADDED", "2")
        await k8s_api.wait_watching(1)
        assert k8s_api.close_watches() == 1
        k8s_api.put(SERVICES, NS, service(NS, "c"))  # 3
        second = await anext(stream)
        assert (second["type"], second["raw_object"]["metadata"]["name"]) == ("ADDED", "c")
    assert [r.params["resourceVersion"] for r in k8s_api.watches()] == ["1", "2"]


async def test_an_injected_failure_is_raised_by_watch_as_an_api_exception(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    k8s_api.fail_with = 503
    with pytest.raises(ApiException) as caught:
        await watch(v1.list_namespaced_service, NS)
    assert caught.value.status == 503
    assert caught.value.reason == "ServiceUnavailable: injected failure 503"
    with pytest.raises(ApiException) as caught:
        await v1.list_namespaced_service(NS)
    assert caught.value.status == 503


# ------------------------------------------------------------------------ writes


async def test_services_and_configmaps_are_validated_on_writes(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    async def status_of(write: Any) -> tuple[int, str]:
        with pytest.raises(ApiException) as caught:
            await write
        return caught.value.status, str(caught.value.body)

    def svc(*ports: V1ServicePort) -> V1Service:
        return V1Service(metadata=V1ObjectMeta(name="web"), spec=V1ServiceSpec(ports=list(ports)))

    code, body = await status_of(v1.create_namespaced_service(NS, svc(V1ServicePort(port=0))))
    assert code == 422
    assert "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535" in body
    code, body = await status_of(v1.create_namespaced_service(NS, svc()))
    assert (code, "spec.ports: Required value" in body) == (422, True)
    two = svc(V1ServicePort(port=80), V1ServicePort(port=81, name="b"))
    code, body = await status_of(v1.create_namespaced_service(NS, two))
    assert (code, "spec.ports[0].name: Required value" in body) == (422, True)
    code, _ = await status_of(
        v1.create_namespaced_service(NS, svc(V1ServicePort(port=80, protocol="tcp")))
    )
    assert code == 422

    def cm(data: dict[str, Any]) -> V1ConfigMap:
        return V1ConfigMap(metadata=V1ObjectMeta(name="settings"), data=data)

    code, _ = await status_of(v1.create_namespaced_config_map(NS, cm({"a": 1})))
    assert code == 400, "the API server cannot decode it"
    code, body = await status_of(v1.create_namespaced_config_map(NS, cm({"a b": "1"})))
    assert (code, "a valid config key" in body) == (422, True)
    assert k8s_api.store.objects(SERVICES) == k8s_api.store.objects(CONFIGMAPS) == []
    assert k8s_api.store.history == [], "nothing written, nothing to watch"


async def test_an_event_can_be_created_and_read_back(
    k8s_api: FakeKubernetesApi,
    v1: CoreV1Api,
) -> None:
    def event(when: datetime) -> CoreV1Event:
        return CoreV1Event(
            metadata=V1ObjectMeta(generate_name="web."),
            involved_object=V1ObjectReference(
                api_version="v1", kind="Service", namespace=NS, name="web"
            ),
            reason="InvalidCheckConfig",
            message="bad annotation",
            type="Warning",
            count=1,
            first_timestamp=when,
            last_timestamp=when,
            source=V1EventSource(component="clusterchecks"),
        )

    created = await v1.create_namespaced_event(NS, event(datetime.now(UTC)))
    assert created.metadata.name.startswith("web.")
    assert len(created.metadata.name) == len("web.") + 5
    [stored] = k8s_api.events()
    assert stored["metadata"]["name"] == created.metadata.name
    assert (stored["reason"], stored["type"], stored["count"]) == (
        "InvalidCheckConfig", "Warning", 1,
    )  # fmt: skip
    assert stored["involvedObject"] == {
        "apiVersion": "v1", "kind": "Service", "namespace": NS, "name": "web",
    }  # fmt: skip
    assert k8s_api.events("elsewhere") == []
    listed = await v1.list_namespaced_event(NS)
    assert [e.metadata.name for e in listed.items] == [created.metadata.name]

    with pytest.raises(ApiException) as caught:
        await v1.create_namespaced_event(NS, event(datetime.now()))
    assert caught.value.status == 400, "a naive datetime is sent without a zone"
