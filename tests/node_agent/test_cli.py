"""The agent's command line: every default is the settings dataclass's, the new limits
are flags, and nonsense is refused before anything starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dispatcher.errors import ConfigurationError
from node_agent.cli import main
from node_agent.settings import AgentSettings

FLAG_TO_FIELD = {
    "capacity": "capacity",
    "host": "host",
    "port": "port",
    "heartbeat_interval": "heartbeat_interval_s",
    "long_poll": "long_poll_s",
    "liveness_grace": "liveness_grace_s",
    "shutdown_timeout": "shutdown_timeout_s",
    "header_timeout": "header_timeout_s",
    "body_timeout": "body_timeout_s",
    "idle_timeout": "idle_timeout_s",
    "max_connections": "max_connections",
    "fence_on_disconnect": "fence_on_disconnect",
}


def test_every_default_is_the_settings_default() -> None:
    params = main.make_context("clusterchecks-agent", []).params
    defaults = AgentSettings()
    for flag, field in FLAG_TO_FIELD.items():
        assert params[flag] == getattr(defaults, field), flag
    assert params["dispatcher_url"] == ",".join(defaults.dispatcher_urls)


@pytest.mark.parametrize(
    "args",
    [
        ["--shutdown-timeout", "0"],
        ["--header-timeout", "0"],
        ["--body-timeout", "-1"],
        ["--idle-timeout", "0"],
        ["--max-connections", "0"],
    ],
)
def test_a_limit_that_is_not_positive_is_refused(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert args[0] in result.output


def test_settings_refuse_a_limit_that_is_not_positive() -> None:
    with pytest.raises(ConfigurationError, match="--shutdown-timeout"):
        AgentSettings(shutdown_timeout_s=0).validate()
    with pytest.raises(ConfigurationError, match="--max-connections"):
        AgentSettings(max_connections=0).validate()
