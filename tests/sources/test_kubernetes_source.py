"""The Kubernetes config source against the API test double, through kubernetes-asyncio.

Annotated Services and labelled ConfigMaps become checks, one source per object: add,
change and delete each and see the checks follow; a malformed one is reported (log,
health, a Warning Event) and leaves the other objects' checks alone; a watch that ends
is resumed, one that is too old (410) makes the source list again; a new term applies
everything again and drops objects that vanished meanwhile.

The source's retry waits are on a FakeClock: ``until`` waits for what follows from real
HTTP to the double (no time moves), and ``retry_until`` also moves the clock on, one
retry period at a time, for what needs the source to try again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from dispatcher.common.clock import FakeClock
from dispatcher.common.health import HealthRegistry, Status
from dispatcher.core.model import CheckConfig, SourceName, make_config
from dispatcher.engine import Dispatcher
from dispatcher.errors import ConfigSourceError
from dispatcher.settings import DispatchSettings
from dispatcher.sources.kubernetes import (
    COMPONENT,
    KubernetesSource,
    configmap_configs,
    service_configs,
    source_name,
)
from dispatcher.sources.kubernetes import CONFIGMAPS as CONFIGMAP_KIND
from dispatcher.sources.kubernetes import SERVICES as SERVICE_KIND
from tests.k8s_api import (
    CONFIGMAPS,
    EVENTS,
    SERVICES,
    FakeKubernetesApi,
    configmap,
    service,
)
from tests.node_agent.helpers import eventually

ANNOTATION = "clusterchecks.io/checks"
LABELS = {"clusterchecks.io/checks": "true"}
WITHIN_S = 10.0
"""Only keeps a broken test from hanging on real HTTP to the double; never a measure."""
RETRY_S = 2.0


def annotated(ns: str, name: str, checks: Any, **kwargs: Any) -> dict[str, Any]:
    raw = checks if isinstance(checks, str) else json.dumps(checks)
    return service(ns, name, annotations={ANNOTATION: raw}, **kwargs)


HTTP_CHECK = [{"name": "http", "instances": [{"url": "http://%%host%%:%%port%%/healthz"}]}]
YAML_CHECKS = """
- name: tcp
  instances: [{host: db.example, port: 5432}]
- name: dns
  instances: [{name: example.com}]
