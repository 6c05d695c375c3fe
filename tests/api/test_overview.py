"""The dashboard over HTTP: ``GET .../overview`` (its reply, filters, bad queries, roles, a
follower forwarding), the page's files under ``/ui/`` (media types, security headers, no
token, the redirects to it, a 404 that is the API's error body, every file the page loads
served) and ``--ui-refresh``.

Every app is built on the fake clock (``conftest``); nothing here waits.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit

import pytest
from click.testing import CliRunner
from pytest_aiohttp import AiohttpClient

import dispatcher.cli
from dispatcher import wire
from dispatcher.api.keys import REPLICAS
from dispatcher.common.clock import FakeClock
from dispatcher.core.overview import PAGE_DEFAULT, PAGE_MAX, QUERY_MAX_CHARS, RECENT_RUNS
from dispatcher.election.base import LeaderInfo
from dispatcher.errors import ConfigurationError, StoreError
from dispatcher.settings import (
    UI_REFRESH_MAX_S,
    UI_REFRESH_MIN_S,
    AuthSettings,
    ServerSettings,
    Settings,
)
from dispatcher.ui import CONTENT_SECURITY_POLICY, INDEX, MEDIA_TYPES, asset
from tests.api import test_settings_and_cli
from tests.api.conftest import (
    ADMIN_TOKEN,
    API,
    AUTH,
    IDENTITY,
    NODE_TOKEN,
    SOURCE_TOKEN,
    Api,
    ApiFactory,
    Reply,
    check,
    follower_client,
    result,
)

OVERVIEW = f"{API}/overview"

runner = test_settings_and_cli.runner
"""The CLI runner that never serves (a fixture of the CLI tests, shared, not copied)."""


# ------------------------------------------------------------------ the overview


async def report(api: Api, node: str, digest: str, runs: list[tuple[float, bool]]) -> None:
    """Posts runs given as (seconds before now, ok) from ``node``, in one request."""
    now = api.service.clock.time()
    results = [
        result(digest, ok=ok, run_id=f"run-{i}", started_at=now - ago, duration_s=0.1 + i / 100)
        for i, (ago, ok) in enumerate(runs)
    ]
    body = await api.ok("POST", f"{API}/results/{node}", {"results": results})
    assert body["accepted"] == len(runs), body


class Cluster:
    """Three nodes (node-c cordoned, holding nothing: drained) and one check of each
    status: ``ok`` on node-a (40 runs, one in four failed), ``failing`` on node-a,
    ``pending`` on node-b, ``dangling`` (no node has its zone). Source ``ci`` holds all
    four, ``web`` holds ``ok`` too."""

    RUNS: ClassVar[list[tuple[float, bool]]] = [(400.0 - 10 * i, i % 4 != 0) for i in range(40)]

    def __init__(self, digests: dict[str, str]) -> None:
        self.digests = digests

    @classmethod
    async def build(cls, api: Api) -> Cluster:
        for node in ("node-a", "node-b", "node-c"):
            await api.heartbeat(node, 0, labels={"zone": node[-1]})
        await api.ok("POST", f"{API}/nodes/node-c/cordon")
        configs = {
            "ok": check(0, node_selector={"zone": "a"}),
            "failing": check(1, node_selector={"zone": "a"}),
            "pending": check(2, node_selector={"zone": "b"}),
            "dangling": check(3, node_selector={"zone": "nowhere"}),
        }
        digests = dict(
            zip(configs, await api.put_source("ci", list(configs.values())), strict=True)
        )
        assert await api.put_source("web", [configs["ok"]]) == [digests["ok"]]
        await report(api, "node-a", digests["ok"], cls.RUNS)
        await report(api, "node-a", digests["failing"], [(60, True), (30, False), (20, False)])
        return cls(digests)


async def overview(api: Api, query: str = "", **kwargs: Any) -> dict[str, Any]:
    """The overview, after checking it against its model (which forbids extra fields)."""
    reply = await api.get(OVERVIEW + query, **kwargs)
    assert reply.status == 200, reply.text
    body: dict[str, Any] = reply.json
    wire.OverviewOut.model_validate(body)
    return body


async def test_the_overview_of_a_cluster(api: Api, clock: FakeClock) -> None:
    cluster = await Cluster.build(api)

    body = await overview(api)

    assert body["generated_at"] == clock.time()
    assert (body["leader"], body["is_leader"], body["warmup"]) == (IDENTITY, True, False)
    assert body["epoch"] == api.service.dispatcher.epoch
    assert (body["auth"], body["refresh_s"]) == (False, ServerSettings().ui_refresh_s)
    assert body["health"]["status"] == "healthy"
    assert body["totals"] == {
        "nodes": 3, "cordoned_nodes": 1, "checks": 4, "dispatched": 3, "dangling": 1,
        "failing": 1, "pending": 1, "ok": 1,
    }  # fmt: skip
    nodes = {n["name"]: n for n in body["nodes"]}
    assert list(nodes) == ["node-a", "node-b", "node-c"]
    assert {name: (n["checks"], n["failing"], n["cordoned"], n["drained"])
            for name, n in nodes.items()} == {
        "node-a": (2, 1, False, False),
        "node-b": (1, 0, False, False),
        "node-c": (0, 0, True, True),
    }  # fmt: skip
    assert nodes["node-a"]["labels"] == {"zone": "a"}
    assert nodes["node-a"]["heartbeat_age_s"] == 0.0  # the fake clock has not moved
    assert body["sources"] == [{"name": "ci", "checks": 4}, {"name": "web", "checks": 1}]

    page = body["page"]
    assert (page["matching"], page["offset"], page["limit"]) == (4, 0, PAGE_DEFAULT)
    assert [c["digest"] for c in page["checks"]] == [
        cluster.digests[status] for status in ("failing", "dangling", "pending", "ok")
    ]
    assert [c["status"] for c in page["checks"]] == ["failing", "dangling", "pending", "ok"]
    failing, dangling, pending, ok = page["checks"]
    assert failing["target"] == "http://svc-1.default.svc/healthz"
    assert (failing["node"], failing["sources"]) == ("node-a", ["ci"])
    assert failing["consecutive_failures"] == 2
    assert failing["last_error"] == "GET http://shop/healthz: 503"
    assert failing["last_run_at"] == clock.time() - 20
    assert failing["uptime_24h"] == pytest.approx(1 / 3)
    assert (dangling["node"], dangling["last_run_at"], dangling["recent"]) == (None, None, [])
    assert (pending["node"], pending["uptime_24h"], pending["last_error"]) == ("node-b", None, None)
    assert ok["sources"] == ["ci", "web"]
    assert ok["uptime_24h"] == pytest.approx(0.75)
    assert (ok["last_run_at"], ok["duration_s"]) == (clock.time() - 10, pytest.approx(0.49))


async def test_a_cordoned_node_still_holding_checks_is_not_drained(api: Api) -> None:
    await Cluster.build(api)
    await api.ok("POST", f"{API}/nodes/node-a/cordon")

    body = await overview(api)

    node_a = next(n for n in body["nodes"] if n["name"] == "node-a")
    assert (node_a["cordoned"], node_a["drained"], node_a["checks"]) == (True, False, 2)
    assert body["totals"]["cordoned_nodes"] == 2


async def test_recent_runs_are_the_last_ones_oldest_first(api: Api, clock: FakeClock) -> None:
    cluster = await Cluster.build(api)

    body = await overview(api, "?status=ok")

    [ok] = body["page"]["checks"]
    assert ok["digest"] == cluster.digests["ok"]
    assert len(Cluster.RUNS) > RECENT_RUNS
    expected = [
        {"started_at": clock.time() - ago, "ok": good} for ago, good in Cluster.RUNS[-RECENT_RUNS:]
    ]
    assert [{"started_at": r["started_at"], "ok": r["ok"]} for r in ok["recent"]] == expected
    assert [r["duration_s"] for r in ok["recent"]] == pytest.approx(
        [0.1 + i / 100 for i in range(len(Cluster.RUNS) - RECENT_RUNS, len(Cluster.RUNS))]
    )


async def test_an_empty_dispatcher_has_an_empty_overview(api: Api) -> None:
    body = await overview(api)
    assert body["totals"] == dict.fromkeys(wire.OverviewTotalsOut.model_fields, 0)
    assert (body["nodes"], body["sources"]) == ([], [])
    assert body["page"] == {"matching": 0, "offset": 0, "limit": PAGE_DEFAULT, "checks": []}


@pytest.mark.parametrize(
    ("query", "expected", "matching"),
    [
        ("?status=failing", ["failing"], 1),
        ("?status=dangling", ["dangling"], 1),
        ("?status=pending", ["pending"], 1),
        ("?status=ok", ["ok"], 1),
        ("?node=node-a", ["failing", "ok"], 2),
        ("?node=node-c", [], 0),
        ("?source=web", ["ok"], 1),
        ("?source=nobody", [], 0),
        ("?q=SVC-2", ["pending"], 1),  # target, case-insensitive
        ("?q=node-b", ["pending"], 1),  # node
        ("?q=web", ["ok"], 1),  # a source
        ("?q=", ["failing", "dangling", "pending", "ok"], 4),  # an empty search: no filter
        ("?q=svc&node=node-a&status=ok&source=ci", ["ok"], 1),
        ("?limit=2", ["failing", "dangling"], 4),
        ("?offset=1&limit=2", ["dangling", "pending"], 4),
        ("?offset=3", ["ok"], 4),
        ("?offset=4", [], 4),
        (f"?limit={PAGE_MAX}", ["failing", "dangling", "pending", "ok"], 4),
    ],
)
async def test_filters_and_slices(api: Api, query: str, expected: list[str], matching: int) -> None:
    cluster = await Cluster.build(api)
    names = {digest: name for name, digest in cluster.digests.items()}

    body = await overview(api, query)

    assert [names[c["digest"]] for c in body["page"]["checks"]] == expected
    assert body["page"]["matching"] == matching
    # The totals and nodes are the cluster's, whatever the filter.
    assert (body["totals"]["checks"], body["totals"]["failing"]) == (4, 1)
    assert [n["failing"] for n in body["nodes"]] == [1, 0, 0]


async def test_a_digest_prefix_finds_its_check(api: Api) -> None:
    cluster = await Cluster.build(api)
    digest = cluster.digests["pending"]
    body = await overview(api, f"?q={digest[:12].upper()}")
    assert [c["digest"] for c in body["page"]["checks"]] == [digest]


async def test_refresh_s_is_the_setting(make_api: ApiFactory) -> None:
    api = await make_api(Settings(server=ServerSettings(ui_refresh_s=7.5)))
    assert (await overview(api))["refresh_s"] == 7.5


async def test_the_replicas_are_the_directory_as_last_reported(api: Api) -> None:
    # No reporter runs in-process: nothing is reported until /replicas refreshes this
    # replica's record (the overview only reads, every refresh of every dashboard).
    assert (await overview(api))["replicas"] == []
    listed = (await api.ok("GET", f"{API}/replicas"))["replicas"]
    assert [r["identity"] for r in listed] == [IDENTITY]

    body = await overview(api)

    assert (body["replicas"], body["replicas_error"]) == (listed, None)


async def test_an_unreadable_replica_directory_is_said_not_a_failure(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreadable() -> list[Any]:
        raise StoreError("connection refused")

    monkeypatch.setattr(api.service.app[REPLICAS].directory, "list", unreadable)

    body = await overview(api)

    assert body["replicas"] is None
    assert "connection refused" in body["replicas_error"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?status=bogus", "status"),
        ("?status=", "status"),
        ("?status=FAILING", "status"),
        ("?limit=0", "limit"),
        (f"?limit={PAGE_MAX + 1}", "limit"),
        ("?limit=ten", "limit"),
        ("?offset=-1", "offset"),
        ("?offset=1.5", "offset"),
        ("?node=a:b", "node"),
        ("?node=a%20b", "node"),
        ("?node=" + "n" * 254, "node"),
        ("?node=", "node"),
        ("?source=bad%20name", "source"),
        ("?source=", "source"),
        ("?q=" + "x" * (QUERY_MAX_CHARS + 1), "q"),
    ],
    ids=lambda v: v[:30],
)
async def test_a_bad_query_value_is_400_naming_the_field(api: Api, query: str, field: str) -> None:
    await Cluster.build(api)
    reply = await api.get(OVERVIEW + query)
    assert reply.status == 400, reply.text
    assert reply.field_paths() == [f"query.{field}"]


async def test_the_longest_query_is_accepted(api: Api) -> None:
    body = await overview(api, "?q=" + "x" * QUERY_MAX_CHARS)
    assert body["page"]["matching"] == 0


@pytest.mark.parametrize(
    ("token", "status"),
    [(None, 401), ("not-a-token", 401), (NODE_TOKEN, 403), (SOURCE_TOKEN, 403), (ADMIN_TOKEN, 200)],
    ids=["none", "wrong", "node", "source", "admin"],
)
async def test_with_auth_only_the_admin_token_reads_the_overview(
    make_api: ApiFactory, token: str | None, status: int
) -> None:
    api = await make_api(Settings(auth=AUTH), token=ADMIN_TOKEN)

    reply = await api.get(OVERVIEW, token=token)

    assert reply.status == status, reply.text
    if status == 200:
        wire.OverviewOut.model_validate(reply.json)
        assert reply.json["auth"] is True
    else:
        assert reply.code() == {401: "unauthorized", 403: "forbidden"}[status]


async def test_a_follower_forwards_the_overview_to_the_leader(
    api: Api, aiohttp_client: AiohttpClient
) -> None:
    await Cluster.build(api)
    leader_url = str(api.client.make_url("")).rstrip("/")
    follower = await follower_client(aiohttp_client, LeaderInfo(IDENTITY, leader_url, 1))

    forwarded = await follower.get(OVERVIEW + "?limit=2", token=ADMIN_TOKEN)

    assert forwarded.status == 200, forwarded.text
    assert forwarded.headers["X-Clusterchecks-Leader"] == IDENTITY
    assert forwarded.json == await overview(api, "?limit=2")


async def test_a_follower_without_a_leader_answers_503(aiohttp_client: AiohttpClient) -> None:
    follower = await follower_client(aiohttp_client)
    reply = await follower.get(OVERVIEW, token=ADMIN_TOKEN)
    assert (reply.status, reply.code()) == (503, "no_leader")


# ------------------------------------------------------------- the page's files


async def get_raw(api: Api, path: str, **headers: str) -> Reply:
    """A GET that does not follow redirects."""
    async with api.client.get(path, headers=headers, allow_redirects=False) as response:
        return Reply(response.status, response.headers, await response.text())


@pytest.mark.parametrize("path", ["/", "/ui"])
async def test_the_root_and_bare_ui_redirect_to_the_page(auth_api: Api, path: str) -> None:
    reply = await get_raw(auth_api, path)
    assert reply.status == 302, reply.text
    assert reply.headers["Location"] == "/ui/"


def file_paths() -> list[tuple[str, str]]:
    """Each file's path under /ui/ and its name."""
    return [(f"/ui/{name if name != INDEX else ''}", name) for name in MEDIA_TYPES]


