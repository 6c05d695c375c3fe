"""Config-source routes: PUT and GET a source's set, POST checks, DELETE a check."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from dispatcher.settings import Settings
from dispatcher.sources.configdir import ConfigDirSource
from tests.api.conftest import (
    ADMIN_TOKEN,
    API,
    AUTH,
    NODE_TOKEN,
    SOURCE_TOKEN,
    Api,
    ApiFactory,
    check,
)

DIGEST = re.compile(r"^[0-9a-f]{16,64}$")
NAME = re.compile(r"[A-Za-z0-9._-]{1,253}")
SOURCE_NAME = re.compile(r"[A-Za-z0-9._:-]{1,253}")


# ---------------------------------------------------------------------- PUT


async def test_put_replies_with_digests_in_request_order_and_counts(api: Api) -> None:
    configs = [check(2), check(0), check(1)]

    reply = await api.put(f"{API}/sources/ci", {"configs": configs})

    assert reply.status == 200, reply.text
    body = reply.json
    assert set(body) == {"epoch", "digests", "added", "removed", "unchanged"}
    assert body["epoch"] == api.service.dispatcher.epoch
    assert (body["added"], body["removed"], body["unchanged"]) == (3, 0, 0)
    digests = body["digests"]
    assert len(set(digests)) == 3
    assert all(DIGEST.fullmatch(d) for d in digests)
    # Request order: each digest is that of the config at the same position.
    for config, digest in zip(configs, digests, strict=True):
        [alone] = await api.put_source("probe", [config])
        assert alone == digest


async def test_put_is_idempotent(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    configs = [check(0), check(1)]
    first = await api.ok("PUT", f"{API}/sources/ci", {"configs": configs})
    before = await api.snapshot()

    second = await api.ok("PUT", f"{API}/sources/ci", {"configs": configs})

    assert second["digests"] == first["digests"]
    assert (second["added"], second["removed"], second["unchanged"]) == (0, 0, 2)
    assert await api.snapshot() == before


async def test_put_replaces_the_sources_whole_set(api: Api) -> None:
    d0, d1 = await api.put_source("ci", [check(0), check(1)])

    body = await api.ok("PUT", f"{API}/sources/ci", {"configs": [check(1), check(2)]})

    assert (body["added"], body["removed"], body["unchanged"]) == (1, 1, 1)
    assert body["digests"][0] == d1
    held = {c["digest"] for c in (await api.ok("GET", f"{API}/sources/ci"))["configs"]}
    assert held == {d1, body["digests"][1]}
    assert d0 not in await api.placement()


async def test_counts_are_against_the_sources_own_set(api: Api) -> None:
    [digest] = await api.put_source("one", [check(0)])

    body = await api.ok("PUT", f"{API}/sources/two", {"configs": [check(0)]})

    assert body["digests"] == [digest]
    assert (body["added"], body["removed"], body["unchanged"]) == (1, 0, 0)
    assert (await api.check(digest))["sources"] == ["one", "two"]


async def test_a_check_stays_while_one_source_holds_it(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    [digest] = await api.put_source("one", [check(0)])
    await api.put_source("two", [check(0)])

    body = await api.ok("PUT", f"{API}/sources/one", {"configs": []})

    assert (body["added"], body["removed"], body["unchanged"]) == (0, 1, 0)
    detail = await api.check(digest)
    assert detail["sources"] == ["two"]
    assert detail["node"] == "node-a"

    await api.put_source("two", [])

    assert digest not in await api.placement()
    assert (await api.get(f"{API}/checks/{digest}")).code() == "unknown_check"


async def test_the_digest_ignores_weight_and_is_the_same_on_every_replica(
    make_api: ApiFactory,
) -> None:
    one = await make_api()
    other = await make_api()

    [a] = await one.put_source("ci", [check(0, weight=1.0)])
    [b] = await other.put_source("elsewhere", [check(0, weight=3.5)])
    [c] = await one.put_source("x", [check(0, interval_s=20)])

    assert a == b
    assert c != a


async def test_defaults_are_filled_in(api: Api) -> None:
    await api.put_source("ci", [check(0), check(1, interval_s=5)])

    body = await api.ok("GET", f"{API}/sources/ci")

    by_url = {c["instances"][0]["url"]: c for c in body["configs"]}
    first = by_url["http://svc-0.default.svc/healthz"]
    assert {k: v for k, v in first.items() if k != "digest"} == {
        "name": "http",
        "instances": [{"url": "http://svc-0.default.svc/healthz"}],
        "init_config": {},
        "interval_s": 15.0,
        "timeout_s": 10.0,
        "node_selector": {},
        "weight": 1.0,
        "sources": ["ci"],
        "node": None,
    }
    second = by_url["http://svc-1.default.svc/healthz"]
    assert (second["interval_s"], second["timeout_s"]) == (5.0, 5.0)


@pytest.mark.parametrize(
    ("config", "path"),
    [
        pytest.param({"instances": [{}]}, "configs.1.name", id="name-missing"),
        pytest.param(check(name="HTTP"), "configs.1.name", id="name-uppercase"),
        pytest.param(check(name="a" * 65), "configs.1.name", id="name-too-long"),
        pytest.param(check(name="http\n"), "configs.1.name", id="name-trailing-newline"),
        pytest.param({"name": "http"}, "configs.1.instances", id="instances-missing"),
        pytest.param(check(instances=[]), "configs.1.instances", id="instances-empty"),
        pytest.param(check(instances=[1]), "configs.1.instances", id="instance-not-object"),
        pytest.param(check(init_config=[]), "configs.1.init_config", id="init-config-list"),
        pytest.param(check(interval_s=0), "configs.1.interval_s", id="interval-zero"),
        pytest.param(check(interval_s=86401), "configs.1.interval_s", id="interval-too-big"),
        pytest.param(check(interval_s="15"), "configs.1.interval_s", id="interval-string"),
        pytest.param(check(timeout_s=0), "configs.1.timeout_s", id="timeout-zero"),
        pytest.param(check(interval_s=5, timeout_s=6), "configs.1", id="timeout-over-interval"),
        pytest.param(check(weight=0), "configs.1.weight", id="weight-zero"),
        pytest.param(check(weight=-1), "configs.1.weight", id="weight-negative"),
        pytest.param(check(node_selector={"a": 1}), "configs.1.node_selector", id="selector"),
        pytest.param(check(bogus=True), "configs.1.bogus", id="unknown-field"),
        pytest.param(check(digest="abc"), "configs.1.digest", id="digest-is-output-only"),
    ],
)
async def test_an_invalid_config_is_400_naming_the_field_and_changes_nothing(
    api: Api, config: dict[str, Any], path: str
) -> None:
    await api.put_source("ci", [check(5)])
    before = await api.snapshot()

    reply = await api.put(f"{API}/sources/ci", {"configs": [check(6), config]})

    assert reply.status == 400, reply.text
    paths = reply.field_paths()
    assert any(p.startswith(path) for p in paths), paths
    assert await api.snapshot() == before


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("body", "path"),
    [
        pytest.param({}, "configs", id="configs-missing"),
        pytest.param({"configs": {}}, "configs", id="configs-not-a-list"),
        pytest.param({"configs": [], "extra": 1}, "extra", id="unknown-top-level-field"),
        pytest.param({"configs": [check(0, instances=[_nested(80)])]}, "configs.0", id="deep"),
    ],
)
async def test_an_invalid_put_body_is_400_naming_the_field(
    api: Api, body: dict[str, Any], path: str
) -> None:
    reply = await api.put(f"{API}/sources/ci", body)

    assert reply.status == 400, reply.text
    assert any(p.startswith(path) for p in reply.field_paths()), reply.text
    assert (await api.state())["totals"]["checks"] == 0


async def test_unknown_fields_are_named_in_the_message_and_details(api: Api) -> None:
    reply = await api.put(
        f"{API}/sources/ci", {"configs": [check(0, colour="red", flavour="mint")]}
    )

    assert reply.status == 400
    error = reply.error()
    assert set(reply.field_paths()) >= {"configs.0.colour", "configs.0.flavour"}
    assert "colour" in error["message"]


# ---------------------------------------------------------------------- GET


async def test_get_source_lists_its_configs(api: Api) -> None:
    d0, d1 = await api.put_source("ci", [check(0), check(1)])
    await api.put_source("other", [check(2)])

    body = await api.ok("GET", f"{API}/sources/ci")

    assert set(body) == {"epoch", "configs"}
    assert body["epoch"] == api.service.dispatcher.epoch
    assert sorted(c["digest"] for c in body["configs"]) == sorted([d0, d1])


async def test_an_unknown_source_has_no_configs(api: Api) -> None:
    body = await api.ok("GET", f"{API}/sources/never-seen")
    assert body == {"epoch": api.service.dispatcher.epoch, "configs": []}


# ------------------------------------------------------------- POST checks


async def test_post_checks_adds_to_the_sources_set(api: Api) -> None:
    [d0] = await api.put_source("ci", [check(0)])

    reply = await api.post(f"{API}/checks", {"source": "ci", "configs": [check(2), check(1)]})

    assert reply.status == 200, reply.text
    body = reply.json
    assert set(body) == {"epoch", "digests"}
    assert body["epoch"] == api.service.dispatcher.epoch
    d2, d1 = body["digests"]
    held = {c["digest"] for c in (await api.ok("GET", f"{API}/sources/ci"))["configs"]}
    assert held == {d0, d1, d2}
    assert [await api.put_source("probe", [check(2)])] == [[d2]]


async def test_post_checks_places_at_once_when_a_node_exists(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    body = await api.ok("POST", f"{API}/checks", {"source": "ci", "configs": [check(0)]})
    assert (await api.placement())[body["digests"][0]] == "node-a"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        pytest.param({"configs": [check(0)]}, "source", id="source-missing"),
        pytest.param({"source": "a b", "configs": [check(0)]}, "source", id="source-bad-name"),
        pytest.param({"source": "x" * 254, "configs": [check(0)]}, "source", id="source-long"),
        pytest.param({"source": "ci"}, "configs", id="configs-missing"),
        pytest.param({"source": "ci", "configs": [{"name": "http"}]}, "configs.0", id="bad"),
    ],
)
async def test_an_invalid_post_checks_body_is_400(
    api: Api, body: dict[str, Any], path: str
) -> None:
    reply = await api.post(f"{API}/checks", body)

    assert reply.status == 400, reply.text
    assert any(p.startswith(path) for p in reply.field_paths()), reply.text
    assert (await api.state())["totals"]["checks"] == 0


# ------------------------------------------------------------------- DELETE


async def test_delete_with_source_removes_it_from_that_source_only(api: Api) -> None:
    [digest] = await api.put_source("one", [check(0)])
    await api.put_source("two", [check(0)])

    reply = await api.delete(f"{API}/checks/{digest}?source=one")

    assert reply.status == 200, reply.text
    assert reply.json["removed"] is True
    assert (await api.check(digest))["sources"] == ["two"]
    assert (await api.ok("GET", f"{API}/sources/one"))["configs"] == []


async def test_delete_of_the_last_holder_removes_the_check(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    [digest] = await api.put_source("ci", [check(0)])

    await api.ok("DELETE", f"{API}/checks/{digest}?source=ci")

    assert await api.placement() == {}
    assert (await api.configs("node-a"))["configs"] == []


async def test_delete_without_source_removes_it_from_every_source(api: Api) -> None:
    [digest] = await api.put_source("one", [check(0)])
    await api.put_source("two", [check(0)])

    body = await api.ok("DELETE", f"{API}/checks/{digest}")

    assert body["removed"] is True
    assert digest not in await api.placement()
    assert (await api.ok("GET", f"{API}/sources/two"))["configs"] == []


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("{digest}?source=other", id="source-does-not-hold-it"),
        pytest.param("ffffffffffffffffffffffffffffffff?source=ci", id="well-formed-unknown"),
        pytest.param("ffffffffffffffffffffffffffffffff", id="well-formed-unknown-all"),
        pytest.param("NOT-A-DIGEST?source=ci", id="malformed"),
        pytest.param("NOT-A-DIGEST", id="malformed-all"),
        pytest.param("f" * 300, id="too-long"),
    ],
)
async def test_delete_of_a_check_not_held_is_404_unknown_check(api: Api, target: str) -> None:
    [digest] = await api.put_source("ci", [check(0)])
    before = await api.snapshot()

    reply = await api.delete(f"{API}/checks/{target.format(digest=digest)}")

    assert reply.status == 404, reply.text
    assert reply.code() == "unknown_check"
    assert await api.snapshot() == before


@pytest.mark.parametrize("source", ["a%20b", "x" * 254, "", "caf%C3%A9"])
async def test_delete_with_a_bad_source_name_is_400(api: Api, source: str) -> None:
    [digest] = await api.put_source("ci", [check(0)])
    before = await api.snapshot()

    reply = await api.delete(f"{API}/checks/{digest}?source={source}")

    assert reply.status == 400, reply.text
    assert reply.code() == "invalid_request"
    assert await api.snapshot() == before


async def test_delete_without_source_needs_the_admin_role(make_api: ApiFactory) -> None:
    api = await make_api(Settings(auth=AUTH), token=ADMIN_TOKEN)
    [digest] = await api.put_source("ci", [check(0)])
    before = await api.snapshot()

    denied = await api.delete(f"{API}/checks/{digest}", token=SOURCE_TOKEN)
    assert denied.status == 403, denied.text
    assert denied.code() == "forbidden"
    assert await api.snapshot() == before

    wrong_role = await api.delete(f"{API}/checks/{digest}?source=ci", token=NODE_TOKEN)
    assert wrong_role.status == 403
    assert await api.snapshot() == before

    allowed = await api.delete(f"{API}/checks/{digest}?source=ci", token=SOURCE_TOKEN)
    assert allowed.status == 200, allowed.text
    assert await api.placement() == {}

    [digest] = await api.put_source("ci", [check(0)])
    admin = await api.delete(f"{API}/checks/{digest}", token=ADMIN_TOKEN)
    assert admin.status == 200, admin.text
    assert await api.placement() == {}


async def test_a_config_dir_source_is_readable_by_its_name_but_not_writable(
    make_api: ApiFactory, tmp_path: Path
) -> None:
    """A check's ``sources`` lists names GET /sources/{source} accepts. The dispatcher's own
    sources (file:<name>) hold ':', which source names may; writing them through the API
    is refused (409) and changes nothing, since the file is the source of truth."""
    (tmp_path / "shop.yaml").write_text(
        "name: http\ninstances:\n  - url: http://shop.default.svc:8080/healthz\n"
    )
    api = await make_api(Settings(config_dir=tmp_path))
    [config_dir] = [s for s in api.service.sources if isinstance(s, ConfigDirSource)]
    await config_dir.scan()
    [detail] = (await api.ok("GET", f"{API}/checks"))["checks"]
    [source] = detail["sources"]

    assert source == "file:shop.yaml"
    assert SOURCE_NAME.fullmatch(source), source
    reply = await api.get(f"{API}/sources/{source}")
    assert reply.status == 200, reply.text
    assert [c["digest"] for c in reply.json["configs"]] == [detail["digest"]]

    before = await api.snapshot()
    for method, path, body in (
        ("PUT", f"{API}/sources/{source}", {"configs": []}),
        (
            "POST",
            f"{API}/checks",
            {
                "source": source,
                "configs": [{"name": "tcp", "instances": [{"host": "db", "port": 5432}]}],
            },
        ),
        ("DELETE", f"{API}/checks/{detail['digest']}?source={source}", None),
    ):
        refused = await api.request(method, path, body)
        assert refused.status == 409, (method, path, refused.text)
        assert refused.code() == "conflict"
        assert "config directory" in refused.json["error"]["message"]
    assert await api.snapshot() == before
