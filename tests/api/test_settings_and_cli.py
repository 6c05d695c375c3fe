"""Settings.validate() and the command line: bad settings stop the process at start,
with a message naming the flag (and what it accepts)."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import dispatcher.cli
import node_agent.cli
from dispatcher.common import logs
from dispatcher.errors import ConfigurationError
from dispatcher.settings import (
    AuthSettings,
    DispatchSettings,
    ElectionSettings,
    ServerSettings,
    Settings,
)

ADMIN_ONLY = AuthSettings(admin_token="a")


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        pytest.param(
            Settings(server=ServerSettings(host="0.0.0.0")),
            ["0.0.0.0", "--admin-token", "--host"],
            id="any-address-without-tokens",
        ),
        pytest.param(
            Settings(server=ServerSettings(host="10.1.2.3")),
            ["10.1.2.3", "--admin-token"],
            id="private-address-without-tokens",
        ),
        pytest.param(Settings(server=ServerSettings(host="::")), ["--admin-token"], id="ipv6-any"),
        pytest.param(
            Settings(server=ServerSettings(host="dispatcher.example.com")),
            ["--admin-token"],
            id="hostname-without-tokens",
        ),
        pytest.param(
            Settings(auth=AuthSettings(node_token="n", source_token="s")),
            ["--admin-token"],
            id="tokens-without-admin-token",
        ),
        pytest.param(
            Settings(
                server=ServerSettings(
                    tls_cert=Path("/nonexistent/cert.pem"), tls_key=Path("/nonexistent/key.pem")
                )
            ),
            ["--tls-cert", "/nonexistent/cert.pem", "not a readable file"],
            id="tls-cert-missing",
        ),
        pytest.param(
            Settings(server=ServerSettings(host="0.0.0.0"), auth=AuthSettings(node_token="n")),
            ["--admin-token"],
            id="node-token-only-on-any-address",
        ),
        pytest.param(
            Settings(
                dispatch=DispatchSettings(heartbeat_interval_s=30, node_expiration_timeout_s=30)
            ),
            ["--heartbeat-interval", "--node-expiration-timeout"],
            id="heartbeat-equal-to-expiry",
        ),
        pytest.param(
            Settings(
                dispatch=DispatchSettings(heartbeat_interval_s=40, node_expiration_timeout_s=30)
            ),
            ["--heartbeat-interval", "--node-expiration-timeout"],
            id="heartbeat-above-expiry",
        ),
        pytest.param(
            Settings(election=ElectionSettings(lease_duration_s=10, renew_deadline_s=10)),
            ["--lease-duration", "--renew-deadline"],
            id="lease-equal-to-renew-deadline",
        ),
        pytest.param(
            Settings(
                election=ElectionSettings(
                    lease_duration_s=15, renew_deadline_s=10, retry_period_s=10
                )
            ),
            ["--renew-deadline", "--retry-period"],
            id="renew-deadline-equal-to-retry-period",
        ),
        pytest.param(
            Settings(election=ElectionSettings(lease_duration_s=5, renew_deadline_s=10)),
            ["--lease-duration"],
            id="lease-below-renew-deadline",
        ),
        pytest.param(
            Settings(server=ServerSettings(tls_cert=Path("cert.pem"))),
            ["--tls-cert", "--tls-key"],
            id="cert-without-key",
        ),
        pytest.param(
            Settings(dispatch=DispatchSettings(history_max_results=-1)),
            ["--history-max-results", "(-1)", "0 (no history)"],
            id="history-max-results-negative",
        ),
        pytest.param(
            Settings(dispatch=DispatchSettings(history_max_total=0)),
            ["--history-max-total", "(0)", "at least 1"],
            id="history-max-total-zero",
        ),
        pytest.param(
            Settings(dispatch=DispatchSettings(result_posts_per_s=0.5)),
            ["--result-posts-per-s", "(0.5)", "at least 1"],
            id="result-posts-per-s-below-one",
        ),
    ],
)
def test_validate_refuses_with_a_message_naming_the_flags(
    settings: Settings, words: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings.validate()
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(Settings(), id="defaults"),
        pytest.param(Settings(server=ServerSettings(host="::1")), id="ipv6-loopback"),
        pytest.param(Settings(server=ServerSettings(host="localhost")), id="localhost"),
        pytest.param(Settings(server=ServerSettings(host="127.0.0.2")), id="127/8"),
        pytest.param(
            Settings(server=ServerSettings(host="0.0.0.0"), auth=ADMIN_ONLY),
            id="any-address-with-admin-token",
        ),
        pytest.param(
            Settings(
                server=ServerSettings(host="0.0.0.0"),
                auth=AuthSettings(node_token="n", source_token="s", admin_token="a"),
            ),
            id="any-address-with-every-token",
        ),
        pytest.param(
            Settings(
                dispatch=DispatchSettings(heartbeat_interval_s=29.9, node_expiration_timeout_s=30)
            ),
            id="heartbeat-just-below-expiry",
        ),
        pytest.param(Settings(dispatch=DispatchSettings(history_max_results=0)), id="history-off"),
    ],
)
def test_validate_accepts_sound_settings(settings: Settings) -> None:
    assert settings.validate() is settings


# ---------------------------------------------------------------------- CLI


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner that never serves: a run that gets past validation fails loudly."""
    for name in list(os.environ):
        if name.startswith("CLUSTERCHECKS_"):
            monkeypatch.delenv(name)

    async def no_serving(settings: Settings) -> None:
        raise AssertionError(f"the command would have served with {settings}")

    monkeypatch.setattr(dispatcher.cli, "_serve", no_serving)
    monkeypatch.setattr(logs, "configure", lambda **_: None)
    return CliRunner()


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        pytest.param(["--election", "bogus"], {}, ["--election", "bogus", "standalone"], id="e"),
        pytest.param(
            [],
            {"CLUSTERCHECKS_ELECTION": "bogus"},
            ["--election", "CLUSTERCHECKS_ELECTION", "bogus", "standalone"],
            id="election-env",
        ),
        pytest.param(
            ["--store", "bogus"], {}, ["--store", "sqlite", "memory", "redis"], id="store"
        ),
        pytest.param(
            ["--election", "etcd"], {}, ["--election", "standalone", "redis", "kubernetes"], id="ee"
        ),
        pytest.param(
            ["--election", "redis", "--redis-url", "http://r:6379"],
            {},
            ["--redis-url", "http://r:6379", "redis://", "rediss://", "unix://"],
            id="redis-url-scheme",
        ),
        pytest.param(
            ["--store", "redis"],
            {"CLUSTERCHECKS_REDIS_URL": "localhost:6379"},
            ["--redis-url", "redis://"],
            id="redis-url-env",
        ),
        pytest.param(
            ["--election", "kubernetes", "--lease-name", "Not_A_Name"],
            {},
            ["--lease-name", "Not_A_Name", "DNS"],
            id="lease-name",
        ),
        pytest.param(
            ["--election", "kubernetes", "--lease-namespace", "a.b"],
            {},
            ["--lease-namespace", "a.b", "DNS label"],
            id="lease-namespace",
        ),
        pytest.param(
            ["--election", "redis", "--host", "0.0.0.0", "--admin-token", "a"],
            {},
            ["--advertise-url", "--election redis", "0.0.0.0"],
            id="elected-without-advertise-url",
        ),
        pytest.param(["--port", "99999"], {}, ["--port", "99999", "65535"], id="port-too-big"),
        pytest.param(["--port", "-1"], {}, ["--port"], id="port-negative"),
        pytest.param([], {"CLUSTERCHECKS_PORT": "http"}, ["--port", "CLUSTERCHECKS_PORT"], id="p"),
        pytest.param(
            ["--log-level", "loud"], {}, ["--log-level", "debug", "info", "warning"], id="level"
        ),
        pytest.param(["--log-format", "xml"], {}, ["--log-format", "json", "console"], id="fmt"),
        pytest.param(
            ["--node-expiration-timeout", "0"], {}, ["--node-expiration-timeout"], id="expiry-0"
        ),
        pytest.param(["--heartbeat-interval", "soon"], {}, ["--heartbeat-interval"], id="hb"),
        pytest.param(
            ["--heartbeat-interval", "30"], {}, ["--heartbeat-interval"], id="heartbeat-vs-expiry"
        ),
        pytest.param(
            ["--host", "0.0.0.0"], {}, ["0.0.0.0", "--admin-token"], id="open-without-tokens"
        ),
        pytest.param(["--node-token", "n"], {}, ["--admin-token"], id="no-admin-token"),
        pytest.param(
            [], {"CLUSTERCHECKS_SOURCE_TOKEN": "s"}, ["--admin-token"], id="no-admin-token-env"
        ),
        pytest.param(
            ["--lease-duration", "5", "--renew-deadline", "10"], {}, ["--lease-duration"], id="l"
        ),
        pytest.param(["--admin-token-file", "/nonexistent/t"], {}, ["--admin-token-file"], id="f"),
        pytest.param(
            ["--history-max-results", "-1"], {}, ["--history-max-results", "-1"], id="history-neg"
        ),
        pytest.param(
            ["--history-max-total", "0"], {}, ["--history-max-total", "0"], id="history-total"
        ),
        pytest.param(
            ["--result-posts-per-s", "0"], {}, ["--result-posts-per-s", "0"], id="posts-zero"
        ),
    ],
)
def test_a_bad_flag_or_environment_value_stops_the_command(
    runner: CliRunner, args: list[str], env: dict[str, str], words: list[str]
) -> None:
    result = runner.invoke(dispatcher.cli.main, args, env=env)

    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Error" in result.output
    for word in words:
        assert word in result.output, (word, result.output)


