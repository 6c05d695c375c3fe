"""The config directory source, in process: ``scan()`` is called directly, never polled.

Each ``*.yaml``/``*.yml`` file is the source ``file:<filename>``. A broken file is
reported (log and the ``config_sources`` health component) and keeps the checks it held; a
deleted file drops its checks; a check stays while at least one file holds it.
"""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from dispatcher.common.clock import SystemClock
from dispatcher.common.health import Component, HealthRegistry, Status
from dispatcher.core.model import (
    CheckConfig,
    CheckResult,
    Digest,
    NodeName,
    SourceName,
    make_config,
)
from dispatcher.engine import Dispatcher
from dispatcher.errors import ConfigSourceError
from dispatcher.settings import DispatchSettings
from dispatcher.sources import configdir
from dispatcher.sources.configdir import (
    COMPONENT,
    MAX_FILE_BYTES,
    ConfigDirSource,
    parse_configs,
)

GUARD_S = 10.0
"""Only keeps a broken test from hanging on a worker thread; never a measure."""

# ------------------------------------------------------------------ helpers


def url(host: str) -> str:
    return f"http://{host}.example/healthz"


A, B, C, D, E = (url(h) for h in ("a", "b", "c", "d", "e"))


def digest(check_url: str, **fields: Any) -> Digest:
    """The digest the dispatcher must give an http check of that URL (computed apart)."""
    return make_config(name="http", instances=[{"url": check_url}], **fields).digest


def mapping(check_url: str, extra: str = "") -> str:
    """One config as a YAML mapping (block style)."""
    return f"name: http\ninstances:\n  - url: {check_url}\n{extra}"


def listing(*urls: str) -> str:
    """A YAML list of http configs (flow-style instances)."""
    return "".join(f"- name: http\n  instances: [{{url: '{u}'}}]\n" for u in urls)


def under_configs(*urls: str) -> str:
    return "configs:\n" + textwrap.indent(listing(*urls), "  ")


@dataclass
class ConfDir:
    path: Path
    dispatcher: Dispatcher
    health: HealthRegistry
    source: ConfigDirSource

    def write(self, name: str, content: str | bytes) -> Path:
        target = self.path / name
        before = target.stat().st_mtime_ns if target.exists() else None
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
        # On a file system with coarse timestamps two quick writes may share an mtime;
        # a human edit never does, so make sure this one shows (the size may not change).
        st = target.stat()
        if before is not None and st.st_mtime_ns <= before:
            os.utime(target, ns=(st.st_atime_ns, before + 1_000_000))
        return target

    async def scan(self) -> None:
        await self.source.scan()

    def digests(self) -> set[Digest]:
        return set(self.dispatcher.state.configs)

    def held_by(self, filename: str) -> set[Digest]:
        configs = self.dispatcher.state.source_configs(SourceName(f"file:{filename}"))
        return {c.digest for c in configs}

    def sources_of(self, check: Digest) -> list[str]:
        return list(self.dispatcher.state.sources_of(check))

    def component(self) -> Component:
        return self.health.components()[COMPONENT]

    async def register(self, *names: str) -> None:
        for name in names:
            await self.dispatcher.node_status(NodeName(name), last_change=0)


@pytest.fixture
def conf(tmp_path: Path) -> ConfDir:
    directory = tmp_path / "conf.d"
    directory.mkdir()
    dispatcher = Dispatcher(settings=DispatchSettings(), clock=SystemClock())
    health = HealthRegistry()
    source = ConfigDirSource(
        directory=directory, dispatcher=dispatcher, health=health, clock=SystemClock()
    )
    return ConfDir(directory, dispatcher, health, source)


def assert_healthy(conf: ConfDir, *, files: int) -> None:
    component = conf.component()
    assert component.status is Status.HEALTHY, component
    assert component.metadata["broken_files"] == [], component
    assert component.metadata["files"] == files, component


def decisions(logs: Sequence[Mapping[str, Any]], reason: str) -> list[Any]:
    return [
        e["digest"] for e in logs if e["event"] == "dispatch_decision" and e["reason"] == reason
    ]


