"""The admin subcommands of ``clusterchecks-dispatcher``: they talk to a running dispatcher
over its HTTP API (the admin routes of API.md) and print text tables, or with ``--json``
the dispatcher's JSON reply and nothing else.

Every subcommand takes ``--url`` (``CLUSTERCHECKS_URL``), ``--token``
(``CLUSTERCHECKS_ADMIN_TOKEN``) or ``--token-file`` (``CLUSTERCHECKS_ADMIN_TOKEN_FILE``),
``--timeout`` seconds (``CLUSTERCHECKS_TIMEOUT``) and ``--json``. Colour appears only
when stdout is a terminal and ``NO_COLOR`` is not set.

Exit codes, for scripts::

    0    success
    1    results: the last result of at least one check failed (with --json too)
    2    usage error (click's own): unknown flag, bad flag value, missing argument
    3    dispatcher unreachable or timed out; 503 no_leader, 508, any other 5xx;
         a reply that cannot be read
    4    the token was refused (401 unauthorized, 403 forbidden)
    5    not found (404 unknown_node, unknown_check, not_found); a digest prefix that
         matches no check or several
    6    conflict (409: not_dispatched, no_other_node, ...)
    7    any other 4xx (400 invalid_request, 413 body_too_large, ...)
    130  interrupted (Ctrl-C)

Errors are one line on stderr starting with ``error:``; never a traceback. When the
dispatcher names bad fields (``import`` of a bad file), one indented line per field
follows.

``export`` prints the whole desired state as a JSON document (``export > state.json``);
``import FILE`` (``-`` for stdin) sends such a document back, as it is: the dispatcher
validates all of it before changing anything.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeVar
from urllib.parse import urlsplit

import click

from dispatcher import wire
from dispatcher.admin import render
from dispatcher.admin.client import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    AdminClient,
    Reply,
    Target,
    connect,
)
from dispatcher.admin.errors import AdminError, ExitCode
from dispatcher.common.cli import env_name, option, read_token

T = TypeVar("T")

MIB = 1024 * 1024
_PREFIX = re.compile(r"^[0-9a-f]{1,64}$")
_NAME = re.compile(wire.NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class Invocation:
    """What every admin subcommand gets: where the dispatcher is and how to print."""

    target: Target
    json_out: bool


# ------------------------------------------------------------------- options


def _check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    url = value.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(
            f"{value!r} is not an http:// or https:// URL with a host, like {DEFAULT_URL}"
        )
    if parts.query or parts.fragment:
        raise click.BadParameter(f"{value!r}: give the base URL, without ?query or #fragment")
    return url


_COMMON_OPTIONS = (
    option(
        "url",
        default=DEFAULT_URL,
        show_default=True,
        callback=_check_url,
        help="The dispatcher (any replica: followers forward to the leader).",
    ),
    # The same variables as ``serve --admin-token``: inside a dispatcher's container the
    # admin commands find the admin token (CLUSTERCHECKS_TOKEN is the agent's node token).
    click.option(
        "--token",
        envvar=env_name("admin-token"),
        show_envvar=True,
        default=None,
        help="Bearer token of the admin role.",
    ),
    click.option(
        "--token-file",
        envvar=env_name("admin-token-file"),
        show_envvar=True,
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="A file holding the token.",
    ),
    option(
        "timeout",
        type=click.FloatRange(0, 3600, min_open=True),
        default=DEFAULT_TIMEOUT_S,
        show_default=True,
        help="Seconds a request may take.",
    ),
    click.option(
        "--json",
        "json_out",
        is_flag=True,
        help="Print the dispatcher's JSON reply (indented) and nothing else.",
    ),
)


def admin_command(func: Callable[..., None]) -> Callable[..., None]:
    """Adds the common options; the command receives an :class:`Invocation` first."""

    @functools.wraps(func)
    def wrapper(
        *,
        url: str,
        token: str | None,
        token_file: Path | None,
        timeout: float,
        json_out: bool,
        **kwargs: Any,
    ) -> None:
        target = Target(
            url=url, token=read_token(token, token_file, flag="token"), timeout_s=timeout
        )
        func(Invocation(target=target, json_out=json_out), **kwargs)

    command: Callable[..., None] = wrapper
    for decorate in reversed(_COMMON_OPTIONS):
        command = decorate(command)
    return command


def _common_parameters() -> list[click.Parameter]:
    @click.command()
    @admin_command
    def probe(inv: Invocation) -> None:  # pragma: no cover (never run, only read)
        pass

    return list(probe.params)


_LEADING: dict[str, bool] = {
    opt: not param.is_flag
    for param in _common_parameters()
    if isinstance(param, click.Option)
    for opt in param.opts
}
"""The common options' flags (``--url``, ``--json``, ...), and whether each takes a value."""