@pytest.mark.parametrize(("path", "name"), file_paths())
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-token", f"Bearer {NODE_TOKEN}"],
    ids=["none", "wrong", "node"],
)
async def test_each_file_is_served_with_its_type_and_headers_and_no_token(
    auth_api: Api, path: str, name: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}

    reply = await get_raw(auth_api, path, **headers)

    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].partition(";")[0] == MEDIA_TYPES[name]
    assert reply.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["Cache-Control"] == "no-cache"
    assert reply.text.encode() == asset(name).body


async def test_the_page_is_html_that_loads_its_script_and_style(api: Api) -> None:
    reply = await get_raw(api, "/ui/")
    assert reply.headers["Content-Type"].partition(";")[0] == "text/html"
    assert reply.text.lstrip().lower().startswith("<!doctype html>")
    loads = PageLinks.of(reply.text)
    assert {"app.js", "app.css"} <= {urlsplit(link).path for link in loads.loaded}


async def test_a_follower_serves_the_page(aiohttp_client: AiohttpClient) -> None:
    follower = await follower_client(aiohttp_client)
    reply = await follower.get("/ui/", token=None)
    assert reply.status == 200, reply.text
    assert reply.text.encode() == asset(INDEX).body


@pytest.mark.parametrize(
    "path", ["/ui/nope", "/ui/app.js.map", "/ui/../setup.py", "/ui/static/app.js"]
)
async def test_a_missing_file_is_404_with_the_error_body(auth_api: Api, path: str) -> None:
    reply = await get_raw(auth_api, path)
    assert reply.status == 404, reply.text
    assert reply.code() == "not_found"
    assert "Traceback" not in reply.text


