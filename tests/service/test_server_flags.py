"""The server's limits and timeouts: flags and ``CLUSTERCHECKS_*`` variables reach
``ServerSettings``, defaults come from the dataclass, bad values stop the start with a
message naming the flag."""

from __future__ import annotations

import dataclasses
import os

import pytest
from click.testing import CliRunner

import dispatcher.cli
from dispatcher.common import logs
from dispatcher.errors import ConfigurationError
from dispatcher.settings import DEFAULT_WARMUP_S, ServerSettings, Settings


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The settings ``serve`` would have served with (it does not serve)."""
    for name in list(os.environ):
        if name.startswith("CLUSTERCHECKS_"):
            monkeypatch.delenv(name)
    captured: list[Settings] = []

    async def capture(settings: Settings) -> None:
        captured.append(settings)

    monkeypatch.setattr(dispatcher.cli, "_serve", capture)
    monkeypatch.setattr(logs, "configure", lambda **_: None)
    return captured


def test_without_flags_the_server_limits_are_the_dataclass_defaults(seen: list[Settings]) -> None:
    result = CliRunner().invoke(dispatcher.cli.main, [])
    assert result.exit_code == 0, (result.output, result.exception)
    [settings] = seen
    default = ServerSettings()
    server = settings.server
    assert (
        server.header_timeout_s,
        server.body_timeout_s,
        server.idle_timeout_s,
        server.max_connections,
        server.accept_error_log_interval_s,
    ) == (
        default.header_timeout_s,
        default.body_timeout_s,
        default.idle_timeout_s,
        default.max_connections,
        default.accept_error_log_interval_s,
    )


def test_the_server_flags_and_their_variables_reach_the_settings(seen: list[Settings]) -> None:
    result = CliRunner().invoke(
        dispatcher.cli.main,
        ["--header-timeout", "2.5", "--body-timeout", "30", "--max-connections", "500"],
        env={"CLUSTERCHECKS_IDLE_TIMEOUT": "20", "CLUSTERCHECKS_ACCEPT_ERROR_LOG_INTERVAL": "5"},
    )
    assert result.exit_code == 0, (result.output, result.exception)
    [settings] = seen
    server = settings.server
    assert server.header_timeout_s == 2.5
    assert server.body_timeout_s == 30.0
    assert server.idle_timeout_s == 20.0
    assert server.max_connections == 500
    assert server.accept_error_log_interval_s == 5.0


@pytest.mark.parametrize(
    ("args", "env", "flag"),
    [
        (["--header-timeout", "0"], {}, "--header-timeout"),
        (["--body-timeout", "-1"], {}, "--body-timeout"),
        (["--idle-timeout", "7200"], {}, "--idle-timeout"),
        ([], {"CLUSTERCHECKS_MAX_CONNECTIONS": "0"}, "--max-connections"),
        ([], {"CLUSTERCHECKS_HEADER_TIMEOUT": "soon"}, "--header-timeout"),
        (["--accept-error-log-interval", "0"], {}, "--accept-error-log-interval"),
    ],
)
def test_a_bad_server_limit_stops_the_start_naming_its_flag(
    seen: list[Settings], args: list[str], env: dict[str, str], flag: str
) -> None:
    result = CliRunner().invoke(dispatcher.cli.main, args, env=env)
    assert result.exit_code == 2, (result.output, result.exception)
    assert flag in result.output
    assert seen == []


@pytest.mark.parametrize(
    ("server", "flag"),
    [
        (ServerSettings(header_timeout_s=0), "--header-timeout"),
        (ServerSettings(body_timeout_s=float("nan")), "--body-timeout"),
        (ServerSettings(idle_timeout_s=1e9), "--idle-timeout"),
        (ServerSettings(accept_error_log_interval_s=-1), "--accept-error-log-interval"),
        (ServerSettings(max_connections=0), "--max-connections"),
    ],
)
def test_validate_refuses_bad_server_limits(server: ServerSettings, flag: str) -> None:
    with pytest.raises(ConfigurationError, match=flag):
        Settings(server=server).validate()


def test_without_flags_every_setting_is_its_dataclass_default(seen: list[Settings]) -> None:
    """Defaults are written once, in the settings dataclasses: serve without flags
    serves with them (but for what is the machine's: the identity and the URL derived
    from it, the log format chosen by the terminal, and the warm-up, whose default
    depends on the election)."""
    result = CliRunner().invoke(dispatcher.cli.main, [])
    assert result.exit_code == 0, (result.output, result.exception)
    [settings] = seen
    default = Settings()
    for concern in ("auth", "election", "store", "redis", "health", "kubernetes_source"):
        assert getattr(settings, concern) == getattr(default, concern), concern
    server = dataclasses.replace(settings.server, identity="", advertise_url="")
    assert server == dataclasses.replace(default.server, identity="", advertise_url="")
    # The warm-up's default depends on the election and the store: 30 s for a leader
    # that may find its store empty, none for a throwaway standalone memory store.
    assert dataclasses.replace(settings.dispatch, warmup_duration_s=0.0) == default.dispatch
    assert settings.dispatch.warmup_duration_s == DEFAULT_WARMUP_S
    assert settings.log.level == default.log.level
    assert (settings.config_dir, settings.kubeconfig) == (None, None)
