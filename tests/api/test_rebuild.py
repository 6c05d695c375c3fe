"""Rebuild from the agents over the status route (API.md, status, extension): a leader
that warms up asks with ``send_running_configs`` and adopts the ``running_configs`` of
the next status; bad ones are refused as any bad body is."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from dispatcher.common.clock import FakeClock
from dispatcher.settings import DispatchSettings, Settings
from tests.api.conftest import API, Api, ApiFactory, check

WARMUP_S = 30.0
STATUS = f"{API}/status/node-a"


@pytest.fixture
async def warming(make_api: ApiFactory) -> Api:
    """A leader that started empty and warms up for ``WARMUP_S`` (fake clock)."""
    return await make_api(Settings(dispatch=DispatchSettings(warmup_duration_s=WARMUP_S)))


async def running_form(api: Api, *configs: dict[str, Any], source: str = "ci") -> list[Any]:
    """The output form an agent got its checks in, from a leader that is not warming up."""
    await api.heartbeat("node-a", 0)
    await api.put_source(source, list(configs))
    served = (await api.configs("node-a"))["configs"]
    assert len(served) == len(configs)
    return list(served)


async def test_a_warming_up_leader_asks_and_adopts_what_the_agent_runs(
    api: Api, warming: Api
) -> None:
    running = await running_form(api, check(0), check(1))
    digests = sorted(c["digest"] for c in running)

    first = await warming.heartbeat("node-a", 0)
    assert first["warmup"] is True
    assert first["send_running_configs"] is True
    assert (await warming.state())["totals"]["checks"] == 0

    reply = await warming.heartbeat("node-a", 0, running=digests, running_configs=running)

    assert reply["send_running_configs"] is False, "asked until the node answered"
    assert reply["is_up_to_date"] is True  # while warming up
    assert await warming.placement() == dict.fromkeys(digests, "node-a")
    checks = (await warming.ok("GET", f"{API}/checks"))["checks"]
    assert [c["sources"] for c in checks] == [["ci"], ["ci"]]
    source = await warming.ok("GET", f"{API}/sources/ci")
    assert sorted(c["digest"] for c in source["configs"]) == digests
    again = await warming.heartbeat("node-a", 0)
    assert again["send_running_configs"] is False


async def test_after_the_warm_up_the_agent_is_served_exactly_what_it_runs(
    api: Api, warming: Api, clock: FakeClock
) -> None:
    running = await running_form(api, check(0), check(1), check(2))
    await warming.heartbeat("node-a", 0)
    await warming.heartbeat("node-a", 0, running_configs=running)

    clock.advance(WARMUP_S)
    reply = await warming.heartbeat("node-a", 0)
    assert reply["warmup"] is False
    assert reply["is_up_to_date"] is False, "the adoption changed the node's counter"
    served = await warming.configs("node-a")
    assert served["configs"] == running


async def test_a_leader_that_does_not_warm_up_never_asks_and_ignores_running_configs(
    api: Api, make_api: ApiFactory
) -> None:
    running = await running_form(api, check(0))
    other = await make_api()

    first = await other.heartbeat("node-a", 0)
    reply = await other.heartbeat("node-a", 0, running_configs=running)

    assert first["send_running_configs"] is False
    assert reply["send_running_configs"] is False
    assert (await other.state())["totals"]["checks"] == 0


async def test_a_leader_past_its_warm_up_stops_asking(warming: Api, clock: FakeClock) -> None:
    assert (await warming.heartbeat("node-a", 0))["send_running_configs"] is True
    clock.advance(WARMUP_S)
    assert (await warming.heartbeat("node-a", 0))["send_running_configs"] is False


async def test_a_mismatched_digest_is_dropped_and_the_heartbeat_succeeds(
    api: Api, warming: Api
) -> None:
    [good, other] = await running_form(api, check(0), check(1))
    forged = {**other, "digest": good["digest"][::-1]}

    await warming.heartbeat("node-a", 0)
    reply = await warming.heartbeat("node-a", 0, running_configs=[forged, good])

    assert reply["send_running_configs"] is False
    assert await warming.placement() == {good["digest"]: "node-a"}


async def test_a_leaving_node_is_not_asked(warming: Api) -> None:
    await warming.heartbeat("node-a", 0)
    reply = await warming.heartbeat("node-a", -1, leaving=True)
    assert reply["send_running_configs"] is False


def output_form(**fields: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "http",
        "instances": [{"url": "http://svc/healthz"}],
        "init_config": {},
        "interval_s": 15.0,
        "timeout_s": 10.0,
        "node_selector": {},
        "weight": 1.0,
        "digest": "0123456789abcdef",
        "sources": ["ci"],
        "node": "node-a",
    }
    config.update(fields)
    return {k: v for k, v in config.items() if v is not ...}


BAD_RUNNING_CONFIGS = [
    pytest.param({"x": 1}, "running_configs", id="not-a-list"),
    pytest.param([5], "running_configs.0", id="not-an-object"),
    pytest.param([output_form(), "x"], "running_configs.1", id="a-string"),
    pytest.param([{}] * 100_001, "running_configs", id="too-many"),
]


@pytest.mark.parametrize(("running_configs", "path"), BAD_RUNNING_CONFIGS)
async def test_running_configs_that_are_not_a_list_of_objects_are_refused(
    warming: Api, running_configs: Any, path: str
) -> None:
    """The field itself is read strictly: a list, of objects, not too long. What each
    object holds is read entry by entry (below)."""
    await warming.heartbeat("node-a", 0)

    reply = await warming.post(STATUS, {"last_change": 0, "running_configs": running_configs})

    assert reply.status == 400, reply.text
    assert reply.code() == "invalid_request"
    assert path in reply.field_paths(), reply.text
    assert (await warming.state())["totals"]["checks"] == 0


BAD_ENTRIES = [
    pytest.param(output_form(digest=...), "digest", id="no-digest"),
    pytest.param(output_form(digest="XYZ"), "digest", id="bad-digest"),
    pytest.param(output_form(sources=...), "sources", id="no-sources"),
    pytest.param(output_form(sources=[]), "sources", id="empty-sources"),
    pytest.param(output_form(sources=["a/b"]), "sources.0", id="bad-source"),
    pytest.param(output_form(sources=["ci", 5]), "sources.1", id="source-not-a-string"),
    pytest.param(output_form(name="Bad Name"), "name", id="bad-name"),
    pytest.param(output_form(instances=[]), "instances", id="no-instances"),
    pytest.param(output_form(interval_s="15"), "interval_s", id="str-num"),
    pytest.param(output_form(timeout_s=20.0), "timeout_s", id="timeout>interval"),
    pytest.param(output_form(node=7), "node", id="bad-node"),
    pytest.param(output_form(extra=1), "extra", id="unknown-field"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_ENTRIES)
async def test_a_bad_entry_is_dropped_with_a_warning_and_the_others_are_adopted(
    api: Api, warming: Api, bad: dict[str, Any], field: str
) -> None:
    """One entry this leader cannot read (another build's, a rule tightened by an
    upgrade) must not cost the agent every other check: the status succeeds, the entry
    is dropped and logged, the rest adopted, and the node is not asked again."""
    [good] = await running_form(api, check(0))
    await warming.heartbeat("node-a", 0)

    with capture_logs() as logs:
        reply = await warming.heartbeat("node-a", 0, running_configs=[bad, good])

    assert reply["send_running_configs"] is False, "the node answered"
    assert await warming.placement() == {good["digest"]: "node-a"}
    [warning] = [e for e in logs if e["event"] == "running_config_dropped"]
    assert warning["log_level"] == "warning"
    assert warning["node"] == "node-a"
    assert warning["index"] == 0
    assert field in warning["problems"], warning


async def test_the_dispatchers_own_sources_are_left_out_before_their_names_are_checked(
    api: Api, warming: Api
) -> None:
    """The config-dir source names its sources after any ``*.yaml`` file: ``file:my
    checks.yaml`` is no valid source name, and an agent reports it. Such sources are
    never adopted: they go before the names are checked, so the entry is not dropped."""
    [x, y] = await running_form(api, check(0), check(1))
    x = {**x, "sources": ["file:my checks.yaml", "ci"]}
    y = {**y, "sources": ["file:my checks.yaml", "k8s:ns/a b"]}
    await warming.heartbeat("node-a", 0)

    with capture_logs() as logs:
        await warming.heartbeat("node-a", 0, running_configs=[x, y])

    assert [e for e in logs if e["event"] == "running_config_dropped"] == []
    assert await warming.placement() == {x["digest"]: "node-a"}
    checks = (await warming.ok("GET", f"{API}/checks"))["checks"]
    assert [c["sources"] for c in checks] == [["ci"]], "held by the source the API wrote"


async def test_the_openapi_document_describes_the_extension(api: Api) -> None:
    schemas = (await api.ok("GET", "/v1/api/openapi.json"))["components"]["schemas"]
    status_in = schemas["StatusIn"]["properties"]["running_configs"]
    assert status_in["description"]
    [listed] = [s for s in status_in["anyOf"] if s.get("type") == "array"]
    # The form an entry should have, or any other object: the leader drops those one by
    # one, so the document declares what it accepts (schemathesis sends both kinds).
    assert listed["items"] == {
        "anyOf": [
            {"$ref": "#/components/schemas/RunningConfigIn"},
            {"additionalProperties": True, "type": "object"},
        ]
    }
    assert listed["maxItems"] == 100_000
    running = schemas["RunningConfigIn"]
    assert running["additionalProperties"] is False
    assert set(running["required"]) == {"name", "instances", "digest", "sources"}
    assert set(running["properties"]) == set(schemas["CheckConfigOut"]["properties"])
    assert running["properties"]["sources"]["minItems"] == 1
    send = schemas["StatusOut"]["properties"]["send_running_configs"]
    assert send["type"] == "boolean"
    assert send["description"]


async def test_a_source_that_comes_to_hold_a_placed_check_makes_its_agent_refetch(
    api: Api,
) -> None:
    """Source a pushed x to node-a; source b POSTs x too (200). node-a's agent is told
    (its counter moves) and gets both sources, or a leader that rebuilds from it would
    adopt x held by a alone."""
    [served] = await running_form(api, check(0), source="a")
    counter = (await api.configs("node-a"))["last_change"]

    await api.ok("POST", f"{API}/checks", {"source": "b", "configs": [check(0)]})

    assert (await api.heartbeat("node-a", counter))["is_up_to_date"] is False
    [again] = (await api.configs("node-a"))["configs"]
    assert again == {**served, "sources": ["a", "b"]}, "the same check, with its holders"


async def test_a_write_in_the_warm_up_is_not_undone_by_a_later_report(
    api: Api, warming: Api
) -> None:
    """ci PUTs {y} and deletes z during the warm-up (200 each); node-a's report, made
    from what it got before, arrives afterwards: ci holds y alone, z stays deleted."""
    served = await running_form(api, check(0), check(1), check(2))
    x, y, z = sorted(served, key=lambda c: str(c["instances"][0]["url"]))  # 0, 1, 2
    await warming.heartbeat("node-a", 0)
    await warming.put_source("ci", [check(1), check(2)])
    await warming.ok("DELETE", f"{API}/checks/{z['digest']}")

    await warming.heartbeat("node-a", 0, running_configs=[x, y, z])

    source = await warming.ok("GET", f"{API}/sources/ci")
    assert [c["digest"] for c in source["configs"]] == [y["digest"]]
    assert await warming.placement() == {y["digest"]: "node-a"}