def test_an_empty_token_file_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    result = runner.invoke(dispatcher.cli.main, ["--admin-token-file", str(empty)])
    assert result.exit_code == 2
    assert "--admin-token-file" in result.output
    assert "empty" in result.output


@pytest.mark.parametrize(
    ("args", "warmup_s"),
    [
        pytest.param([], 30.0, id="standalone-sqlite"),
        pytest.param(["--store", "memory"], 0.0, id="standalone-memory"),
        pytest.param(["--election", "redis"], 30.0, id="elected-memory"),
        pytest.param(["--election", "kubernetes"], 30.0, id="kubernetes-memory"),
        pytest.param(["--election", "redis", "--store", "redis"], 30.0, id="redis-store"),
        pytest.param(["--election", "redis", "--warmup-duration", "5"], 5.0, id="given"),
        pytest.param(["--store", "memory", "--warmup-duration", "5"], 5.0, id="given-memory"),
    ],
)
def test_warm_up_defaults_to_30_s_but_for_a_throwaway_standalone_memory_store(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, args: list[str], warmup_s: float
) -> None:
    seen: list[Settings] = []

    async def capture(settings: Settings) -> None:
        seen.append(settings)

    monkeypatch.setattr(dispatcher.cli, "_serve", capture)
    result = runner.invoke(dispatcher.cli.main, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert [s.dispatch.warmup_duration_s for s in seen] == [warmup_s]


def test_the_ha_flags_reach_the_settings(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Settings] = []

    async def capture(settings: Settings) -> None:
        seen.append(settings)

    monkeypatch.setattr(dispatcher.cli, "_serve", capture)
    result = runner.invoke(
        dispatcher.cli.main,
        ["--election", "kubernetes", "--store", "redis", "--lease-name", "cc.leader",
         "--lease-namespace", "monitoring", "--lease-duration", "3", "--renew-deadline", "2",
         "--retry-period", "1"],
        env={"CLUSTERCHECKS_REDIS_URL": "rediss://redis.example:6380/2"},
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    (settings,) = seen
    assert settings.election == ElectionSettings(
        backend="kubernetes",
        lease_duration_s=3,
        renew_deadline_s=2,
        retry_period_s=1,
        lease_name="cc.leader",
        lease_namespace="monitoring",
    )
    assert settings.store.backend == "redis"
    assert settings.redis.url == "rediss://redis.example:6380/2"


def served_settings(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, *args: str) -> Settings:
    """The settings the command would serve with, given ``args`` (nothing is served)."""
    seen: list[Settings] = []

    async def capture(settings: Settings) -> None:
        seen.append(settings)

    monkeypatch.setattr(dispatcher.cli, "_serve", capture)
    result = runner.invoke(dispatcher.cli.main, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    assert len(seen) == 1
    return seen[0]


def test_history_max_results_0_turns_the_history_off(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = served_settings(runner, monkeypatch, "--history-max-results", "0")
    assert settings.dispatch.history_max_results == 0
    help_text = runner.invoke(dispatcher.cli.main, ["serve", "--help"]).output
    assert "0 turns the history off" in " ".join(help_text.split())


def test_history_max_total_reaches_the_dispatcher_s_history_limits(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = served_settings(runner, monkeypatch, "--history-max-total", "12345")
    assert settings.dispatch.history_max_total == 12345
    assert DispatchSettings().history_max_total == 500_000


def test_result_posts_per_s_reaches_the_dispatcher(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = served_settings(runner, monkeypatch, "--result-posts-per-s", "250")
    assert settings.dispatch.result_posts_per_s == 250.0
    assert settings.dispatch.results_interval_s(1000) == 4.0
    assert DispatchSettings().result_posts_per_s == 250.0


def test_sound_flags_get_past_validation(runner: CliRunner) -> None:
    result = runner.invoke(
        dispatcher.cli.main, ["--host", "0.0.0.0", "--port", "0", "--admin-token", "a"]
    )
    assert isinstance(result.exception, AssertionError)
    assert "would have served" in str(result.exception)


@pytest.mark.parametrize(
    ("command", "flag"),
    [(dispatcher.cli.main, "--source-token"), (node_agent.cli.main, "--token")],
    ids=["dispatcher", "agent"],
)
@pytest.mark.parametrize(
    "case",
    [("\n", False, "empty"), ("has a space", False, "printable ASCII"), ("ok", True, "not both")],
    ids=["empty", "space", "both"],
)
def test_every_command_reads_token_files_the_same_way(
    runner: CliRunner, tmp_path: Path, command: click.Command, flag: str,
    case: tuple[str, bool, str],
) -> None:  # fmt: skip
    """One reader (dispatcher.common.cli.read_token) for serve, the agent and the admin
    commands: an empty file, a token no header can carry, or both flags, all refused."""
    content, both, words = case
    path = tmp_path / "token"
    path.write_text(content)
    args = [f"{flag}-file", str(path)] + ([flag, "other"] if both else [])
    result = runner.invoke(command, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert flag in result.output
    assert words in result.output, result.output
