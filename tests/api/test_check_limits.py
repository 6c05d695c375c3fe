"""The check limits and big writes through the API and the command line: 413
too_many_checks on a source beyond its limit, a full node skipped (and the sentence that
says so), the flags and their validation, the statuses the document lists, and a big
PUT that heartbeats overtake."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

import dispatcher.cli
from dispatcher import convert, wire
from dispatcher.common import logs
from dispatcher.core.model import SourceName, make_config
from dispatcher.core.state import ClusterState
from dispatcher.errors import ConfigurationError
from dispatcher.settings import DispatchSettings, Settings
from tests.api.conftest import API, Api, ApiFactory, check


def limits(**dispatch: int) -> Settings:
    return Settings(dispatch=DispatchSettings(**dispatch))


# ---------------------------------------------------------------- per source


async def test_a_put_beyond_the_source_limit_is_413_and_changes_nothing(
    make_api: ApiFactory,
) -> None:
    api = await make_api(limits(max_checks_per_source=3))
    await api.put_source("ci", [check(0)])
    before = await api.snapshot()

    reply = await api.put(f"{API}/sources/ci", {"configs": [check(n) for n in range(4)]})

    assert reply.status == 413, reply.text
    error = reply.error()
    assert error["code"] == "too_many_checks"
    assert "at most 3 checks" in error["message"]
    assert "4 distinct checks" in error["message"]
    assert error["details"] == {"source": "ci", "checks": 4, "limit": 3}
    assert await api.snapshot() == before


async def test_a_post_beyond_the_source_limit_is_413_and_changes_nothing(
    make_api: ApiFactory,
) -> None:
    api = await make_api(limits(max_checks_per_source=3))
    await api.put_source("ci", [check(0), check(1)])
    before = await api.snapshot()

    reply = await api.post(f"{API}/checks", {"source": "ci", "configs": [check(2), check(3)]})

    assert reply.status == 413, reply.text
    error = reply.error()
    assert error["code"] == "too_many_checks"
    assert "holds 2 checks and this request adds 2 new ones" in error["message"]
    assert await api.snapshot() == before
    ok = await api.post(f"{API}/checks", {"source": "ci", "configs": [check(1), check(2)]})
    assert ok.status == 200, "one new check: up to the limit"


async def test_the_document_lists_413_on_the_writes(api: Api) -> None:
    document = await api.ok("GET", "/v1/api/openapi.json")
    for path, method in ((f"{API}/sources/{{source}}", "put"), (f"{API}/checks", "post")):
        assert "413" in document["paths"][path][method]["responses"], (path, method)


# ------------------------------------------------------------------ per node


async def test_a_full_node_is_skipped_and_the_dangling_check_says_why(
    make_api: ApiFactory,
) -> None:
    api = await make_api(limits(max_checks_per_node=2))
    await api.heartbeat("node-a", 0, capacity=8)
    digests = await api.put_source("ci", [check(n) for n in range(3)])

    placement = await api.placement()
    assert sorted(v for v in placement.values() if v) == ["node-a", "node-a"]
    [dangling] = [d for d in digests if placement[d] is None]
    detail = await api.check(dangling)
    assert detail["explain"] == (
        "Dangling: every node that may run it holds 2 checks, the most a node may hold "
        "(max_checks_per_node): node-a."
    )


# ------------------------------------------------------------ flags, settings


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in list(os.environ):
        if name.startswith("CLUSTERCHECKS_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(logs, "configure", lambda **_: None)
    return CliRunner()


def serve_settings(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str]
) -> Settings:
    seen: list[Settings] = []

    async def capture(settings: Settings) -> None:
        seen.append(settings)

    monkeypatch.setattr(dispatcher.cli, "_serve", capture)
    result = runner.invoke(dispatcher.cli.main, args, env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    [settings] = seen
    return settings


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        pytest.param([], {}, (100_000, 10_000), id="defaults-from-the-settings"),
        pytest.param(
            ["--max-checks-per-source", "500", "--max-checks-per-node", "7"],
            {},
            (500, 7),
            id="flags",
        ),
        pytest.param(
            [],
            {"CLUSTERCHECKS_MAX_CHECKS_PER_SOURCE": "9", "CLUSTERCHECKS_MAX_CHECKS_PER_NODE": "3"},
            (9, 3),
            id="environment",
        ),
    ],
)
def test_the_limit_flags_reach_the_settings(
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    expected: tuple[int, int],
) -> None:
    settings = serve_settings(runner, monkeypatch, args, env)
    dispatch = settings.dispatch
    assert (dispatch.max_checks_per_source, dispatch.max_checks_per_node) == expected
    assert (DispatchSettings().max_checks_per_source, DispatchSettings().max_checks_per_node) == (
        100_000,
        10_000,
    )


@pytest.mark.parametrize("flag", ["--max-checks-per-source", "--max-checks-per-node"])
@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_limit_below_one_stops_the_command(runner: CliRunner, flag: str, value: str) -> None:
    result = runner.invoke(dispatcher.cli.main, [flag, value])

    assert result.exit_code == 2, result.output
    assert flag in result.output


@pytest.mark.parametrize(
    ("dispatch", "flag"),
    [
        (DispatchSettings(max_checks_per_source=0), "--max-checks-per-source"),
        (DispatchSettings(max_checks_per_node=0), "--max-checks-per-node"),
        (DispatchSettings(apply_slice_checks=0), "apply_slice_checks"),
    ],
)
def test_validate_refuses_a_limit_below_one(dispatch: DispatchSettings, flag: str) -> None:
    with pytest.raises(ConfigurationError, match=flag):
        Settings(dispatch=dispatch).validate()


# ---------------------------------------------------------------- big writes


async def test_a_heartbeat_sent_during_a_big_put_is_answered_before_it(
    make_api: ApiFactory,
) -> None:
    api = await make_api(limits(apply_slice_checks=10))
    await api.heartbeat("node-a", 0)
    order: list[str] = []
    configs = [check(n) for n in range(400)]
    state = api.service.dispatcher.state
    applying = asyncio.Event()
    apply = state.apply_work

    def signalling(work: Any, *, now: float) -> None:
        apply(work, now=now)
        applying.set()

    state.apply_work = signalling  # type: ignore[method-assign]

    async def put() -> None:
        reply = await api.put(f"{API}/sources/ci", {"configs": configs})
        assert reply.status == 200, reply.text
        order.append("put")

    async def heartbeat() -> None:
        await applying.wait()  # the PUT has begun to apply its slices
        await api.heartbeat("node-b", 0)
        order.append("heartbeat")

    await asyncio.gather(put(), heartbeat())

    assert order == ["heartbeat", "put"]
    assert (await api.state())["totals"]["checks"] == 400


@pytest.mark.parametrize("slice_checks", [10, 1000])
async def test_a_bad_config_in_a_later_slice_is_named_by_its_place_in_the_body(
    make_api: ApiFactory, slice_checks: int
) -> None:
    api = await make_api(limits(apply_slice_checks=slice_checks))
    configs: list[dict[str, Any]] = [check(n) for n in range(40)]
    configs[25] = check(25, name="BAD")
    configs[37] = check(37, interval_s=0)

    reply = await api.put(f"{API}/sources/ci", {"configs": configs, "bogus": 1})

    assert reply.status == 400, reply.text
    paths = reply.field_paths()
    assert {"bogus", "configs.25.name", "configs.37.interval_s"} <= set(paths), paths
    assert (await api.state())["totals"]["checks"] == 0


def test_config_fragments_forget_what_the_state_no_longer_holds() -> None:
    """Kept while the state holds the config; past twice the state's size (and a
    margin), the fragments of configs gone or replaced are dropped, the rest kept."""
    state = ClusterState()
    many = [make_config(name="http", instances=[{"url": f"http://s{n}/"}]) for n in range(1_100)]
    state.replace_source(SourceName("ci"), many, now=0.0)
    fragments = convert.ConfigFragments()
    for config in many:
        fragments.head(config, state)
    assert len(fragments) == 1_100
    kept = many[:3]
    state.replace_source(SourceName("ci"), kept, now=0.0)
    assert len(fragments) == 1_100  # nothing asked for since: nothing dropped yet
    reweighted = make_config(name="http", instances=[{"url": "http://s0/"}], weight=2.0)
    state.replace_source(SourceName("ci"), [reweighted, *kept[1:]], now=0.0)
    head = fragments.head(reweighted, state)  # past 2 x 3 + 1,024: pruned first
    assert len(fragments) == 3  # the two kept, and the new object of the reweighted one
    assert head == orjson.dumps({**reweighted.content(), "digest": reweighted.digest})[:-1]
    assert fragments.head(kept[1], state) is fragments.head(kept[1], state)


async def test_the_configs_reply_is_what_the_model_gives(api: Api) -> None:
    await api.heartbeat("node-a", 0)
    await api.put_source("ci", [check(0), check(1, node_selector={}, weight=2.5)])
    await api.put_source("other", [check(0)])
    state = api.service.dispatcher.state
    last_change, configs = state.node_configs(next(iter(state.nodes)))

    fragments = convert.ConfigFragments()
    fast = [
        convert.node_configs_json(
            last_change=last_change,
            epoch=7,
            configs=configs,
            state=state,
            warmup=warmup,
            fragments=fragments,
        )
        for warmup in (True, False, True)  # the second and third from the fragments kept
    ]

    model = wire.NodeConfigsOut(
        last_change=last_change,
        epoch=7,
        configs=[convert.config_out(c, state) for c in configs],
        warmup=True,
    )
    assert fast[0] == fast[2] == orjson.dumps(model.model_dump())
    assert fast[1] == orjson.dumps({**model.model_dump(), "warmup": False})
    assert len(fragments) == len(configs)
