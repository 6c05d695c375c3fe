"""Text views of the dispatcher's replies: pure functions from wire models to text.

Colour and bold come as ANSI codes through ``click.style``; the caller's ``click.echo``
drops them when stdout is not a terminal (or ``NO_COLOR`` is set). Tables are aligned
on the visible width, so they line up with and without the codes. Times that are not
ages already (``last_run_at``) are turned into ages against ``now`` (Unix seconds),
which the caller passes in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import click
from tabulate import tabulate

from dispatcher import wire
from dispatcher.admin.client import short
from dispatcher.admin.errors import one_line

ERROR_WIDTH = 60
"""The first error of a check is cut to this many characters in tables."""

_COLOURS = {
    "ok": "green",
    "healthy": "green",
    "FAIL": "red",
    "unhealthy": "red",
    "degraded": "yellow",
    "unspecified": "yellow",
}


def status(word: str) -> str:
    """A status word in its colour: ok/healthy green, FAIL/unhealthy red, degraded yellow."""
    colour = _COLOURS.get(word)
    return click.style(word, fg=colour) if colour else word


def warn(text: str) -> str:
    return click.style(text, fg="yellow")


def bold(text: str) -> str:
    return click.style(text, bold=True)


def duration(seconds: float) -> str:
    """A short human duration: ``2.1s``, ``3m04s``, ``5h07m``, ``2d03h``."""
    s = max(0.0, seconds)
    if s < 59.95:  # what would print as "60.0s" is a minute
        return f"{s:.1f}s"
    whole = max(60, int(s))
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def interval(seconds: float) -> str:
    """A configured period: ``15s``, ``2.5s``, ``5m00s``."""
    return f"{seconds:g}s" if seconds < 60 else duration(seconds)


def labels(values: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(values.items())) or "-"


def yes_no(value: bool, *, warn_if: bool = True) -> str:
    word = "yes" if value else "no"
    return warn(word) if value == warn_if else word


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[int] = ()
) -> str:
    """An aligned plain table with bold headers; ``right`` lists right-aligned columns."""
    right_set = set(right)
    align = ["right" if i in right_set else "left" for i in range(len(headers))]
    # Headers go in as the first row: tabulate would pad a ``headers=`` row by two more.
    return tabulate(
        [[bold(h) for h in headers], *([str(cell) for cell in row] for row in rows)],
        tablefmt="plain",
        colalign=align,
        disable_numparse=True,
    )


# ------------------------------------------------------------------------- state


def state(reply: wire.StateOut) -> str:
    totals = reply.totals
    leader = reply.leader if reply.leader is not None else warn("none")
    summary = (
        f"leader: {leader}   epoch: {reply.epoch}   "
        f"warmup: {yes_no(reply.warmup)}   nodes: {totals.nodes}   "
        f"checks: {totals.checks} ({totals.dispatched} dispatched, "
        f"{_dangling_count(totals.dangling)})"
    )
    parts = [summary, "", nodes(reply.nodes) if reply.nodes else "no nodes", ""]
    if reply.dangling:
        parts.append(warn(f"dangling checks ({len(reply.dangling)}):"))
        parts.extend(f"  {short(d)}" for d in reply.dangling)
    else:
        parts.append("dangling checks: none")
    return "\n".join(parts)


def _dangling_count(count: int) -> str:
    text = f"{count} dangling"
    return warn(text) if count else text


def nodes(items: Sequence[wire.NodeOut]) -> str:
    return table(
        ["NODE", "CHECKS", "BUSYNESS", "CAPACITY", "HEARTBEAT", "CORDONED", "LABELS"],
        (
            [
                n.name,
                len(n.configs),
                f"{n.busyness:.2f}",
                n.capacity,
                duration(n.heartbeat_age_s),
                yes_no(n.cordoned),
                labels(n.labels),
            ]
            for n in items
        ),
        right=(1, 2, 3, 4),
    )


# ------------------------------------------------------------------------ checks


def _last_result(last: wire.LastResultOut | None, *, now: float) -> str:
    if last is None:
        return "-"
    ago = duration(now - last.started_at - last.duration_s)
    return f"{status('ok' if last.ok else 'FAIL')} {ago} ago"


def _node(node: str | None) -> str:
    return node if node is not None else warn("- (dangling)")


def checks(reply: wire.ChecksOut, *, now: float) -> str:
    if not reply.checks:
        return "no checks"
    ordered = sorted(reply.checks, key=lambda c: (c.name, c.digest))
    return table(
        ["DIGEST", "NAME", "NODE", "SOURCES", "INTERVAL", "LAST RESULT"],
        (
            [
                short(c.digest),
                c.name,
                _node(c.node),
                ",".join(c.sources) or "-",
                interval(c.interval_s),
                _last_result(c.last_result, now=now),
            ]
            for c in ordered
        ),
        right=(4,),
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), sort_keys=True)


def check(reply: wire.CheckDetailOut, *, now: float) -> str:
    rows: list[tuple[str, str]] = [
        ("digest", reply.digest),
        ("name", reply.name),
        ("node", _node(reply.node)),
        ("sources", ", ".join(reply.sources) or "-"),
        ("interval", interval(reply.interval_s)),
        ("timeout", interval(reply.timeout_s)),
        ("weight", f"{reply.weight:g}"),
        ("node selector", labels(reply.node_selector)),
        ("instances", _compact(reply.instances)),
        ("init config", _compact(reply.init_config)),
    ]
    last = reply.last_result
    if last is None:
        rows.append(("last result", "none yet"))
    else:
        rows.append(
            (
                "last result",
                f"{_last_result(last, now=now)} on {last.node}, took {duration(last.duration_s)}",
            )
        )
        rows.extend(("error", one_line(e)) for e in last.errors)
        if last.output.strip():
            rows.append(("output", one_line(last.output, 200)))
    rows.append(("explain", reply.explain or "-"))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{bold(key.ljust(width))}  {value}" for key, value in rows)


# ----------------------------------------------------------------------- results


RESULT_HEADERS = (
    "DIGEST",
    "NAME",
    "NODE",
    "STATUS",
    "CONSEC FAILS",
    "OK/FAIL",
    "LAST RUN",
    "ERROR",
)


def failing(page: wire.ResultsPageOut) -> bool:
    """Whether any check's last result failed (``results`` exits 1 then)."""
    return not page.ok or any(not c.ok for c in page.checks.values())