# ---------------------------------------------------------- file formats


FORMATS = {
    "mapping": (mapping(A), {A}),
    "list": (listing(A, B), {A, B}),
    "configs_mapping": (under_configs(A, B), {A, B}),
    "documents": (mapping(A) + "---\n" + mapping(B), {A, B}),
    "documents_mixed": (
        "---\n" + listing(A) + "---\n" + under_configs(B) + "---\n" + mapping(C) + "...\n",
        {A, B, C},
    ),
}


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
async def test_each_file_format_loads_as_source_file_name(
    conf: ConfDir, fmt: str, suffix: str
) -> None:
    text, urls = FORMATS[fmt]
    name = f"checks{suffix}"
    conf.write(name, text)
    assert conf.component().status is Status.UNSPECIFIED  # nothing scanned yet

    await conf.scan()

    expected = {digest(u) for u in urls}
    assert conf.digests() == expected
    assert conf.held_by(name) == expected
    for check in expected:
        assert conf.sources_of(check) == [f"file:{name}"]
    assert_healthy(conf, files=1)
    assert "1 file(s)" in conf.component().message


async def test_each_file_is_its_own_source(conf: ConfDir) -> None:
    conf.write("a.yaml", listing(A, B))
    conf.write("b.yml", mapping(C))
    await conf.scan()
    assert conf.held_by("a.yaml") == {digest(A), digest(B)}
    assert conf.held_by("b.yml") == {digest(C)}
    assert conf.dispatcher.state.source_names() == ["file:a.yaml", "file:b.yml"]
    assert_healthy(conf, files=2)


async def test_configs_from_a_file_are_placed_on_nodes(conf: ConfDir) -> None:
    await conf.register("n1", "n2")
    conf.write("checks.yaml", listing(A, B, C, D))
    await conf.scan()
    placement = conf.dispatcher.state.placement
    assert set(placement) == {digest(u) for u in (A, B, C, D)}
    assert sorted(placement.values()) == ["n1", "n1", "n2", "n2"]


# ------------------------------------------------------------ broken files

BROKEN = [
    pytest.param(
        listing(C) + "- name: http\n  instances: [{url: x}]\n  bogus_field: 1\n",
        ["config 2", "bogus_field", "unknown field"],
        id="unknown_field",
    ),
    pytest.param(mapping(C, "interval_s: 0\n"), ["interval_s"], id="bad_interval"),
    pytest.param(
        mapping(C, "interval_s: 10\ntimeout_s: 20\n"), ["timeout_s"], id="timeout_above_interval"
    ),
    pytest.param("name: http\ninstances: [{url: x}\n", ["not valid YAML", "line"], id="not_yaml"),
    pytest.param(
        "name: http\ninstances:\n  - url: x\n    since: 2024-01-01\n",
        ["instances", "date"],
        id="date_value",
    ),
    pytest.param(
        "name: http\ninstances:\n  - port: 123456789012345678901234567890\n",
        ["instances", "64 bits"],
        id="huge_integer",
    ),
]


@pytest.mark.parametrize(("broken", "words"), BROKEN)
async def test_broken_file_is_reported_keeps_its_checks_and_recovers_when_fixed(
    conf: ConfDir, broken: str, words: list[str]
) -> None:
    conf.write("checks.yaml", listing(A, B))
    await conf.scan()
    before = {digest(A), digest(B)}
    assert conf.held_by("checks.yaml") == before

    with capture_logs() as logs:
        conf.write("checks.yaml", broken)
        await conf.scan()

    assert conf.digests() == before, "a broken file must leave its checks untouched"
    assert conf.held_by("checks.yaml") == before
    component = conf.component()
    assert component.status is Status.DEGRADED, component
    assert component.metadata["broken_files"] == ["checks.yaml"], component
    for word in ["checks.yaml", *words]:
        assert word in component.message, component.message
    invalid = [e for e in logs if e["event"] == "config_file_invalid"]
    assert len(invalid) == 1, logs
    assert invalid[0]["log_level"] == "error"
    assert invalid[0]["file"] == "checks.yaml"
    for word in words:
        assert word in invalid[0]["error"], invalid[0]

    await conf.scan()  # nothing changed: still reported, still held
    assert conf.component().status is Status.DEGRADED
    assert conf.digests() == before

    conf.write("checks.yaml", listing(B, E))
    await conf.scan()
    assert conf.held_by("checks.yaml") == {digest(B), digest(E)}
    assert conf.digests() == {digest(B), digest(E)}
    assert_healthy(conf, files=1)


