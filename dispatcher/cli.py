"""``clusterchecks-dispatcher``: serve (the default) and the admin commands.

``serve`` runs the dispatcher. ``state``, ``checks``, ``history``, ``results``, ``rebalance``,
``cordon``, ``uncordon``, ``drain``, ``isolate`` and ``replicas`` talk to a running one
over HTTP (``dispatcher.admin``; its ``commands`` module lists their exit codes).

Every flag also reads ``CLUSTERCHECKS_<FLAG_IN_UPPER_SNAKE>``. A bad value stops the
process at start with a one-line message naming the flag and what it accepts.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from dispatcher.admin import commands as admin
from dispatcher.common import logs
from dispatcher.common.cli import option, read_token
from dispatcher.common.fdlimits import DEFAULT_MAX_CONNECTIONS
from dispatcher.errors import ConfigurationError, StoreError
from dispatcher.settings import (
    DEFAULT_WARMUP_S,
    ELECTION_BACKENDS,
    MAX_SERVER_TIMEOUT_S,
    STORE_BACKENDS,
    UI_REFRESH_MAX_S,
    UI_REFRESH_MIN_S,
    AuthSettings,
    DispatchSettings,
    ElectionSettings,
    HealthSettings,
    KubernetesSourceSettings,
    LogSettings,
    RedisSettings,
    ServerSettings,
    Settings,
    StoreSettings,
)


def _seconds(low: float, high: float = 86400.0, *, low_open: bool = False) -> click.FloatRange:
    return click.FloatRange(low, high, min_open=low_open)


# Every flag's default is read from its settings dataclass: written once, there.
_SERVER = ServerSettings()
_DISPATCH = DispatchSettings()
_ELECTION = ElectionSettings()
_STORE = StoreSettings()
_REDIS = RedisSettings()
_HEALTH = HealthSettings()
_K8S_SOURCE = KubernetesSourceSettings()


class DefaultGroup(click.Group):
    """Runs ``serve`` when no subcommand is named.

    The admin commands' common options (``--url``, ``--token``, ``--token-file``,
    ``--timeout``, ``--json``) may also come before the subcommand: they are moved after
    its name, so ``--json state`` is ``state --json``. Without an admin subcommand after
    them, the usage error says which commands take them (``serve`` does not).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        leading, rest = admin.split_leading_options(args)
        if leading:
            names = [command.name for command in admin.COMMANDS]
            if rest and rest[0] in names:
                args = [rest[0], *leading, *rest[1:]]
            else:
                flag = leading[0].partition("=")[0]
                where = "serve does not take it" if rest[:1] == ["serve"] else "name one"
                raise click.UsageError(
                    f"{flag} is an option of the admin commands ({', '.join(map(str, names))})"
                    f"; {where}: for example clusterchecks-dispatcher state {flag}"
                    f"{'' if flag == '--json' else ' ...'}",
                    ctx=ctx,
                )
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The clusterchecks dispatcher (cluster agent).

    The serve command (the default) runs it; the others talk to a running one. Their
    options (--url, --token, --token-file, --timeout, --json) go after the command's
    name or before it.
    """


@main.command()
@option("host", default=_SERVER.host, show_default=True, help="Address to listen on.")
@option("port", type=click.IntRange(0, 65535), default=_SERVER.port, show_default=True)
@option("identity", default=socket.gethostname(), help="This replica's name.")
@option("advertise-url", default=_SERVER.advertise_url, help="URL others reach this replica at.")
@option(
    "election",
    type=click.Choice(ELECTION_BACKENDS),
    default=_ELECTION.backend,
    show_default=True,
    help="How the leader is chosen.",
)
@option(
    "store",
    type=click.Choice(STORE_BACKENDS),
    default=None,
    help=f"Where the state lives [default: {_STORE.backend} with --election standalone, "
    "else memory; sqlite is for standalone only].",
)
@option(
    "data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=_STORE.data_dir,
    show_default=True,
    help="Directory of the sqlite store's file (created when missing).",
)
@option(
    "node-expiration-timeout",
    type=_seconds(0, low_open=True),
    default=_DISPATCH.node_expiration_timeout_s,
    show_default=True,
    help="Seconds without heartbeat before a node is removed.",
)
@option(
    "heartbeat-interval",
    type=_seconds(0, low_open=True),
    default=_DISPATCH.heartbeat_interval_s,
    show_default=True,
    help="Seconds between agents' heartbeats (told to them).",
)
@option(
    "result-posts-per-s",
    type=click.FloatRange(1.0, 1_000_000.0),
    default=_DISPATCH.result_posts_per_s,
    show_default=True,
    help="Results posts per second the fleet is paced to (agents are told how often).",
)
@option(
    "warmup-duration",
    type=_seconds(0),
    default=None,
    help="Seconds to keep agents' checks after start [default: 0 standalone].",
)
@option(
    "rebalance-period",
    type=_seconds(1),
    default=_DISPATCH.rebalance_period_s,
    show_default=True,
    help="Seconds between periodic rebalances.",
)
@option(
    "rebalance-margin",
    type=click.FloatRange(0.0, 10.0, min_open=True),
    default=_DISPATCH.rebalance_margin,
    show_default=True,
    help="A rebalance brings every node within this fraction above the mean load.",
)
@option(
    "rebalance-min-gain",
    type=click.FloatRange(0.0, 1.0),
    default=_DISPATCH.rebalance_min_gain,
    show_default=True,
    help="A rebalance narrowing the spread by less than this fraction moves nothing "
    "(unless forced).",
)
@option(
    "dangling-warning",
    type=_seconds(0, low_open=True),
    default=_DISPATCH.dangling_warning_s,
    show_default=True,
    help="Seconds a check may dangle before it is flagged (logs, metrics).",
)
@option(
    "max-checks-per-source",
    type=click.IntRange(1),
    default=_DISPATCH.max_checks_per_source,
    show_default=True,
    help="A PUT or POST that would make one source hold more checks is refused (413 "
    "too_many_checks).",
)
@option(
    "max-checks-per-node",
    type=click.IntRange(1),
    default=_DISPATCH.max_checks_per_node,
    show_default=True,
    help="A node holding this many checks is given no more (they go elsewhere, or dangle).",
)
@option(
    "history-max-results",
    type=click.IntRange(0, 1_000_000),
    default=_DISPATCH.history_max_results,
    show_default=True,
    help="Results kept per check in its history (the oldest goes first); 0 turns the "
    "history off (no uptime, nothing stored per result).",
)
@option(
    "history-max-total",
    type=click.IntRange(1),
    default=_DISPATCH.history_max_total,
    show_default=True,
    help="Results kept in the history of all checks together (each keeps an equal share, at "
    "most --history-max-results); about 0.3 KiB of memory each.",
)
@option(
    "history-max-age",
    type=_seconds(60.0, 366 * 86400.0),
    default=_DISPATCH.history_max_age_s,
    show_default=True,
    help="Seconds a result stays in its check's history.",
)
@option(
    "replica-status-period",
    type=_seconds(0.1, 3600.0),
    default=_HEALTH.replica_status_period_s,
    show_default=True,
    help="Seconds between writes of this replica's status to the shared store.",
)
@option(
    "liveness-grace",
    type=_seconds(0, 3600.0),
    default=_HEALTH.liveness_grace_s,
    show_default=True,
    help="Seconds after start-up (and during shutdown) when /healthz always passes.",
)
@option(
    "redis-url",
    default=_REDIS.url,
    show_default=True,
    help="Redis for --election redis and --store redis.",
)
@option(
    "lease-duration",
    type=_seconds(0, low_open=True),
    default=_ELECTION.lease_duration_s,
    show_default=True,
)
@option(
    "renew-deadline",
    type=_seconds(0, low_open=True),
    default=_ELECTION.renew_deadline_s,
    show_default=True,
)
@option(
    "retry-period",
    type=_seconds(0, low_open=True),
    default=_ELECTION.retry_period_s,
    show_default=True,
)
@option(
    "lease-name",
    type=click.STRING,
    default=_ELECTION.lease_name,
    show_default=True,
    help="Lease object (kubernetes) or key prefix (redis).",
)
@option(
    "lease-namespace",
    default=_ELECTION.lease_namespace,
    show_default=True,
    help="Namespace of the Lease.",
)
@option(
    "config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory of *.yaml check configs, re-read on change.",
)
@option(
    "kubernetes-source",
    is_flag=True,
    default=_K8S_SOURCE.enabled,
    help="Take checks from annotated Services and labelled ConfigMaps (the leader does).",
)
@option(
    "kubernetes-source-namespace",
    default=_K8S_SOURCE.namespace,
    help="Only this namespace [default: every namespace].",
)
@option(
    "cluster-domain",
    default=_K8S_SOURCE.cluster_domain,
    show_default=True,
    help="Cluster DNS domain for %%host%% in Service checks.",
)
@option(
    "kubeconfig",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Kubeconfig for the Kubernetes API outside a pod [default: in a pod, its service "
    "account; else $KUBECONFIG or ~/.kube/config].",
)
@option("node-token", default=None, help="Bearer token of the node role.")
@option("source-token", default=None, help="Bearer token of the source role.")
@option("admin-token", default=None, help="Bearer token of the admin role.")
@option("node-token-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@option("source-token-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@option("admin-token-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@option("tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None)
@option("tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None)
@option(
    "log-format",
    type=click.Choice(["json", "console"]),
    default=None,
    help="Default: console on a terminal, else json.",
)
@option("log-level", type=click.Choice(logs.LEVELS), default=LogSettings().level, show_default=True)
@option(
    "header-timeout",
    type=_seconds(0, MAX_SERVER_TIMEOUT_S, low_open=True),
    default=_SERVER.header_timeout_s,
    show_default=True,
    help="Seconds for a request head to arrive (from the accept, or the next request's "
    "first byte); then 408.",
)
@option(
    "body-timeout",
    type=_seconds(0, MAX_SERVER_TIMEOUT_S, low_open=True),
    default=_SERVER.body_timeout_s,
    show_default=True,
    help="Seconds for a request body to arrive after its head; then 408.",
)
@option(
    "idle-timeout",
    type=_seconds(0, MAX_SERVER_TIMEOUT_S, low_open=True),
    default=_SERVER.idle_timeout_s,
    show_default=True,
    help="Seconds a kept-alive connection may wait between requests.",
)
@option(
    "ui-refresh",
    type=_seconds(UI_REFRESH_MIN_S, UI_REFRESH_MAX_S),
    default=_SERVER.ui_refresh_s,
    show_default=True,
    help="Seconds between the dashboard's updates (/ui/).",
)
@option(
    "max-import-bytes",
    type=click.IntRange(1),
    default=_SERVER.max_import_bytes,
    show_default=True,
    help="Body limit of POST /import (a whole export in one request); other routes take 4 MiB.",
)
@option(
    "max-connections",
    type=click.IntRange(1),
    default=_SERVER.max_connections,
    help="Open connections at most; at the limit the longest idle one is closed, or the new "
    f"one gets 503 [default: {DEFAULT_MAX_CONNECTIONS}, or fewer if the open-file limit is "
    "lower].",
)
@option(
    "accept-error-log-interval",
    type=_seconds(0, MAX_SERVER_TIMEOUT_S, low_open=True),
    default=_SERVER.accept_error_log_interval_s,
    show_default=True,
    help="Seconds between two log lines about failing accepts (out of file descriptors).",
)
def serve(**flags: Any) -> None:
    """Serve the dispatcher API and dispatch checks (the default command)."""
    settings = settings_from_flags(flags)
    logs.configure(fmt=settings.log.format, level=settings.log.level)
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        _fail(
            f"cannot serve on {settings.server.host}:{settings.server.port}: {exc.strerror or exc}"
        )
    except ConfigurationError as exc:
        _fail(str(exc))
    except StoreError as exc:
        # A data dir held by another dispatcher, a corrupt or newer data file: not a
        # usage error, and never a fresh start that would drop what the file holds.
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


async def _serve(settings: Settings) -> None:
    from dispatcher.service import run

    await run(settings)


def settings_from_flags(flags: dict[str, Any]) -> Settings:
    auth = AuthSettings(
        node_token=read_token(flags["node_token"], flags["node_token_file"], flag="node-token"),
        source_token=read_token(
            flags["source_token"], flags["source_token_file"], flag="source-token"
        ),
        admin_token=read_token(flags["admin_token"], flags["admin_token_file"], flag="admin-token"),
    )
    store = flags["store"]
    if store is None:
        store = _STORE.backend if flags["election"] == "standalone" else "memory"
    warmup = flags["warmup_duration"]
    if warmup is None:
        # A leader warms up only when it finds its store empty (a fresh data dir, a Redis
        # that lost its data, the memory store of an elected leader), to rebuild from the
        # agents. A standalone memory store is throwaway: it starts placing at once.
        throwaway = flags["election"] == "standalone" and store == "memory"
        warmup = 0.0 if throwaway else DEFAULT_WARMUP_S
    settings = Settings(
        server=ServerSettings(
            host=flags["host"],
            port=flags["port"],
            identity=flags["identity"],
            advertise_url=flags["advertise_url"],
            tls_cert=flags["tls_cert"],
            tls_key=flags["tls_key"],
            header_timeout_s=flags["header_timeout"],
            body_timeout_s=flags["body_timeout"],
            idle_timeout_s=flags["idle_timeout"],
            max_connections=flags["max_connections"],
            max_import_bytes=flags["max_import_bytes"],
            ui_refresh_s=flags["ui_refresh"],
            accept_error_log_interval_s=flags["accept_error_log_interval"],
        ),
        dispatch=DispatchSettings(
            node_expiration_timeout_s=flags["node_expiration_timeout"],
            heartbeat_interval_s=flags["heartbeat_interval"],
            result_posts_per_s=flags["result_posts_per_s"],
            warmup_duration_s=warmup,
            rebalance_period_s=flags["rebalance_period"],
            rebalance_margin=flags["rebalance_margin"],
            rebalance_min_gain=flags["rebalance_min_gain"],
            dangling_warning_s=flags["dangling_warning"],
            max_checks_per_source=flags["max_checks_per_source"],
            max_checks_per_node=flags["max_checks_per_node"],
            history_max_results=flags["history_max_results"],
            history_max_total=flags["history_max_total"],
            history_max_age_s=flags["history_max_age"],
        ),
        auth=auth,
        election=ElectionSettings(
            backend=flags["election"],
            lease_duration_s=flags["lease_duration"],
            renew_deadline_s=flags["renew_deadline"],
            retry_period_s=flags["retry_period"],
            lease_name=flags["lease_name"],
            lease_namespace=flags["lease_namespace"],
        ),
        store=StoreSettings(backend=store, data_dir=flags["data_dir"]),
        redis=RedisSettings(url=flags["redis_url"]),
        log=LogSettings(
            format=flags["log_format"] or logs.default_format(), level=flags["log_level"]
        ),
        health=HealthSettings(
            replica_status_period_s=flags["replica_status_period"],
            liveness_grace_s=flags["liveness_grace"],
        ),
        kubernetes_source=KubernetesSourceSettings(
            enabled=flags["kubernetes_source"],
            namespace=flags["kubernetes_source_namespace"],
            cluster_domain=flags["cluster_domain"],
        ),
        kubeconfig=flags["kubeconfig"],
        config_dir=flags["config_dir"],
    )
    try:
        return settings.validate()
    except ConfigurationError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


main.add_command(admin.state)
main.add_command(admin.checks)
main.add_command(admin.history)
main.add_command(admin.results)
main.add_command(admin.rebalance)
main.add_command(admin.cordon)
main.add_command(admin.uncordon)
main.add_command(admin.drain)
main.add_command(admin.isolate)
main.add_command(admin.replicas)
main.add_command(admin.export)
main.add_command(admin.import_)


if __name__ == "__main__":  # pragma: no cover
    main()