def results(page: wire.ResultsPageOut, *, now: float) -> str:
    items = sorted(page.checks.items(), key=lambda kv: (kv[1].ok, kv[1].name, kv[0]))
    bad = sum(1 for _, c in items if not c.ok)
    parts = []
    if items:
        parts.append(
            table(
                RESULT_HEADERS,
                (
                    [
                        short(digest),
                        c.name,
                        c.node,
                        status("ok" if c.ok else "FAIL"),
                        c.consecutive_failures,
                        f"{c.success_count}/{c.failure_count}",
                        f"{duration(now - c.last_run_at)} ago",
                        one_line(c.errors[0], ERROR_WIDTH) if c.errors else "-",
                    ]
                    for digest, c in items
                ),
                right=(4, 5, 6),
            )
        )
    else:
        parts.append("no results yet")
    if failing(page):
        parts.append(f"overall: {status('FAIL')}: {bad} of {len(items)} checks failing")
    else:
        parts.append(f"overall: {status('ok')}: {len(items)} checks")
    return "\n".join(parts)


HISTORY_HEADERS = ("STARTED", "NODE", "RESULT", "DURATION", "RUN", "ERROR")
SPARK = "▁▂▃▄▅▆▇█"
"""Duration levels, shortest to longest, of a run that succeeded."""
SPARK_FAILED = "x"
"""A failed run in the sparkline: a letter, so it reads without colour too."""


