"""GET /export and POST /import: the document, whole-document validation (a bad entry
changes nothing and is named), replace and merge, the dispatcher's own sources, cordons,
counts, dry runs, limits, roles, and a follower forwarding both to the leader."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from dispatcher import wire
from dispatcher.common.clock import FakeClock
from dispatcher.core.model import SourceName, make_config
from dispatcher.election.base import LeaderInfo
from dispatcher.settings import DispatchSettings, ServerSettings, Settings
from tests.api.conftest import (
    ADMIN_TOKEN,
    API,
    AUTH,
    IDENTITY,
    SOURCE_TOKEN,
    Api,
    ApiFactory,
    check,
    follower_client,
)

EXPORT = f"{API}/export"
IMPORT = f"{API}/import"


def document(
    sources: dict[str, Any], cordoned: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "format": "clusterchecks-export",
        "version": 1,
        "exported_at": 1_763_700_000.0,
        "sources": sources,
        "cordoned": cordoned or [],
        **extra,
    }


def digest_of(config: dict[str, Any]) -> str:
    return make_config(**config).digest


async def held(api: Api) -> dict[str, list[str]]:
    """Each source's digests, from the state (the dispatcher's own sources too)."""
    return await api.service.dispatcher.read(
        lambda state: {s: sorted(state.held_by_source[s]) for s in state.source_names()}
    )


async def cordoned(api: Api) -> list[str]:
    return sorted(n["name"] for n in (await api.state())["nodes"] if n["cordoned"])


async def put_file_source(api: Api, name: str, configs: list[dict[str, Any]]) -> None:
    """A source the dispatcher feeds itself (as its config directory would)."""
    await api.service.dispatcher.replace_sources(
        {SourceName(name): [make_config(**c) for c in configs]}
    )


async def export(api: Api) -> dict[str, Any]:
    body = await api.ok("GET", EXPORT)
    assert isinstance(body, dict)
    return body


# ------------------------------------------------------------------- export


async def test_an_empty_dispatcher_exports_an_empty_document(api: Api, clock: FakeClock) -> None:
    body = await export(api)
    assert body == {
        "format": "clusterchecks-export",
        "version": 1,
        "exported_at": clock.time(),
        "sources": {},
        "cordoned": [],
    }
    wire.ExportOut.model_validate(body)


async def test_the_export_holds_every_source_sorted_with_defaults_and_cordons(api: Api) -> None:
    await api.heartbeat("node-b")
    await api.heartbeat("node-a")
    configs = [check(i) for i in range(4)]
    await api.put_source("api.team-b", configs[2:])
    await api.put_source("api:team-a", [check(0, interval_s=30, weight=2.0), *configs[1:3]])
    await put_file_source(api, "file:web.yaml", [check(9)])
    await api.ok("POST", f"{API}/nodes/node-b/cordon")

    body = await export(api)

    assert list(body["sources"]) == ["api.team-b", "api:team-a", "file:web.yaml"]
    team_a = body["sources"]["api:team-a"]
    assert [digest_of(c) for c in team_a] == sorted(digest_of(c) for c in team_a)
    assert team_a[[digest_of(c) for c in team_a].index(digest_of(check(0, interval_s=30)))] == {
        **check(0),
        "init_config": {},
        "interval_s": 30.0,
        "timeout_s": 10.0,
        "node_selector": {},
        "weight": 2.0,
    }
    assert body["cordoned"] == ["node-b"]
    wire.ExportOut.model_validate(body)


# ------------------------------------------------------------------- import


async def test_export_import_export_gives_equal_bytes(make_api: ApiFactory) -> None:
    source, target = await make_api(), await make_api()
    await source.heartbeat("node-a")
    await target.heartbeat("node-a")
    await source.put_source("api:a", [check(1), check(2, node_selector={"zone": "z"})])
    await source.put_source("ci", [check(2, node_selector={"zone": "z"}), check(3, weight=0.5)])
    await source.ok("POST", f"{API}/nodes/node-a/cordon")
    first = await source.get(EXPORT)

    reply = await target.ok("POST", IMPORT, json.loads(first.text))
    again = await target.get(EXPORT)

    assert reply["sources"] == {
        "api:a": {"added": 2, "removed": 0, "unchanged": 0},
        "ci": {"added": 2, "removed": 0, "unchanged": 0},
    }
    assert reply["cordoned"] == ["node-a"]
    assert again.text == first.text  # the fake clock stood still: exported_at too


async def test_replace_makes_the_document_the_desired_state(api: Api) -> None:
    await api.put_source("api:a", [check(1), check(2)])
    await api.put_source("api:b", [check(3)])
    await put_file_source(api, "file:web.yaml", [check(4)])

    reply = await api.ok(
        "POST", IMPORT, document({"api:a": [check(2), check(5)], "api:c": [check(6)]})
    )

    assert reply["mode"] == "replace"
    assert reply["dry_run"] is False
    assert reply["sources"] == {
        "api:a": {"added": 1, "removed": 1, "unchanged": 1},
        "api:b": {"added": 0, "removed": 1, "unchanged": 0},
        "api:c": {"added": 1, "removed": 0, "unchanged": 0},
    }
    assert await held(api) == {
        "api:a": sorted([digest_of(check(2)), digest_of(check(5))]),
        "api:c": [digest_of(check(6))],
        "file:web.yaml": [digest_of(check(4))],  # the config directory's: left alone
    }
    wire.ImportOut.model_validate(reply)


async def test_merge_replaces_the_document_s_sources_and_leaves_the_others(api: Api) -> None:
    await api.put_source("api:a", [check(1), check(2)])
    await api.put_source("api:b", [check(3)])

    reply = await api.ok("POST", IMPORT + "?mode=merge", document({"api:a": [check(2)]}))

    assert reply["mode"] == "merge"
    assert reply["sources"] == {"api:a": {"added": 0, "removed": 1, "unchanged": 1}}
    assert await held(api) == {
        "api:a": [digest_of(check(2))],
        "api:b": [digest_of(check(3))],
    }


@pytest.mark.parametrize("mode", ["replace", "merge"])
async def test_the_dispatcher_s_own_sources_are_skipped(api: Api, mode: str) -> None:
    await put_file_source(api, "file:web.yaml", [check(1)])
    doc = document(
        {"file:web.yaml": [check(2)], "k8s:service:default:shop": [check(3)], "ci": [check(4)]}
    )

    reply = await api.ok("POST", f"{IMPORT}?mode={mode}", doc)

    assert reply["skipped_sources"] == ["file:web.yaml", "k8s:service:default:shop"]
    assert list(reply["sources"]) == ["ci"]
    assert await held(api) == {
        "ci": [digest_of(check(4))],
        "file:web.yaml": [digest_of(check(1))],
    }


async def test_cordons_apply_to_registered_nodes_and_the_rest_are_reported(api: Api) -> None:
    await api.heartbeat("node-a")
    await api.heartbeat("node-b")
    await api.heartbeat("node-c")
    await api.ok("POST", f"{API}/nodes/node-c/cordon")

    reply = await api.ok(
        "POST", IMPORT, document({"ci": [check(i) for i in range(6)]}, ["node-a", "ghost"])
    )

    assert reply["cordoned"] == ["node-a"]
    assert reply["skipped_cordons"] == ["ghost"]
    assert await cordoned(api) == ["node-a", "node-c"], "an import never uncordons"
    placement = await api.placement()
    # Cordoned before the checks came: every one of them went to the node left open.
    assert set(placement.values()) == {"node-b"}


async def test_a_dry_run_reports_the_counts_and_changes_nothing(api: Api) -> None:
    await api.heartbeat("node-a")
    await api.put_source("api:a", [check(1), check(2)])
    await api.put_source("api:b", [check(3)])
    before = await api.snapshot()

    reply = await api.ok(
        "POST", IMPORT + "?dry_run=true", document({"api:a": [check(2), check(5)]}, ["node-a"])
    )

    assert reply["dry_run"] is True
    assert reply["sources"] == {
        "api:a": {"added": 1, "removed": 1, "unchanged": 1},
        "api:b": {"added": 0, "removed": 1, "unchanged": 0},
    }
    assert reply["cordoned"] == ["node-a"]
    assert await api.snapshot() == before


async def test_an_empty_document_replaces_everything_with_nothing(api: Api) -> None:
    await api.put_source("api:a", [check(1)])
    reply = await api.ok("POST", IMPORT, document({}))
    assert reply["sources"] == {"api:a": {"added": 0, "removed": 1, "unchanged": 0}}
    assert await held(api) == {}


# --------------------------------------------------------- bad documents


def _bad(index: int, **fields: Any) -> list[dict[str, Any]]:
    configs = [check(i) for i in range(index + 2)]
    configs[index] = {**configs[index], **fields}
    return configs


BAD_DOCUMENTS = [
    pytest.param(
        document({"api:ok": [check(0)], "api:team-a": _bad(3, interval_s=0)}),
        ["sources.api:team-a[3].interval_s"],
        id="bad-interval",
    ),
    pytest.param(
        document({"api.team": _bad(1, instances=[{"url": "x"}, 5])}),
        ["sources.api.team[1].instances[1]"],
        id="bad-instance-dotted-source",
    ),
    pytest.param(
        document({"ci": _bad(0, timeout_s=20, interval_s=10)}), ["sources.ci[0]"], id="timeout"
    ),
    pytest.param(
        document({"ci": _bad(0, colour="red")}), ["sources.ci[0].colour"], id="unknown-field"
    ),
    pytest.param(document({"bad name": [check(0)]}), ["sources.bad name"], id="bad-source-name"),
    pytest.param(document({"ci": {"configs": []}}), ["sources.ci"], id="not-a-list"),
    pytest.param(document({}, ["node a"]), ["cordoned[0]"], id="bad-node-name"),
    pytest.param(
        {**document({"ci": [check(0)]}), "format": "kuberhealthy"}, ["format"], id="format"
    ),
    pytest.param({**document({"ci": [check(0)]}), "version": 2}, ["version"], id="version"),
    pytest.param(document({"ci": [check(0)]}, extra=1), ["extra"], id="unknown-top-field"),
    pytest.param({"format": "clusterchecks-export", "version": 1}, ["sources"], id="no-sources"),
    pytest.param([check(0)], ["(body)"], id="not-an-object"),
    pytest.param(
        {**document({"ci": _bad(2, name="Bad")}), "version": 3},
        ["version", "sources.ci[2].name"],
        id="envelope-and-config",
    ),
]


@pytest.mark.parametrize(("body", "paths"), BAD_DOCUMENTS)
async def test_a_bad_document_is_refused_whole_naming_the_entry(
    api: Api, body: Any, paths: list[str]
) -> None:
    await api.heartbeat("node-a")
    await api.put_source("api:ok", [check(7)])
    before = await api.snapshot()

    reply = await api.post(IMPORT, body)

    assert reply.status == 400, reply.text
    assert reply.field_paths() == paths
    assert paths[0] in reply.error()["message"]
    assert await api.snapshot() == before


async def test_a_bad_entry_past_the_first_slice_is_named_by_its_place_in_the_source(
    make_api: ApiFactory,
) -> None:
    settings = Settings(dispatch=DispatchSettings(apply_slice_checks=3))
    api = await make_api(settings)
    body = document({"ci": _bad(7, weight=0), "ok": [check(0)]})

    reply = await api.post(IMPORT, body)

    assert reply.field_paths() == ["sources.ci[7].weight"]
    assert await held(api) == {}


async def test_a_document_with_many_bad_entries_lists_at_most_100(api: Api) -> None:
    bad = [{**check(i), "interval_s": 0} for i in range(300)]
    reply = await api.post(IMPORT, document({"a": bad, "b": bad}))
    assert reply.status == 400
    error = reply.error()
    assert len(error["details"]["fields"]) == 100
    assert error["details"]["truncated"] is True


@pytest.mark.parametrize(
    ("query", "path"), [("mode=overwrite", "query.mode"), ("dry_run=maybe", "query.dry_run")]
)
async def test_a_bad_query_is_400(api: Api, query: str, path: str) -> None:
    await api.put_source("ci", [check(0)])
    reply = await api.post(f"{IMPORT}?{query}", document({}))
    assert reply.status == 400
    assert reply.field_paths() == [path]
    assert await held(api) == {"ci": [digest_of(check(0))]}


async def test_not_json_is_invalid_json_and_another_type_415(api: Api) -> None:
    assert (await api.post(IMPORT, raw=b'{"format": ')).code() == "invalid_json"
    reply = await api.post(IMPORT, raw=b"{}", content_type="text/plain")
    assert (reply.status, reply.code()) == (415, "unsupported_media_type")


# ----------------------------------------------------------------- limits


async def test_a_source_beyond_its_limit_changes_nothing_not_even_cordons(
    make_api: ApiFactory,
) -> None:
    api = await make_api(Settings(dispatch=DispatchSettings(max_checks_per_source=2)))
    await api.heartbeat("node-a")
    await api.put_source("old", [check(9)])
    before = await api.snapshot()

    reply = await api.post(
        IMPORT, document({"a": [check(0)], "b": [check(1), check(2), check(3)]}, ["node-a"])
    )

    assert (reply.status, reply.code()) == (413, "too_many_checks")
    assert reply.error()["details"]["source"] == "b"
    assert await api.snapshot() == before


def limits(*, body: int, import_: int) -> Settings:
    settings = Settings()
    server = replace(settings.server, max_body_bytes=body, max_import_bytes=import_)
    return replace(settings, server=server)


async def test_an_import_takes_a_body_beyond_every_other_route_s_limit(
    make_api: ApiFactory,
) -> None:
    api = await make_api(limits(body=2048, import_=64 * 1024))
    configs = [check(i) for i in range(40)]
    body = document({"ci": configs})
    assert 2048 < len(json.dumps(body)) < 64 * 1024

    put = await api.request("PUT", f"{API}/sources/ci", body={"configs": configs})
    imported = await api.post(IMPORT, body)

    assert (put.status, put.code()) == (413, "body_too_large")
    assert imported.status == 200, imported.text
    assert await held(api) == {"ci": sorted(digest_of(c) for c in configs)}


async def test_a_body_over_the_import_limit_is_413_naming_it(make_api: ApiFactory) -> None:
    api = await make_api(limits(body=1024, import_=2048))
    reply = await api.post(IMPORT, document({"ci": [check(i) for i in range(40)]}))
    assert (reply.status, reply.code()) == (413, "body_too_large")
    assert "2,048 bytes" in reply.error()["message"]
    assert await held(api) == {}


# ------------------------------------------------------------------ roles


@pytest.mark.parametrize(("method", "path"), [("GET", EXPORT), ("POST", IMPORT)])
async def test_export_and_import_need_the_admin_role(
    make_api: ApiFactory, method: str, path: str
) -> None:
    api = await make_api(Settings(auth=AUTH))
    body = document({}) if method == "POST" else None
    kwargs: dict[str, Any] = {"body": body} if body is not None else {}

    source = await api.request(method, path, token=SOURCE_TOKEN, **kwargs)
    admin = await api.request(method, path, token=ADMIN_TOKEN, **kwargs)

    assert (source.status, source.code()) == (403, "forbidden")
    assert admin.status == 200, admin.text


# -------------------------------------------------------------- followers


async def test_a_follower_forwards_export_and_import_to_the_leader(
    api: Api, aiohttp_client: AiohttpClient
) -> None:
    await api.put_source("ci", [check(1)])
    leader_url = str(api.client.make_url("")).rstrip("/")
    follower = await follower_client(
        aiohttp_client,
        LeaderInfo(IDENTITY, leader_url, 1),
        settings=Settings(server=ServerSettings(identity="follower-1")),
    )

    exported = await follower.get(EXPORT)
    assert exported.status == 200, exported.text
    assert exported.headers["X-Clusterchecks-Leader"] == IDENTITY
    assert exported.text == (await api.get(EXPORT)).text

    imported = await follower.post(IMPORT + "?mode=merge", document({"api:x": [check(2)]}))
    assert imported.status == 200, imported.text
    assert await held(api) == {"api:x": [digest_of(check(2))], "ci": [digest_of(check(1))]}


async def test_a_follower_forwards_an_import_beyond_every_other_route_s_limit(
    make_api: ApiFactory, aiohttp_client: AiohttpClient
) -> None:
    settings = limits(body=2048, import_=64 * 1024)
    api = await make_api(settings)
    leader_url = str(api.client.make_url("")).rstrip("/")
    follower_settings = replace(settings, server=replace(settings.server, identity="follower-1"))
    follower = await follower_client(
        aiohttp_client, LeaderInfo(IDENTITY, leader_url, 1), settings=follower_settings
    )
    configs = [check(i) for i in range(40)]

    imported = await follower.post(IMPORT, document({"ci": configs}))

    assert imported.status == 200, imported.text
    assert await held(api) == {"ci": sorted(digest_of(c) for c in configs)}


async def test_the_openapi_document_describes_the_query_and_the_models(api: Api) -> None:
    doc = (await api.get("/v1/api/openapi.json")).json
    operation = doc["paths"][IMPORT]["post"]
    query = {p["name"]: p["schema"] for p in operation["parameters"] if p["in"] == "query"}
    assert query["mode"]["enum"] == ["replace", "merge"]
    assert query["dry_run"]["type"] == "boolean"
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/ImportIn")
    assert "413" in operation["responses"]
    schemas = doc["components"]["schemas"]
    assert schemas["ImportIn"]["properties"]["sources"]["additionalProperties"] is False
    reply = doc["paths"][EXPORT]["get"]["responses"]["200"]["content"]["application/json"]
    assert reply["schema"]["$ref"].endswith("/ExportOut")