def split_leading_options(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """The common admin options at the start of ``args``, and the rest.

    People write ``clusterchecks-dispatcher --json state`` as often as ``... state
    --json``; the group moves these in front of the subcommand's own arguments. A value
    may follow its flag (``--url U``) or be joined to it (``--url=U``).
    """
    i = 0
    while i < len(args):
        flag, joined, _ = args[i].partition("=")
        if flag not in _LEADING:
            break
        i += 2 if _LEADING[flag] and not joined else 1
    return list(args[:i]), list(args[i:])


def _check_prefix(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    prefix = value.strip().lower()
    if not _PREFIX.fullmatch(prefix):
        raise click.BadParameter(
            f"{value!r} is not a digest or digest prefix (1 to 64 hex characters)"
        )
    return prefix


def _check_node(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise click.BadParameter(
            f"{value!r} is not a node name (1 to 253 characters of A-Z a-z 0-9 . _ -)"
        )
    return value


# ------------------------------------------------------------------- running


def _color() -> bool | None:
    """None: click decides (colour on a terminal only); False when NO_COLOR is set."""
    return False if os.environ.get("NO_COLOR") else None


def _fail(message: str, code: ExitCode, fields: Sequence[str] = ()) -> NoReturn:
    click.echo(f"{click.style('error:', fg='red', bold=True)} {message}", err=True, color=_color())
    for field in fields:
        click.echo(f"  {field}", err=True)
    raise click.exceptions.Exit(int(code))


def _run(work: Callable[[AdminClient], Awaitable[T]], inv: Invocation) -> T:
    async def session() -> T:
        async with connect(inv.target) as client:
            return await work(client)

    try:
        return asyncio.run(session())
    except AdminError as exc:
        _fail(exc.message, exc.exit_code, exc.fields)
    except KeyboardInterrupt:
        _fail("interrupted", ExitCode.INTERRUPTED)


async def _weights(
    client: AdminClient, moves: list[wire.MoveOut], inv: Invocation
) -> render.Weights:
    """The configured weights of the checks that moved, for the table (a move reply
    carries the measured cost only). Read after the action: if that read fails, the
    action still happened, so the table says the weights are missing instead of the
    command failing."""
    if inv.json_out or not moves:
        return render.Weights()
    try:
        listing = await client.checks()
    except AdminError as exc:
        return render.Weights(problem=exc.message)
    return render.Weights({c.digest: c.weight for c in listing.model.checks})


def _emit(inv: Invocation, reply: Reply[Any], text: Callable[[], str]) -> None:
    if inv.json_out:
        click.echo(json.dumps(reply.raw, indent=2, ensure_ascii=False))
    else:
        click.echo(text(), color=_color())


# ------------------------------------------------------------------ commands


@click.command()
@admin_command
def state(inv: Invocation) -> None:
    """Leader, nodes (checks, load, heartbeat, cordon) and dangling checks."""
    reply = _run(lambda c: c.state(), inv)
    _emit(inv, reply, lambda: render.state(reply.model))


@click.command()
@click.argument("digest", required=False, callback=_check_prefix)
@admin_command
def checks(inv: Invocation, digest: str | None) -> None:
    """Every check, or one (by digest or unique digest prefix) with why it is where it is."""
    if digest is None:
        listing = _run(lambda c: c.checks(), inv)
        now = time.time()
        _emit(inv, listing, lambda: render.checks(listing.model, now=now))
        return
    prefix = digest
    detail = _run(lambda c: c.find_check(prefix), inv)
    now = time.time()
    _emit(inv, detail, lambda: render.check(detail.model, now=now))


@click.command()
@admin_command
def results(inv: Invocation) -> None:
    """Every check's last result; exits 1 when any last result failed."""
    reply = _run(lambda c: c.results(), inv)
    now = time.time()
    _emit(inv, reply, lambda: render.results(reply.model, now=now))
    if render.failing(reply.model):
        raise click.exceptions.Exit(int(ExitCode.CHECK_FAILING))


@click.command()
@click.argument("digest", callback=_check_prefix)
@click.option(
    "--limit",
    type=click.IntRange(1, 5000),
    default=20,
    show_default=True,
    help="How many of the newest runs to show.",
)
@admin_command
def history(inv: Invocation, digest: str, limit: int) -> None:
    """A check's recent runs (by digest or unique digest prefix): uptime over 1 h, 24 h
    and 7 d, duration percentiles, a sparkline and a table, newest first."""

    async def work(client: AdminClient) -> tuple[Reply[wire.HistoryOut], str]:
        found = await client.find_check(digest)
        return await client.history(found.model.digest, limit=limit), found.model.name

    reply, name = _run(work, inv)
    now = time.time()
    _emit(inv, reply, lambda: render.history(reply.model, name=name, now=now))


@click.command()
@click.option("--force", is_flag=True, help="Move checks even when the gain is small.")
@click.option("--dry-run", is_flag=True, help="Show the moves without making them.")
@admin_command
def rebalance(inv: Invocation, force: bool, dry_run: bool) -> None:
    """Spread checks over nodes by load; prints the moves."""

    async def work(client: AdminClient) -> tuple[Reply[wire.RebalanceOut], render.Weights]:
        made = await client.rebalance(force=force, dry_run=dry_run)
        return made, await _weights(client, made.model.moves, inv)

    reply, weights = _run(work, inv)
    _emit(inv, reply, lambda: render.rebalance(reply.model, dry_run=dry_run, weights=weights))


def _node_command(action: str, help_text: str) -> click.Command:
    @click.command(name=action, help=help_text)
    @click.argument("node", callback=_check_node)
    @admin_command
    def command(inv: Invocation, node: str) -> None:
        reply = _run(lambda c: c.node_action(node, action), inv)
        _emit(inv, reply, lambda: render.node(reply.model, action=action))

    return command


cordon = _node_command("cordon", "No new checks go to NODE (its checks stay).")
uncordon = _node_command("uncordon", "Undo cordon (and isolate) on NODE.")
drain = _node_command("drain", "Cordon NODE and move its checks away now.")


@click.command()
@click.argument("digest", callback=_check_prefix)
@admin_command
def isolate(inv: Invocation, digest: str) -> None:
    """Keep one check alone on its node: cordon the node, move every other check off."""

    async def work(client: AdminClient) -> tuple[Reply[wire.IsolateOut], render.Weights]:
        found = await client.find_check(digest)
        made = await client.isolate(found.model.digest)
        return made, await _weights(client, made.model.moves, inv)

    reply, weights = _run(work, inv)
    _emit(inv, reply, lambda: render.isolate(reply.model, weights))


@click.command()
@admin_command
def replicas(inv: Invocation) -> None:
    """Every dispatcher replica known through the shared store, with its health."""
    reply = _run(lambda c: c.replicas(), inv)
    _emit(inv, reply, lambda: render.replicas(reply.model))


@click.command()
@admin_command
def export(inv: Invocation) -> None:
    """Print the whole desired state as JSON: every source's checks (the config
    directory's too, for reference) and the cordoned nodes. ``import`` takes it back:
    ``export > state.json`` is a backup."""
    reply = _run(lambda c: c.export(), inv)
    # Indented, keys in the dispatcher's order: a backup people read and diff. Two
    # exports of the same state differ only in exported_at.
    click.echo(json.dumps(reply.raw, indent=2, ensure_ascii=False))


@click.command(name="import")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--mode",
    type=click.Choice(["replace", "merge"]),
    default="replace",
    show_default=True,
    help="replace: the file's sources become the whole desired state (sources it does not "
    "name are emptied); merge: only the file's sources are replaced, the others kept.",
)
@click.option("--dry-run", is_flag=True, help="Validate and show the counts; change nothing.")
@admin_command
def import_(inv: Invocation, file: BinaryIO, mode: str, dry_run: bool) -> None:
    """Load FILE (an ``export`` document; - for stdin) as the desired state. The whole
    file is validated first: a bad entry changes nothing and is named. Sources fed by
    the dispatcher itself (file:, k8s:) are skipped; cordons apply to registered nodes."""
    document = compact(file.read())

    async def work(client: AdminClient) -> Reply[wire.ImportOut]:
        try:
            return await client.import_document(document, mode=mode, dry_run=dry_run)
        except AdminError as exc:
            if exc.code != "body_too_large":
                raise
            size = len(document) / MIB
            raise type(exc)(
                f"{exc.message} This document is {size:.1f} MiB: split its sources over "
                "several files and import each with --mode merge.",
                code=exc.code,
            ) from exc

    reply = _run(work, inv)
    _emit(inv, reply, lambda: render.imported(reply.model))


def compact(raw: bytes) -> bytes:
    """The document without the indentation ``export`` writes (it halves the size; the
    dispatcher takes at most ``--max-import-bytes``, 16 MiB, in an import), or as it is
    when it is not JSON: the
    dispatcher then says what is wrong, and where."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


COMMANDS: tuple[click.Command, ...] = (
    state,
    checks,
    history,
    results,
    rebalance,
    cordon,
    uncordon,
    drain,
    isolate,
    replicas,
    export,
    import_,
)