def sparkline(results: Sequence[wire.HistoryResultOut]) -> str:
    """One character per run, oldest first: its duration as a bar scaled between the
    shortest and the longest ok run shown (a failure, often a timeout, would flatten
    the others), or ``x`` when it failed."""
    ordered = list(reversed(results))  # the reply is newest first
    durations = [r.duration_s for r in ordered if r.ok] or [0.0]
    low, high = min(durations), max(durations)
    span = high - low
    chars = []
    for r in ordered:
        if not r.ok:
            chars.append(click.style(SPARK_FAILED, fg="red"))
            continue
        level = 0 if span <= 0 else round((r.duration_s - low) / span * (len(SPARK) - 1))
        chars.append(SPARK[level])
    return "".join(chars)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def history(reply: wire.HistoryOut, *, name: str, now: float) -> str:
    """A check's recent runs: uptime and percentiles, a sparkline, then a table of
    runs, newest first."""
    uptime = "  ".join(
        f"{window} {_share(reply.uptime.get(window))}" for window in ("1h", "24h", "7d")
    )
    p = reply.duration_s
    parts = [
        f"{bold(name)} {short(reply.digest)}",
        f"uptime:   {uptime}",
        f"duration: p50 {_seconds(p.p50)}  p95 {_seconds(p.p95)}  p99 {_seconds(p.p99)}",
    ]
    if not reply.results:
        parts.append("no results yet")
        return "\n".join(parts)
    parts.append(f"runs:     {sparkline(reply.results)}  (oldest to newest, x failed)")
    parts.append(
        table(
            HISTORY_HEADERS,
            (
                [
                    f"{duration(now - r.started_at)} ago",
                    r.node,
                    status("ok" if r.ok else "FAIL"),
                    f"{r.duration_s:.3f}s",
                    r.run_id,
                    one_line(r.errors[0], ERROR_WIDTH) if r.errors else "-",
                ]
                for r in reply.results
            ),
            right=(0, 3),
        )
    )
    return "\n".join(parts)


# -------------------------------------------------------------------- steering


@dataclass(frozen=True, slots=True)
class Weights:
    """The configured weights of the checks (digest -> weight), which a move reply does
    not carry: the command reads them from the checks list. ``problem`` says why they
    are missing when that read failed (the move itself was made)."""

    by_digest: Mapping[str, float] = field(default_factory=dict)
    problem: str | None = None


MOVES_LEGEND = (
    "WEIGHT: the check's configured weight; COST: its measured load when it moved "
    "(weight x mean until measured)"
)
LOADS_LEGEND = "; LOAD: the node's load / capacity, before->after"


def moves(items: Sequence[wire.MoveOut], weights: Weights | None = None) -> str:
    """The moves with each check's configured WEIGHT and measured COST apart (the
    reply's ``weight`` field is the cost), and the nodes' loads around rebalance moves."""
    if not items:
        return "no moves"
    known = weights or Weights()

    def weight(digest: str) -> str:
        value = known.by_digest.get(digest)
        return f"{value:g}" if value is not None else "-"

    if all(m.source_load_before is not None for m in items):
        text = table(
            ["DIGEST", "CHECK", "WEIGHT", "COST", "FROM", "LOAD", "TO", "LOAD"],
            ([short(m.digest), m.check_name, weight(m.digest), f"{m.weight:.3g}",
              m.source_node, f"{m.source_load_before:.3g}->{m.source_load_after:.3g}",
              m.dest_node, f"{m.dest_load_before:.3g}->{m.dest_load_after:.3g}"]
             for m in items),
            right=(2, 3),
        )  # fmt: skip
        legend = MOVES_LEGEND + LOADS_LEGEND
    else:
        text = table(
            ["DIGEST", "CHECK", "WEIGHT", "COST", "FROM", "TO"],
            ([short(m.digest), m.check_name, weight(m.digest), f"{m.weight:.3g}",
              m.source_node, m.dest_node]
             for m in items),
            right=(2, 3),
        )  # fmt: skip
        legend = MOVES_LEGEND
    parts = [text, legend]
    if known.problem is not None:
        parts.append(warn(f"weights not shown: {known.problem}"))
    return "\n".join(parts)