async def test_broken_new_file_holds_nothing_and_other_files_still_load(conf: ConfDir) -> None:
    conf.write("good.yaml", mapping(A))
    conf.write("bad.yaml", mapping(B, "colour: blue\n"))
    await conf.scan()
    assert conf.digests() == {digest(A)}
    component = conf.component()
    assert component.status is Status.DEGRADED
    assert component.metadata["broken_files"] == ["bad.yaml"]
    assert component.metadata["files"] == 2
    assert "bad.yaml" in component.message
    assert "colour" in component.message
    assert "good.yaml" not in component.message


async def test_a_file_over_the_per_source_limit_is_reported_and_the_others_load(
    tmp_path: Path,
) -> None:
    """One file holding more checks than a source may is broken (it keeps what it held),
    not a failed step that drops the other files' changes with it."""
    directory = tmp_path / "conf.d"
    directory.mkdir()
    dispatcher = Dispatcher(settings=DispatchSettings(max_checks_per_source=2), clock=SystemClock())
    health = HealthRegistry()
    source = ConfigDirSource(
        directory=directory, dispatcher=dispatcher, health=health, clock=SystemClock()
    )
    conf = ConfDir(directory, dispatcher, health, source)
    conf.write("big.yaml", listing(A, B))
    await conf.scan()
    assert conf.held_by("big.yaml") == {digest(A), digest(B)}
    conf.write("big.yaml", listing(A, B, C))
    conf.write("small.yaml", mapping(C))
    await conf.scan()
    assert conf.held_by("big.yaml") == {digest(A), digest(B)}, "kept its last good checks"
    assert conf.held_by("small.yaml") == {digest(C)}
    component = conf.component()
    assert component.status is Status.DEGRADED
    assert component.metadata["broken_files"] == ["big.yaml"]
    assert "may hold at most 2 checks" in component.message
    assert "this set has 3 distinct checks" in component.message


async def test_one_broken_document_rejects_the_whole_file(conf: ConfDir) -> None:
    conf.write("checks.yaml", mapping(A))
    await conf.scan()
    conf.write("checks.yaml", mapping(B) + "---\n" + mapping(C, "bogus: 1\n"))
    await conf.scan()
    assert conf.digests() == {digest(A)}, "the valid first document must not be half-applied"
    assert "document 2" in conf.component().message
    assert "bogus" in conf.component().message


async def test_non_utf8_file_is_reported(conf: ConfDir) -> None:
    conf.write("checks.yaml", mapping(A))
    await conf.scan()
    conf.write("checks.yaml", b"name: http\ninstances: [{url: '\xff\xfe'}]\n")
    await conf.scan()
    assert conf.digests() == {digest(A)}
    component = conf.component()
    assert component.status is Status.DEGRADED
    assert "checks.yaml" in component.message
    assert "UTF-8" in component.message


async def test_file_above_the_size_limit_is_reported(conf: ConfDir) -> None:
    # Valid YAML (one config and a long comment), refused only for its size.
    conf.write("huge.yaml", mapping(A) + "#" * MAX_FILE_BYTES + "\n")
    await conf.scan()
    assert conf.digests() == set()
    component = conf.component()
    assert component.status is Status.DEGRADED
    assert "huge.yaml" in component.message
    assert "larger than" in component.message


# ------------------------------------------------------ deletes and shares


