"""``clusterchecks-agent``: runs the node agent. Every flag also reads
``CLUSTERCHECKS_<FLAG_IN_UPPER_SNAKE>``."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from dispatcher.common import logs
from dispatcher.common.cli import option, read_token
from dispatcher.errors import ConfigurationError
from node_agent.settings import AgentSettings

DEFAULTS = AgentSettings()
"""Every flag's default is the setting's (written once, in the dataclass)."""


def _labels(value: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        key, sep, val = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--labels")
        labels[key] = val
    return labels


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@option(
    "dispatcher-url",
    default=",".join(DEFAULTS.dispatcher_urls),
    show_default=True,
    help="Dispatcher URL(s), comma-separated; the agent moves on when one stops answering.",
)
@option("name", default=socket.gethostname(), help="This node's name [default: host name].")
@option("labels", default="", help="Node labels, k=v,k=v.")
@option(
    "capacity",
    type=click.IntRange(1, 100_000),
    default=DEFAULTS.capacity,
    show_default=True,
    help="At most this many checks run at once.",
)
@option("host", default=DEFAULTS.host, show_default=True, help="Local server address.")
@option("port", type=click.IntRange(0, 65535), default=DEFAULTS.port, show_default=True)
@option("token", default=None, help="Bearer token (node role).")
@option("token-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@option(
    "allow-exec",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Path prefix under which exec checks may start programs (repeatable).",
)
@option(
    "fence-on-disconnect",
    is_flag=True,
    default=DEFAULTS.fence_on_disconnect,
    help="Stop checks once this node would have been expired by an unreachable dispatcher.",
)
@option(
    "heartbeat-interval",
    type=click.FloatRange(0.05, 3600),
    default=DEFAULTS.heartbeat_interval_s,
    show_default=True,
    help="Until the dispatcher says otherwise.",
)
@option(
    "long-poll",
    type=click.FloatRange(0, 60),
    default=DEFAULTS.long_poll_s,
    show_default=True,
    help="Seconds a config long poll may wait.",
)
@option(
    "liveness-grace",
    type=click.FloatRange(0, 3600),
    default=DEFAULTS.liveness_grace_s,
    show_default=True,
    help="Seconds after start-up (and during shutdown) when /healthz always passes.",
)
@option(
    "shutdown-timeout",
    type=click.FloatRange(0.1, 3600),
    default=DEFAULTS.shutdown_timeout_s,
    show_default=True,
    help="Seconds from SIGTERM to exit: stop the checks, send the results, leave.",
)
@option(
    "header-timeout",
    type=click.FloatRange(0, 3600, min_open=True),
    default=DEFAULTS.header_timeout_s,
    show_default=True,
    help="Local server: seconds for a request head to arrive; then 408.",
)
@option(
    "body-timeout",
    type=click.FloatRange(0, 3600, min_open=True),
    default=DEFAULTS.body_timeout_s,
    show_default=True,
    help="Local server: seconds for a request body to arrive after its head; then 408.",
)
@option(
    "idle-timeout",
    type=click.FloatRange(0, 3600, min_open=True),
    default=DEFAULTS.idle_timeout_s,
    show_default=True,
    help="Local server: seconds a kept-alive connection may wait between requests.",
)
@option(
    "max-connections",
    type=click.IntRange(1),
    default=DEFAULTS.max_connections,
    show_default=True,
    help="Local server: open connections at most (the longest idle one makes room).",
)
@option("log-format", type=click.Choice(["json", "console"]), default=None)
@option("log-level", type=click.Choice(logs.LEVELS), default="info", show_default=True)
def main(**flags: Any) -> None:
    """The clusterchecks node agent."""
    token = read_token(flags["token"], flags["token_file"], flag="token")
    allow: list[Path] = []
    for entry in flags["allow_exec"]:
        allow.extend(Path(p) for p in str(entry).split(os.pathsep) if p)
    settings = AgentSettings(
        dispatcher_urls=tuple(u.strip() for u in flags["dispatcher_url"].split(",") if u.strip()),
        name=flags["name"],
        labels=_labels(flags["labels"]),
        capacity=flags["capacity"],
        host=flags["host"],
        port=flags["port"],
        token=token,
        allow_exec=tuple(allow),
        fence_on_disconnect=flags["fence_on_disconnect"],
        heartbeat_interval_s=flags["heartbeat_interval"],
        long_poll_s=flags["long_poll"],
        liveness_grace_s=flags["liveness_grace"],
        shutdown_timeout_s=flags["shutdown_timeout"],
        header_timeout_s=flags["header_timeout"],
        body_timeout_s=flags["body_timeout"],
        idle_timeout_s=flags["idle_timeout"],
        max_connections=flags["max_connections"],
    )
    try:
        settings.validate()
    except ConfigurationError as exc:
        _fail(str(exc))
    logs.configure(fmt=flags["log_format"] or logs.default_format(), level=flags["log_level"])
    from node_agent.service import run

    try:
        asyncio.run(run(settings))
    except OSError as exc:
        _fail(f"cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass


def _fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)