_OUTCOMES = {
    "nothing_to_move": "nothing to move: every node is within the margin, or no movable "
    "check fits elsewhere",
    "gain_too_small": "not applied: the gain is below the minimum (--force applies it)",
    "warming_up": "not applied: the leader is warming up",
}


def rebalance(reply: wire.RebalanceOut, *, dry_run: bool, weights: Weights | None = None) -> str:
    if dry_run:
        lead = f"dry run: {len(reply.moves)} moves planned, none applied"
    elif reply.applied:
        lead = f"rebalanced: {len(reply.moves)} moves applied"
    elif reply.outcome in _OUTCOMES:
        lead = f"{_OUTCOMES[reply.outcome]} ({len(reply.moves)} moves planned)"
    else:
        lead = f"not applied ({len(reply.moves)} moves)"
    if reply.spread_before is not None and reply.spread_after is not None:
        lead += (
            f"\nspread (busiest node above the mean): {reply.spread_before:.1%} -> "
            f"{reply.spread_after:.1%}"
        )
    return f"{lead}\n{moves(reply.moves, weights)}"


_DONE = {"cordon": "cordoned", "uncordon": "uncordoned", "drain": "drained"}


def node(reply: wire.NodeOut, *, action: str) -> str:
    return f"node {reply.name} {_DONE.get(action, action)}\n{nodes([reply])}"


def isolate(reply: wire.IsolateOut, weights: Weights | None = None) -> str:
    lead = (
        f"check {short(reply.digest)} isolated on node {reply.node}, now cordoned "
        f"(uncordon {reply.node} undoes it); {len(reply.moves)} other checks moved"
    )
    return f"{lead}\n{moves(reply.moves, weights)}"


# ---------------------------------------------------------------------- replicas


def replicas(reply: wire.ReplicasOut) -> str:
    if not reply.replicas:
        return "no replicas reported"
    return table(
        ["IDENTITY", "ROLE", "URL", "STATUS", "READY", "EPOCH", "REPORTED"],
        (
            [
                r.identity,
                bold(r.role) if r.role == "leader" else r.role,
                r.url or "-",
                status(r.status),
                yes_no(r.ready, warn_if=False),
                r.epoch,
                f"{duration(r.age_s)} ago",
            ]
            for r in reply.replicas
        ),
        right=(5, 6),
    )


# ------------------------------------------------------------ export and import


def imported(reply: wire.ImportOut) -> str:
    """An import's counts per source (against each source's own set, as a PUT counts),
    what was skipped and why, and the cordons."""
    items = sorted(reply.sources.items())
    totals = (
        f"{sum(c.added for _, c in items)} added, {sum(c.removed for _, c in items)} removed, "
        f"{sum(c.unchanged for _, c in items)} unchanged"
    )
    if reply.dry_run:
        lead = f"dry run ({reply.mode}), nothing changed: would write {len(items)} sources"
    else:
        lead = f"imported ({reply.mode}): {len(items)} sources written"
    parts = [f"{lead} ({totals}, counted per source)" if items else f"{lead}"]
    if items:
        parts.append(
            table(
                ["SOURCE", "ADDED", "REMOVED", "UNCHANGED"],
                ([source, c.added, c.removed, c.unchanged] for source, c in items),
                right=(1, 2, 3),
            )
        )
    if reply.skipped_sources:
        parts.append(
            "skipped, fed by the dispatcher itself (its config directory or Kubernetes "
            f"objects are their truth): {', '.join(reply.skipped_sources)}"
        )
    if reply.cordoned:
        verb = "would cordon" if reply.dry_run else "cordoned"
        parts.append(f"{verb}: {', '.join(reply.cordoned)}")
    if reply.skipped_cordons:
        parts.append(
            warn(
                f"not cordoned, not registered here: {', '.join(reply.skipped_cordons)} "
                "(cordon them once their agents have registered)"
            )
        )
    return "\n".join(parts)