async def test_deleting_a_file_removes_its_checks(conf: ConfDir) -> None:
    conf.write("a.yaml", listing(A, B))
    conf.write("b.yaml", mapping(C))
    await conf.scan()
    assert len(conf.digests()) == 3

    with capture_logs() as logs:
        (conf.path / "a.yaml").unlink()
        await conf.scan()

    assert conf.digests() == {digest(C)}
    assert conf.held_by("a.yaml") == set()
    assert conf.dispatcher.state.source_names() == ["file:b.yaml"]
    assert sorted(decisions(logs, "check_removed")) == sorted([digest(A), digest(B)])
    assert any(e["event"] == "config_file_removed" and e["file"] == "a.yaml" for e in logs)
    assert_healthy(conf, files=1)


async def test_deleting_a_broken_file_drops_its_old_checks_and_the_report(
    conf: ConfDir,
) -> None:
    conf.write("a.yaml", mapping(A))
    conf.write("b.yaml", mapping(C))
    await conf.scan()
    conf.write("a.yaml", "{{{")
    await conf.scan()
    assert conf.component().status is Status.DEGRADED
    assert digest(A) in conf.digests()

    (conf.path / "a.yaml").unlink()
    await conf.scan()
    assert conf.digests() == {digest(C)}
    assert_healthy(conf, files=1)


async def test_check_held_by_two_files_stays_until_both_drop_it(conf: ConfDir) -> None:
    await conf.register("n1")
    conf.write("a.yaml", listing(A, B))
    conf.write("b.yaml", listing(A, C))
    await conf.scan()
    shared = digest(A)
    assert conf.sources_of(shared) == ["file:a.yaml", "file:b.yaml"]
    assert conf.dispatcher.state.placement[shared] == "n1"

    with capture_logs() as logs:
        (conf.path / "a.yaml").unlink()
        await conf.scan()
    assert conf.digests() == {shared, digest(C)}
    assert conf.sources_of(shared) == ["file:b.yaml"]
    assert conf.dispatcher.state.placement[shared] == "n1"
    assert decisions(logs, "check_removed") == [digest(B)]

    conf.write("b.yaml", mapping(C))
    await conf.scan()
    assert conf.digests() == {digest(C)}


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# nothing here yet\n", "---\n", "---\n...\n", "~\n", "[]\n", "configs: []\n"],
    ids=["empty", "blank", "comment", "doc_start", "doc_end", "null", "empty_list", "no_configs"],
)
async def test_empty_file_holds_no_checks(conf: ConfDir, text: str) -> None:
    conf.write("a.yaml", mapping(A))
    conf.write("empty.yaml", text)
    await conf.scan()
    assert conf.digests() == {digest(A)}
    assert conf.held_by("empty.yaml") == set()
    assert_healthy(conf, files=2)


async def test_emptying_a_file_removes_its_checks(conf: ConfDir) -> None:
    conf.write("a.yaml", listing(A, B))
    await conf.scan()
    conf.write("a.yaml", "")
    await conf.scan()
    assert conf.digests() == set()
    assert_healthy(conf, files=1)


async def test_hidden_files_other_suffixes_and_subdirectories_are_ignored(
    conf: ConfDir,
) -> None:
    conf.write("real.yaml", mapping(A))
    for ignored in (".hidden.yaml", ".swap.yml", "a.json", "a.yaml.bak", "a.yaml~", "README"):
        conf.write(ignored, mapping(B))
    conf.write(".broken.yaml", "{{{ not yaml")
    (conf.path / "sub.yaml").mkdir()
    (conf.path / "sub.yaml" / "inner.yaml").write_text(mapping(C), encoding="utf-8")
    (conf.path / "..data").mkdir()
    (conf.path / "..data" / "d.yaml").write_text(mapping(D), encoding="utf-8")

    await conf.scan()

    assert conf.digests() == {digest(A)}
    assert conf.dispatcher.state.source_names() == ["file:real.yaml"]
    assert_healthy(conf, files=1)


# --------------------------------------------------------- change detection


async def test_unchanged_files_are_not_applied_again(conf: ConfDir) -> None:
    conf.write("a.yaml", listing(A, B))
    await conf.scan()
    with capture_logs() as logs:
        await conf.scan()
        await conf.scan()
    assert [e["event"] for e in logs] == [], logs
    assert conf.digests() == {digest(A), digest(B)}