"""


class Harness:
    def __init__(
        self,
        api: FakeKubernetesApi,
        client: ApiClient,
        settings: DispatchSettings | None = None,
    ) -> None:
        self.api = api
        self.clock = FakeClock()
        self.health = HealthRegistry(clock=self.clock)
        self.dispatcher = Dispatcher(settings=settings or DispatchSettings(), clock=self.clock)
        self.dispatcher.begin_term(state=self.dispatcher.new_state(), epoch=1)
        self.source = KubernetesSource(
            dispatcher=self.dispatcher,
            health=self.health,
            client=client,
            clock=self.clock,
            watch_timeout_s=1.0,
            retry_s=RETRY_S,
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.source.run(self.stop), name="k8s-source")

    async def halt(self) -> None:
        self.stop.set()
        if self.task is not None:
            async with asyncio.timeout(WITHIN_S):
                await self.task
            self.task = None

    def sources(self) -> dict[str, list[CheckConfig]]:
        state = self.dispatcher.state
        return {
            s: state.source_configs(SourceName(s))
            for s in state.source_names()
            if s.startswith("k8s:")
        }

    def urls(self, source: str) -> list[str]:
        return sorted(str(c.instances[0].get("url")) for c in self.sources().get(source, []))

    async def until(self, condition: Callable[[], bool]) -> None:
        """Waits for ``condition``, which follows from HTTP to the double alone."""
        await eventually(condition, within_s=WITHIN_S)

    async def retry_until(self, condition: Callable[[], bool]) -> None:
        """Waits for ``condition``, moving the clock on by a retry period at each look
        so that a source waiting to retry tries again (its HTTP is real meanwhile)."""

        for _ in range(round(WITHIN_S / 0.01)):  # a guard of WITHIN_S, at the least
            await self.clock.run_for(RETRY_S)
            if condition():
                return
            await asyncio.sleep(0.01)  # the retried request is real HTTP
        raise AssertionError(f"{condition} did not hold while the source retried")

    def component(self) -> tuple[Status, str, dict[str, Any]]:
        c = self.health.components()[COMPONENT]
        return c.status, c.message, dict(c.metadata)


@pytest.fixture
async def harness(
    k8s_api: FakeKubernetesApi,
    k8s_client: ApiClient,
) -> AsyncIterator[Harness]:
    h = Harness(k8s_api, k8s_client)
    try:
        yield h
    finally:
        await h.halt()


SHOP = source_name(SERVICE_KIND, "default", "shop")
CM = source_name(CONFIGMAP_KIND, "ops", "checks")


# ------------------------------------------------------------------- parsing


def test_a_service_annotation_is_templated_with_its_dns_name_and_ports() -> None:
    svc = annotated(
        "web", "shop",
        [{"name": "http", "instances": [{"url": "https://%%host%%:%%port_https%%/x"}]},
         {"name": "tcp", "instances": [{"host": "%%host%%", "port": "%%port%%"}]}],
        ports=[{"name": "http", "port": 8080}, {"name": "https", "port": 8443}],
    )  # fmt: skip

    http, tcp = service_configs(svc, cluster_domain="corp.local") or []

    assert http.instances == ({"url": "https://shop.web.svc.corp.local:8443/x"},)
    assert tcp.instances == ({"host": "shop.web.svc.corp.local", "port": 8080},)  # an int


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("not json", "not valid JSON"),
        ('{"name": "http"}', "must be a JSON list"),
        ('[{"name": "http"}]', "instances"),
        ('[{"name": "http", "instances": [{"url": "%%port_admin%%"}]}]', "%%port_admin%%"),
        ('[{"name": "HTTP!", "instances": [{}]}]', "name"),
    ],
)
def test_a_malformed_annotation_is_a_config_source_error_naming_the_service(
    raw: str, problem: str
) -> None:
    with pytest.raises(ConfigSourceError, match="service default/shop") as caught:
        service_configs(annotated("default", "shop", raw), cluster_domain="cluster.local")
    assert problem in str(caught.value)


def test_a_service_without_the_annotation_has_no_checks() -> None:
    assert service_configs(service("default", "plain"), cluster_domain="cluster.local") is None


def test_configmap_values_are_yaml_configs() -> None:
    configs = configmap_configs(configmap("ops", "checks", data={"a.yaml": YAML_CHECKS}))
    assert [c.name for c in configs] == ["tcp", "dns"]
    with pytest.raises(ConfigSourceError, match=r"configmap ops/checks: b\.yaml"):
        configmap_configs(configmap("ops", "checks", data={"b.yaml": "- name: [broken"}))


def test_source_names_stay_within_253_characters_and_unique() -> None:
    long_a, long_b = "a" * 240 + "x", "a" * 240 + "y"
    name_a = source_name(CONFIGMAP_KIND, "ns", long_a)
    name_b = source_name(CONFIGMAP_KIND, "ns", long_b)
    assert len(name_a) == len(name_b) == 253
    assert name_a != name_b
    assert source_name(SERVICE_KIND, "web", "shop") == "k8s:service:web:shop"


# ------------------------------------------------------------ list and watch


async def test_services_add_change_and_delete_their_checks(harness: Harness) -> None:
    h = harness
    h.api.put(SERVICES, "default", annotated("default", "shop", HTTP_CHECK))
    h.api.put(SERVICES, "default", service("default", "plain"))  # no annotation: nothing
    h.start()

    await h.until(lambda: h.urls(SHOP) == ["http://shop.default.svc.cluster.local:80/healthz"])
    assert list(h.sources()) == [SHOP]
    assert h.component()[2]["services"] == 2, "both Services are followed"

    # Changed: the port moves, the check follows (a new digest replaces the old).
    h.api.put(
        SERVICES, "default",
        annotated("default", "shop", HTTP_CHECK, ports=[{"name": "http", "port": 9090}]),
    )  # fmt: skip
    await h.until(lambda: h.urls(SHOP) == ["http://shop.default.svc.cluster.local:9090/healthz"])
    assert len(h.dispatcher.state.configs) == 1

    # A Service added while watching, then the annotation removed: its checks go.
    h.api.put(SERVICES, "web", annotated("web", "cart", HTTP_CHECK))
    cart = source_name(SERVICE_KIND, "web", "cart")
    await h.until(lambda: len(h.urls(cart)) == 1)
    h.api.put(SERVICES, "web", service("web", "cart"))
    await h.until(lambda: cart not in h.sources())

    h.api.remove(SERVICES, "default", "shop")
    await h.until(lambda: h.sources() == {})
    assert h.dispatcher.state.configs == {}
    status, _, metadata = h.component()
    assert status is Status.HEALTHY
    assert metadata["broken"] == []
    assert metadata["services"] == 2, "plain and cart remain; shop is gone"


async def test_labelled_configmaps_add_change_and_delete_their_checks(harness: Harness) -> None:
    h = harness
    h.api.put(CONFIGMAPS, "ops", configmap("ops", "checks", data={"a.yaml": YAML_CHECKS},
                                           labels=LABELS))  # fmt: skip
    h.api.put(CONFIGMAPS, "ops", configmap("ops", "unlabelled", data={"a.yaml": YAML_CHECKS}))
    h.start()

    await h.until(lambda: [c.name for c in h.sources().get(CM, [])] == ["dns", "tcp"])
    assert list(h.sources()) == [CM], "an unlabelled ConfigMap is not read"

    one = "- name: tcp\n  instances: [{host: db.example, port: 5433}]\n"
    h.api.put(CONFIGMAPS, "ops", configmap("ops", "checks", data={"a.yaml": one}, labels=LABELS))
    await h.until(lambda: [c.instances for c in h.sources().get(CM, [])]
                  == [({"host": "db.example", "port": 5433},)])  # fmt: skip

    # The label removed: the selector watch says DELETED, and the checks go.
    h.api.put(CONFIGMAPS, "ops", configmap("ops", "checks", data={"a.yaml": one}))
    await h.until(lambda: h.sources() == {})


async def test_a_malformed_object_is_reported_and_keeps_its_checks_while_others_follow(
    harness: Harness,
) -> None:
    h = harness
    h.api.put(SERVICES, "default", annotated("default", "shop", HTTP_CHECK))
    h.start()
    await h.until(lambda: len(h.urls(SHOP)) == 1)
    before = h.urls(SHOP)

    h.api.put(SERVICES, "default", annotated("default", "shop", "[{broken"))
    await h.until(lambda: h.component()[0] is Status.DEGRADED)
    _, message, metadata = h.component()
    assert "service default/shop" in message
    assert "not valid JSON" in message
    assert metadata["broken"] == [SHOP]
    assert h.urls(SHOP) == before, "the last good checks stay while the object is broken"

    # Another object is unaffected: its checks arrive while shop is broken.
    h.api.put(SERVICES, "web", annotated("web", "cart", HTTP_CHECK))
    cart = source_name(SERVICE_KIND, "web", "cart")
    await h.until(lambda: len(h.urls(cart)) == 1)
    assert h.component()[0] is Status.DEGRADED

    # A Warning Event on the Service says why.
    await h.until(lambda: bool(h.api.events("default")))
    [event] = h.api.events("default")
    assert event["type"] == "Warning"
    assert event["reason"] == "InvalidClusterChecks"
    assert event["involvedObject"]["kind"] == "Service"
    assert event["involvedObject"]["name"] == "shop"
    assert "not valid JSON" in event["message"]

    # Fixed: healthy again, with the new checks.
    fixed = [{"name": "tcp", "instances": [{"host": "%%host%%", "port": "%%port%%"}]}]
    h.api.put(SERVICES, "default", annotated("default", "shop", fixed))
    await h.until(lambda: h.component()[0] is Status.HEALTHY)
    assert [c.name for c in h.sources()[SHOP]] == ["tcp"]


async def test_an_object_over_the_per_source_limit_is_malformed_and_blocks_nothing(
    k8s_api: FakeKubernetesApi, k8s_client: ApiClient
) -> None:
    h = Harness(k8s_api, k8s_client, DispatchSettings(max_checks_per_source=1))
    try:
        h.api.put(SERVICES, "default", annotated("default", "shop", HTTP_CHECK))
        h.start()
        await h.until(lambda: len(h.urls(SHOP)) == 1)
        before = h.urls(SHOP)
        two = [*HTTP_CHECK, {"name": "tcp", "instances": [{"host": "%%host%%", "port": 1}]}]
        h.api.put(SERVICES, "default", annotated("default", "shop", two))
        await h.until(lambda: h.component()[0] is Status.DEGRADED)
        _, message, metadata = h.component()
        assert message.startswith("Source 'k8s:service:default:shop' may hold at most 1 checks")
        assert "this set has 2 distinct checks" in message
        assert metadata["broken"] == [SHOP]
        assert h.urls(SHOP) == before, "the last good checks stay"
        h.api.put(SERVICES, "web", annotated("web", "cart", HTTP_CHECK))
        cart = source_name(SERVICE_KIND, "web", "cart")
        await h.until(lambda: len(h.urls(cart)) == 1)
    finally:
        await h.halt()


async def test_a_watch_that_ends_is_resumed_without_a_relist(harness: Harness) -> None:
    h = harness
    h.start()
    await h.api.wait_watching(2)
    lists = len(h.api.lists())
    assert h.api.close_watches() == 2

    await h.api.wait_watching(2)
    h.api.put(SERVICES, "default", annotated("default", "shop", HTTP_CHECK))
    await h.until(lambda: len(h.urls(SHOP)) == 1)
    assert len(h.api.lists()) == lists, "a clean end of a watch resumes from its version"


async def test_a_dropped_connection_is_retried(harness: Harness) -> None:
    h = harness
    h.start()
    await h.api.wait_watching(2)
    h.api.close_watches(abort=True)
    h.api.put(SERVICES, "default", annotated("default", "shop", HTTP_CHECK))
    await h.retry_until(lambda: len(h.urls(SHOP)) == 1)


async def test_410_gone_makes_the_source_list_again_and_catch_up() -> None:
    api = FakeKubernetesApi((SERVICES, CONFIGMAPS, EVENTS), history_limit=1)
    await api.start()
    try:
        async with api.api_client() as client:
            h = Harness(api, client)
            # A store at version 0 would make the resumed watch start afresh (version
            # "0" means "everything now"), never 410: write something first.
            api.put(SERVICES, "default", service("default", "plain"))
            h.start()
            try:
                await api.wait_watching(2)
                lists = len(api.lists())
                # The watches end cleanly; before they resume, two changes land and the
                # history keeps only the last: the resumed watch meets 410 Expired.
                api.close_watches()
                api.put(SERVICES, "default", annotated("default", "shop", HTTP_CHECK))
                api.put(SERVICES, "default", annotated("default", "cart", HTTP_CHECK))
                await h.until(lambda: len(h.sources()) == 2)
                assert len(api.lists()) > lists, "a relist after 410"
            finally:
                await h.halt()
    finally:
        await api.stop()


async def test_an_api_outage_degrades_health_and_recovers(harness: Harness) -> None:
    h = harness
    h.api.fail_with = 503
    h.start()
    await h.until(lambda: h.component()[0] is Status.DEGRADED)
    assert "503" in h.component()[1]

    h.api.fail_with = None
    h.api.put(SERVICES, "default", annotated("default", "shop", HTTP_CHECK))
    await h.retry_until(lambda: len(h.urls(SHOP)) == 1)
    await h.retry_until(lambda: h.component()[0] is Status.HEALTHY)


async def test_a_new_term_applies_everything_again_and_drops_vanished_objects(
    harness: Harness,
) -> None:
    h = harness
    h.api.put(SERVICES, "default", annotated("default", "shop", HTTP_CHECK))
    h.start()
    await h.until(lambda: len(h.urls(SHOP)) == 1)
    await h.halt()

    # A new term starts from a state holding an object deleted meanwhile (as loaded
    # from the shared store) and one the API still has.
    state = h.dispatcher.new_state()
    h.dispatcher.end_term()
    h.dispatcher.begin_term(state=state, epoch=2)
    gone = source_name(SERVICE_KIND, "default", "gone")
    await h.dispatcher.replace_sources({gone: [make_config(name="tcp", instances=[{"h": 1}])]})
    h.source.reset()
    h.start()

    await h.until(lambda: list(h.sources()) == [SHOP])


async def test_an_error_reply_to_a_list_deletes_nothing(harness: Harness) -> None:
    """Found in review: an unpreloaded 429 read as an empty list removed every check."""
    h = harness
    h.api.put(SERVICES, "default", annotated("default", "shop", HTTP_CHECK))
    h.start()
    await h.until(lambda: len(h.urls(SHOP)) == 1)
    await h.api.wait_watching(2)

    h.api.fail_with = 429
    h.api.close_watches(abort=True)  # the source lists again, and meets 429
    await h.until(lambda: h.component()[0] is Status.DEGRADED)
    lists = len(h.api.lists())
    await h.retry_until(lambda: len(h.api.lists()) >= lists + 3)  # a few refused retries

    assert len(h.urls(SHOP)) == 1, "the checks stay while the API refuses"
    assert "429" in h.component()[1]
    h.api.fail_with = None
    await h.retry_until(lambda: h.component()[0] is Status.HEALTHY)
    assert len(h.urls(SHOP)) == 1


async def test_a_deeply_nested_annotation_is_malformed_and_blocks_nothing(
    harness: Harness,
) -> None:
    """Found in review: 600 levels of nesting raised RecursionError past the source."""
    h = harness
    deep: Any = "x"
    for _ in range(600):
        deep = [deep]
    nested = [{"name": "http", "instances": [{"url": "http://x", "extra": deep}]}]
    h.api.put(SERVICES, "default", annotated("default", "deep", nested))
    h.api.put(SERVICES, "default", annotated("default", "shop", HTTP_CHECK))
    h.start()

    await h.until(lambda: len(h.urls(SHOP)) == 1)
    await h.until(lambda: h.component()[0] is Status.DEGRADED)
    assert "nested deeper than 64 levels" in h.component()[1]
    assert source_name(SERVICE_KIND, "default", "deep") not in h.sources()


async def test_a_weight_change_alone_reaches_the_state(harness: Harness) -> None:
    """Found in review: the weight is not part of the digest, and was ignored."""
    h = harness
    h.api.put(SERVICES, "default", annotated("default", "shop", HTTP_CHECK))
    h.start()
    await h.until(lambda: len(h.urls(SHOP)) == 1)

    heavier = [{**HTTP_CHECK[0], "weight": 5.0}]
    h.api.put(SERVICES, "default", annotated("default", "shop", heavier))

    await h.until(lambda: [c.weight for c in h.sources().get(SHOP, [])] == [5.0])


async def test_services_without_checks_cost_the_dispatcher_nothing(harness: Harness) -> None:
    """Found in review: every plain Service took a dispatcher step on every event."""
    h = harness
    steps: list[object] = []
    original = h.dispatcher.replace_sources

    async def counting(sets: Any) -> Any:
        steps.append(dict(sets))
        return await original(sets)

    h.dispatcher.replace_sources = counting  # type: ignore[method-assign]
    for i in range(5):
        h.api.put(SERVICES, "default", service("default", f"plain-{i}"))
    h.start()
    await h.until(lambda: h.component()[2].get("services") == 5)
    h.api.put(SERVICES, "default", service("default", "plain-0", labels={"x": "y"}))
    h.api.put(SERVICES, "default", annotated("default", "shop", HTTP_CHECK))
    await h.until(lambda: len(h.urls(SHOP)) == 1)

    assert steps == [{SHOP: h.sources()[SHOP]}], "only the Service with checks took a step"


async def test_a_replica_that_does_not_run_the_source_reports_it_on_standby(
    harness: Harness,
) -> None:
    h = harness
    assert h.component()[:2] == (Status.HEALTHY, "standby: runs while this replica leads")
    h.api.fail_with = 503
    h.start()
    await h.until(lambda: h.component()[0] is Status.DEGRADED)

    await h.halt()  # the term ends

    assert h.component()[:2] == (Status.HEALTHY, "standby: runs while this replica leads")