class PageLinks(HTMLParser):
    """Every URL a page names in a ``src`` or ``href``: those it loads (scripts, styles,
    images, icons) and those it links to."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.linked: list[str] = []

    @classmethod
    def of(cls, html: str) -> PageLinks:
        parser = cls()
        parser.feed(html)
        parser.close()
        return parser

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("src", "href") and value:
                (self.linked if tag == "a" else self.loaded).append(value)


async def test_every_file_the_page_names_is_served(auth_api: Api) -> None:
    page = await get_raw(auth_api, "/ui/")
    links = PageLinks.of(page.text)
    assert links.loaded, "the page loads its script, style and icon"
    # Fragments are the page's own views; every other URL is of this dispatcher.
    urls = sorted(
        {urljoin("/ui/", u) for u in links.loaded + links.linked if not u.startswith("#")}
    )
    assert all(urlsplit(u).netloc == "" for u in urls), urls  # no CDN, no other host

    statuses = {url: (await get_raw(auth_api, url)).status for url in urls}

    assert statuses == dict.fromkeys(urls, 200)
    assert set(MEDIA_TYPES) - {INDEX} <= {urlsplit(u).path.removeprefix("/ui/") for u in urls}


# ------------------------------------------------------------------ --ui-refresh


@pytest.mark.parametrize("value", [0.1, 0.0, -1.0, UI_REFRESH_MAX_S + 1, 301.0])
def test_settings_refuse_a_refresh_out_of_range(value: float) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(server=ServerSettings(ui_refresh_s=value)).validate()
    message = str(caught.value)
    assert "--ui-refresh" in message
    assert f"{UI_REFRESH_MIN_S:g}" in message
    assert f"{UI_REFRESH_MAX_S:g}" in message


@pytest.mark.parametrize("value", [UI_REFRESH_MIN_S, 3.0, UI_REFRESH_MAX_S])
def test_settings_accept_a_refresh_in_range(value: float) -> None:
    settings = Settings(server=ServerSettings(ui_refresh_s=value), auth=AuthSettings())
    assert settings.validate() is settings


@pytest.mark.parametrize("value", ["0.1", "301", "0", "-1", "soon"])
def test_the_flag_refuses_a_refresh_out_of_range(runner: CliRunner, value: str) -> None:
    result = runner.invoke(dispatcher.cli.main, ["--ui-refresh", value])

    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "--ui-refresh" in result.output
    if value != "soon":
        assert f"{UI_REFRESH_MIN_S:g}" in result.output
        assert f"{UI_REFRESH_MAX_S:g}" in result.output


def test_the_flag_reaches_the_settings(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = test_settings_and_cli.served_settings(runner, monkeypatch, "--ui-refresh", "0.5")
    assert settings.server.ui_refresh_s == 0.5