async def test_replaced_file_of_same_size_and_mtime_is_reloaded(conf: ConfDir) -> None:
    """An atomic replace (write elsewhere, rename over) changes only the inode."""
    old = conf.write("checks.yaml", mapping(A))
    await conf.scan()
    fresh = conf.path / ".checks.yaml.tmp"
    fresh.write_text(mapping(B), encoding="utf-8")
    st = old.stat()
    assert fresh.stat().st_size == st.st_size
    os.utime(fresh, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(fresh, old)

    await conf.scan()
    assert conf.digests() == {digest(B)}


async def test_configmap_style_symlink_swap_is_followed(conf: ConfDir) -> None:
    """Kubernetes mounts a ConfigMap as name -> ..data/name, ..data -> ..<timestamp>."""
    first = conf.path / "..2024_01_01"
    first.mkdir()
    (first / "checks.yaml").write_text(listing(A, B), encoding="utf-8")
    (conf.path / "..data").symlink_to(first.name)
    (conf.path / "checks.yaml").symlink_to("..data/checks.yaml")
    await conf.scan()
    assert conf.held_by("checks.yaml") == {digest(A), digest(B)}

    second = conf.path / "..2024_01_02"
    second.mkdir()
    (second / "checks.yaml").write_text(listing(A, C), encoding="utf-8")
    (conf.path / "..data_tmp").symlink_to(second.name)
    os.replace(conf.path / "..data_tmp", conf.path / "..data")
    for leftover in first.iterdir():
        leftover.unlink()
    first.rmdir()

    await conf.scan()
    assert conf.held_by("checks.yaml") == {digest(A), digest(C)}
    assert conf.digests() == {digest(A), digest(C)}
    assert_healthy(conf, files=1)


async def test_weight_change_updates_the_check_in_place(conf: ConfDir) -> None:
    await conf.register("n1", "n2")
    conf.write("a.yaml", mapping(A, "weight: 1\n"))
    await conf.scan()
    node = conf.dispatcher.state.placement[digest(A)]
    with capture_logs() as logs:
        conf.write("a.yaml", mapping(A, "weight: 3.5\n"))
        await conf.scan()
    assert conf.digests() == {digest(A)}, "weight is not part of a check's identity"
    assert conf.dispatcher.state.configs[digest(A)].weight == 3.5
    assert conf.dispatcher.state.placement[digest(A)] == node
    assert decisions(logs, "check_removed") == []


async def test_vanished_directory_is_reported_and_keeps_the_checks(conf: ConfDir) -> None:
    conf.write("a.yaml", mapping(A))
    await conf.scan()
    away = conf.path.with_name("conf.d.away")
    conf.path.rename(away)
    await conf.scan()
    component = conf.component()
    assert component.status is Status.DEGRADED
    assert "cannot list" in component.message
    assert str(conf.path) in component.message
    assert conf.digests() == {digest(A)}

    away.rename(conf.path)
    await conf.scan()
    assert conf.digests() == {digest(A)}
    assert_healthy(conf, files=1)


async def test_renaming_a_file_keeps_its_checks_where_they_are(conf: ConfDir) -> None:
    """A check stays while at least one source holds it; the directory always held these.

    Renaming checks.yaml must not drop its checks (their results, their stats, their
    placement) and add them again as new ones.
    """
    await conf.register("n1", "n2")
    conf.write("old.yaml", listing(A, B, C))
    await conf.scan()
    placement = dict(conf.dispatcher.state.placement)
    check, node = sorted(placement.items())[0]
    result = CheckResult(
        digest=check, run_id="r1", ok=True, errors=(), started_at=time.time(), duration_s=0.1
    )
    accepted, _ = await conf.dispatcher.record_results(node, [result])
    assert accepted == 1

    with capture_logs() as logs:
        (conf.path / "old.yaml").rename(conf.path / "new.yaml")
        await conf.scan()

    assert conf.digests() == set(placement)
    assert conf.held_by("new.yaml") == set(placement)
    assert decisions(logs, "check_removed") == [], (
        "renaming a file dropped and re-added its checks: "
        f"{[(e['event'], e.get('reason')) for e in logs]}"
    )
    assert dict(conf.dispatcher.state.placement) == placement
    assert check in conf.dispatcher.state.results, "the check's last result was lost"


async def test_moving_a_check_to_another_file_keeps_it(conf: ConfDir) -> None:
    await conf.register("n1", "n2")
    conf.write("a.yaml", listing(A, B))
    conf.write("b.yaml", listing(C))
    await conf.scan()
    moved = digest(A)
    node = conf.dispatcher.state.placement[moved]

    with capture_logs() as logs:
        conf.write("a.yaml", listing(B))  # both edits land between two scans
        conf.write("b.yaml", listing(A, C))
        await conf.scan()

    assert conf.sources_of(moved) == ["file:b.yaml"]
    assert decisions(logs, "check_removed") == [], (
        "a check that moved from a.yaml to b.yaml was dropped and re-added as new"
    )
    assert conf.dispatcher.state.placement[moved] == node


async def test_a_file_is_parsed_off_the_event_loop(
    conf: ConfDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a file is parsed, heartbeats must still be answered and expiry must still
    tick: the parse runs in a worker thread (as the read does). Shown by event order:
    the parse is held until the loop has answered a heartbeat, which it could not do if
    the parse ran on it. (How long a large file stalls the loop: ``make bench``.)"""
    await conf.register("n1")
    conf.write("big.yaml", listing(A, B, C))
    parsing, answered = threading.Event(), threading.Event()
    parsed_in: list[threading.Thread] = []

    def held_parse(text: str, *, origin: str) -> list[CheckConfig]:
        parsed_in.append(threading.current_thread())
        parsing.set()
        if not answered.wait(GUARD_S):
            raise AssertionError("the loop answered no heartbeat while the file was parsed")
        return parse_configs(text, origin=origin)

    monkeypatch.setattr(configdir, "parse_configs", held_parse)
    scan = asyncio.create_task(conf.scan())
    try:
        assert await asyncio.to_thread(parsing.wait, GUARD_S), "the file was never parsed"
        await conf.dispatcher.node_status(NodeName("n1"), last_change=-1, labels={"on": "yes"})
        assert conf.dispatcher.state.nodes[NodeName("n1")].labels == {"on": "yes"}
    finally:
        answered.set()
        await scan

    assert parsed_in != [threading.main_thread()]
    assert conf.held_by("big.yaml") == {digest(A), digest(B), digest(C)}


# ------------------------------------------------------------ parse_configs


def test_parse_fills_in_defaults() -> None:
    [config] = parse_configs(mapping(A), origin="x.yaml")
    assert config.name == "http"
    assert config.instances == ({"url": A},)
    assert config.init_config == {}
    assert config.interval_s == 15.0
    assert config.timeout_s == 10.0
    assert dict(config.node_selector) == {}
    assert config.weight == 1.0
    assert config.digest == digest(A)

    [short] = parse_configs(mapping(A, "interval_s: 5\n"), origin="x.yaml")
    assert short.timeout_s == 5.0


def test_parse_keeps_every_field() -> None:
    text = textwrap.dedent(
        """\
        name: tcp
        instances:
          - {host: db.default.svc, port: 5432}
          - {host: db2.default.svc, port: 5432}
        init_config: {retries: 2}
        interval_s: 60
        timeout_s: 2.5
        node_selector: {zone: eu-1a}
        weight: 0.5
        """
    )
    [config] = parse_configs(text, origin="x.yaml")
    assert config.name == "tcp"
    assert config.instances == (
        {"host": "db.default.svc", "port": 5432},
        {"host": "db2.default.svc", "port": 5432},
    )
    assert config.init_config == {"retries": 2}
    assert (config.interval_s, config.timeout_s, config.weight) == (60.0, 2.5, 0.5)
    assert dict(config.node_selector) == {"zone": "eu-1a"}


def test_parse_keeps_the_order_of_configs() -> None:
    configs = parse_configs(listing(C, A, B), origin="x.yaml")
    assert [c.instances[0]["url"] for c in configs] == [C, A, B]


def test_parse_digest_ignores_layout_key_order_number_style_and_weight() -> None:
    block = mapping(A, "interval_s: 30\nnode_selector:\n  zone: a\n  disk: ssd\n")
    flow = (
        f"{{weight: 2.5, node_selector: {{disk: ssd, zone: a}}, interval_s: 30.0, "
        f"instances: [{{url: '{A}'}}], name: http}}\n"
    )
    [one] = parse_configs(block, origin="x.yaml")
    [two] = parse_configs(flow, origin="y.yaml")
    assert (
        one.digest
        == two.digest
        == digest(A, interval_s=30, node_selector={"zone": "a", "disk": "ssd"})
    )
    [other] = parse_configs(mapping(B, "interval_s: 30\n"), origin="x.yaml")
    assert other.digest != one.digest


def test_parse_skips_empty_documents() -> None:
    configs = parse_configs("---\n---\n" + mapping(A) + "---\n# just a comment\n", origin="x")
    assert [c.digest for c in configs] == [digest(A)]
    assert parse_configs("", origin="x") == []


def test_parse_accepts_anchors_and_merge_keys() -> None:
    text = textwrap.dedent(
        f"""\
        - &base
          name: http
          instances: [{{url: '{A}'}}]
          interval_s: 30
        - <<: *base
          instances: [{{url: '{B}'}}]
        """
    )
    configs = parse_configs(text, origin="x.yaml")
    assert [c.digest for c in configs] == [digest(A, interval_s=30), digest(B, interval_s=30)]


PARSE_ERRORS = [
    pytest.param(listing(A) + "- name: http\n  instances: []\n", ["x.yaml, config 2", "instances"],
                 id="empty_instances"),
    pytest.param(mapping(A) + "---\nhello\n", ["x.yaml (document 2)", "str"], id="scalar_doc"),
    pytest.param("42\n", ["x.yaml", "int"], id="number_doc"),
    pytest.param("- 5\n", ["x.yaml, config 1"], id="list_of_scalars"),
    pytest.param("configs: {name: http}\n", ["x.yaml", "'configs' must be a list"],
                 id="configs_not_a_list"),
    pytest.param(under_configs(A) + "extra: 1\n", ["x.yaml", "extra"], id="configs_with_extra"),
    pytest.param("instances: [{url: x}]\n", ["name", "missing field"], id="missing_name"),
    pytest.param("name: HTTP\ninstances: [{url: x}]\n", ["name"], id="bad_name"),
    pytest.param(mapping(A, "interval_s: '15'\n"), ["interval_s"], id="interval_as_string"),
    pytest.param(mapping(A, "interval_s: 86401\n"), ["interval_s"], id="interval_too_long"),
    pytest.param(mapping(A, "interval_s: .inf\n"), ["interval_s"], id="interval_inf"),
    pytest.param(mapping(A, "timeout_s: 0\n"), ["timeout_s"], id="timeout_zero"),
    pytest.param(mapping(A, "weight: .nan\n"), ["weight"], id="weight_nan"),
    pytest.param(mapping(A, "weight: 0\n"), ["weight"], id="weight_zero"),
    pytest.param(mapping(A, "node_selector: {ssd: yes}\n"), ["node_selector.ssd"],
                 id="selector_bool"),
    pytest.param(mapping(A, "init_config: {since: 2024-01-01}\n"), ["init_config", "date"],
                 id="date_in_init_config"),
    pytest.param("name: http\ninstances: [{1: a}]\n", ["instances.0", "string"],
                 id="non_string_key"),
    pytest.param("name: http\ninstances: [{ratio: .nan}]\n", ["instances", "finite"],
                 id="nan_in_instance"),
    pytest.param("name: http\n\tinstances: []\n", ["x.yaml", "not valid YAML"], id="tab"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "words"), PARSE_ERRORS)
def test_parse_errors_name_the_origin_and_the_field(text: str, words: list[str]) -> None:
    with pytest.raises(ConfigSourceError) as caught:
        parse_configs(text, origin="x.yaml")
    message = str(caught.value)
    assert message.startswith("x.yaml"), message
    for word in words:
        assert word in message, message


def test_parse_refuses_alias_expansion_beyond_the_file_size_limit() -> None:
    """About a kilobyte of nested YAML aliases expands to megabytes of instances.

    The dispatcher refuses files over 4 MiB and API bodies over 4 MiB; an alias bomb
    gets around both (each further level costs ten times more, on the event loop: seven
    levels take about a minute, nine would take hours).
    """
    levels = ["l0: &l0 [" + ", ".join(["x" * 60] * 10) + "]"]
    levels += [f"l{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * 10) + "]" for k in range(1, 5)]
    text = "name: http\ninstances:\n  - " + "\n    ".join(levels) + "\n"
    assert len(text) < 2048
    try:
        configs = parse_configs(text, origin="bomb.yaml")
    except ConfigSourceError as exc:
        message = str(exc)
    else:
        size = len(json.dumps(list(configs[0].instances)))
        pytest.fail(
            f"a {len(text)}-byte file was accepted as a check whose instances are "
            f"{size / 2**20:.1f} MiB of JSON (limit {MAX_FILE_BYTES / 2**20:.0f} MiB)"
        )
    assert "bomb.yaml" in message


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("? [a, b]\n: 1\n", id="list_as_key"),
        pytest.param("? {a: 1}\n: 1\n", id="mapping_as_key"),
        pytest.param("- name: http\n  instances: [{? [x]: 1}]\n", id="list_key_inside"),
    ],
)
async def test_unhashable_keys_are_a_broken_file_not_a_crashed_scan(
    conf: ConfDir, text: str
) -> None:
    """A file that makes PyYAML raise a Python error (not a YAMLError) is reported like
    any broken file, and the rest of the scan (a deletion, a new file) still applies."""
    await conf.register("n1")
    conf.write("old.yaml", listing(A))
    await conf.scan()
    (conf.path / "old.yaml").unlink()
    conf.write("new.yaml", listing(B))
    conf.write("bad.yaml", text)
    await conf.scan()

    assert conf.held_by("new.yaml") == {digest(B)}
    assert digest(A) not in conf.digests(), "the deleted file's check was kept"
    component = conf.component()
    assert component.status.label == "degraded", component
    assert "bad.yaml" in component.message


# ------------------------------------------------------- leadership terms


async def test_a_new_term_applies_every_file_again_to_its_fresh_state(conf: ConfDir) -> None:
    """Only the leader runs the source, from scratch in every term: a new term's state
    (empty with the memory store) must get every file again, changed or not."""
    old = conf.write("web.yaml", listing(A, B))
    os.utime(old, (time.time() - 3600, time.time() - 3600))  # not a file being written
    await conf.scan()
    conf.dispatcher.end_term()
    conf.dispatcher.begin_term(state=conf.dispatcher.new_state(), epoch=2)
    await conf.scan()
    assert conf.digests() == set(), "without reset() an unchanged file is not re-applied"
    conf.source.reset()
    await conf.scan()
    assert conf.held_by("web.yaml") == {digest(A), digest(B)}


async def test_a_new_term_drops_file_sources_whose_file_is_gone_and_keeps_the_rest(
    conf: ConfDir,
) -> None:
    """A state loaded from the shared store may hold ``file:`` sources of files deleted
    while no replica was reading them; API sources are not the directory's to judge."""
    conf.write("kept.yaml", listing(A))
    loaded = conf.dispatcher.new_state()
    check = make_config(name="http", instances=[{"url": B}])
    api = make_config(name="http", instances=[{"url": C}])
    loaded.replace_sources(
        {SourceName("file:gone.yaml"): [check], SourceName("ci"): [api]}, now=time.monotonic()
    )
    conf.dispatcher.end_term()
    conf.dispatcher.begin_term(state=loaded, epoch=2)
    conf.source.reset()
    await conf.scan()
    assert conf.dispatcher.state.source_names() == ["ci", "file:kept.yaml"]
    assert conf.digests() == {digest(A), digest(C)}
