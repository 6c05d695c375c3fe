"""Each check's recent accepted results: the history behind ``GET .../checks/{digest}/history``.

Pure and synchronous like the rest of the core: the caller passes the wall time in
(``now_wall``, Unix seconds) and nothing here reads a clock.

A check's history is bounded twice (``HistoryLimits``): by count (the oldest result goes
when one more arrives) and by age (results that ran more than ``max_age_s`` ago go when
the check records or is read). Results are ordered by when they ran as far as the
dispatcher can vouch for it, the same as ``ResultBook``: ``started_at`` capped at the wall
time the result arrived, so a result dated in the future cannot stay "newest" forever.

Uptime over a window is the share of ok runs among the runs in it (``None`` without a
run): a running count of ok results kept beside each entry makes it two bisections, as
``GET /checks`` asks for it for every check.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, cast

from dispatcher.core.model import CheckResult, Digest, NodeName

HOUR_S = 3600.0
DAY_S = 24 * HOUR_S
UPTIME_WINDOWS_S: Mapping[str, float] = {"1h": HOUR_S, "24h": DAY_S, "7d": 7 * DAY_S}
LIMIT_DEFAULT = 500
LIMIT_MAX = 5000


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """How much history each check keeps (the settings ``history_max_results`` and
    ``history_max_age_s``), and how much of each result's errors."""

    max_results: int = 2000
    """0 keeps no history at all: nothing is kept, so nothing goes to a store either."""
    max_total: int | None = None
    """Results kept for all checks together (None: no overall bound). Each check keeps
    an equal share, ``max_total`` over the checks that have history, at most
    ``max_results`` and at least one (``CheckHistory.per_check``)."""
    max_age_s: float = 7 * DAY_S
    max_errors: int = 5
    """Errors kept per result: the first ones say what went wrong, the rest repeat it."""
    max_error_chars: int = 500

    def validate(self) -> None:
        if self.max_results < 0:
            raise ValueError("history max_results must be 0 (no history) or more")
        if self.max_total is not None and self.max_total < 1:
            raise ValueError("history max_total must be at least 1")
        if not (self.max_age_s > 0 and math.isfinite(self.max_age_s)):
            raise ValueError("history max_age_s must be a positive number of seconds")
        if self.max_errors < 0 or self.max_error_chars < 1:
            raise ValueError("history error bounds must be positive")


class HistoryEntry(NamedTuple):
    """One accepted run of one check, as the history keeps it.

    A named tuple, not a frozen dataclass: one is made for every accepted result, and a
    frozen dataclass's ``__init__`` (a ``object.__setattr__`` per field) cost about as
    much as all the rest of keeping it (the history benchmark)."""

    run_id: str
    node: NodeName
    ok: bool
    errors: tuple[str, ...]
    started_at: float
    duration_s: float
    ordered_at: float
    """``started_at`` capped at the wall time the result arrived (the sort key)."""


Kept = tuple[str, NodeName, bool, tuple[str, ...], float, float, float]
"""A ``HistoryEntry``'s fields as the history keeps them: a plain tuple. The garbage
collector stops tracking a plain tuple of plain values in the first collection it
survives (one holding its errors, once they are let go), never a named tuple (a tuple
subclass). Kept results are the most numerous long-lived objects of a big state
(500,000 at 100,000 checks, by the default overall bound), and at 10,000 results a
second each middle-generation collection walked every one recorded since the last: up
to a third of all it walked at 10,000 agents (the fleet benchmark)."""
_OK: Final = 2  # Final: mypy then knows each field's type
_DURATION: Final = 5
_ORDERED_AT: Final = 6


def _entry(kept: Kept) -> HistoryEntry:
    return HistoryEntry(*kept)


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float | None
    p95: float | None
    p99: float | None


class _Series:
    """One check's entries (``Kept``), oldest first, with the ok count before each one."""

    __slots__ = ("entries", "keys", "ok_before")

    def __init__(self) -> None:
        self.entries: list[Kept] = []
        self.keys: list[float] = []
        # ok_before[i]: ok results among the entries ever inserted before entry i. Only
        # differences are read, so dropping old entries leaves the others right.
        self.ok_before: list[int] = []

    def insert(self, entry: HistoryEntry | Kept) -> None:
        kept = cast("Kept", tuple(entry))  # the same object when it is one already
        ordered_at = kept[_ORDERED_AT]
        keys = self.keys
        if not keys or ordered_at >= keys[-1]:
            # The usual case (agents send in order): appended, nothing after it to shift.
            if keys:
                self.ok_before.append(self.ok_before[-1] + self.entries[-1][_OK])
            else:
                self.ok_before.append(0)
            self.entries.append(kept)
            keys.append(ordered_at)
            return
        # bisect_right: a result with the same key as others goes after them (arrival order).
        at = bisect.bisect_right(keys, ordered_at)
        if at:
            before = self.ok_before[at - 1] + self.entries[at - 1][_OK]
        else:
            before = self.ok_before[0] if self.ok_before else 0
        self.entries.insert(at, kept)
        self.keys.insert(at, ordered_at)
        self.ok_before.insert(at, before)
        if kept[_OK]:
            # A late result (rare: agents send in order) shifts the counts after it.
            for i in range(at + 1, len(self.ok_before)):
                self.ok_before[i] += 1

    def drop_oldest(self, count: int) -> None:
        if count > 0:
            del self.entries[:count]
            del self.keys[:count]
            del self.ok_before[:count]

    def drop_before(self, cutoff: float) -> None:
        self.drop_oldest(bisect.bisect_left(self.keys, cutoff))

    def ok_from(self, at: int) -> tuple[int, int]:
        """(runs, ok runs) among the entries from index ``at`` on."""
        runs = len(self.entries) - at
        if runs <= 0:
            return 0, 0
        total = self.ok_before[-1] + self.entries[-1][_OK]
        return runs, total - self.ok_before[at]


class LoadedHistory:
    """What a store kept of each check's history, put in order away from the state
    (``CheckHistory.prepare``: pure, so it may run in a worker thread) and then handed
    to the state in slices (``CheckHistory.install``)."""

    __slots__ = ("_series",)

    def __init__(self, series: list[tuple[Digest, _Series]]) -> None:
        self._series = series

    def __len__(self) -> int:
        """Checks with a kept result."""
        return len(self._series)

    def results(self) -> int:
        """Results kept, all checks together."""
        return sum(len(series.entries) for _, series in self._series)

    def slices(self, size: int) -> list[list[tuple[Digest, _Series]]]:
        return [self._series[i : i + size] for i in range(0, len(self._series), size)]


class CheckHistory:
    """Every check's bounded history; the state forgets a check's when it goes."""

    __slots__ = ("_forgotten", "_limits", "_pending", "_series", "_swept_share")

    def __init__(self, limits: HistoryLimits | None = None, *, track: bool = False) -> None:
        """``track``: keep the entries recorded since the last ``take_pending`` for a
        store to write (a state no store follows keeps none, so nothing grows)."""
        self._limits = limits or HistoryLimits()
        self._limits.validate()
        self._series: dict[Digest, _Series] = {}
        self._pending: dict[Digest, list[HistoryEntry]] | None = {} if track else None
        self._swept_share = self._limits.max_results
        """The share every check was last trimmed to (``_sweep``)."""
        self._forgotten: set[Digest] | None = None
        """While a store's history is being loaded after the term began: the checks
        forgotten since (deleted), whose stored history must not come back."""

    def take_pending(self) -> dict[Digest, list[HistoryEntry]]:
        """The entries recorded since the last call, per check, oldest recorded first."""
        if not self._pending:
            return {}
        pending, self._pending = self._pending, {}
        return pending

    def load(self, digest: Digest, entries: Sequence[HistoryEntry]) -> None:
        """Puts back what a store kept (no age check: the store has no clock; reads
        drop what is too old). Not pending: the store holds it already."""
        if not self._limits.max_results:
            return  # history off: what a store kept from an earlier run is not shown
        series = self._series.get(digest)
        if series is None:
            series = self._series[digest] = _Series()
        for entry in entries:
            series.insert(entry)
        series.drop_oldest(len(series.entries) - self.per_check())

    def expect_load(self) -> None:
        """A store's history will be installed later (``install``): from now on, the
        checks forgotten are remembered until ``loaded``, so that a check deleted (and
        perhaps added again) meanwhile does not get its old history back."""
        self._forgotten = set()

    @property
    def loading(self) -> bool:
        """Whether a store's history is still to be installed (``expect_load``)."""
        return self._forgotten is not None

    @staticmethod
    def prepare(stored: Mapping[Digest, Sequence[HistoryEntry]]) -> LoadedHistory:
        """Each check's stored entries put in order (pure: no state is read or changed,
        so a worker thread may do it while the state serves)."""
        prepared: list[tuple[Digest, _Series]] = []
        for digest, entries in stored.items():
            if entries:
                series = _Series()
                for entry in entries:
                    series.insert(entry)
                prepared.append((digest, series))
        return LoadedHistory(prepared)

    def install(self, part: Sequence[tuple[Digest, _Series]], *, held: Container[Digest]) -> int:
        """Adds a slice of a prepared load (``LoadedHistory.slices``) to what this
        history holds: only for checks still ``held`` and not forgotten since
        ``expect_load``; entries recorded meanwhile stay, and an entry the store already
        had when it was read (written by this term) is not added twice. Not pending:
        the store holds it. Each check is then trimmed to its share. Returns the checks
        given a stored history."""
        if not self._limits.max_results:
            return 0  # history off: what a store kept from an earlier run is not shown
        forgotten = self._forgotten or set()
        installed = 0
        for digest, loaded in part:
            if digest not in held or digest in forgotten:
                continue
            series = self._series.get(digest)
            if series is None:
                self._series[digest] = loaded
            else:
                present = set(series.entries)
                for entry in loaded.entries:
                    if entry not in present:
                        series.insert(entry)
            installed += 1
        bound = self.per_check()
        for digest, _ in part:
            series = self._series.get(digest)
            if series is not None:
                series.drop_oldest(len(series.entries) - bound)
        return installed

    def loaded(self) -> None:
        """The store's history is all installed: checks forgotten from now on are just
        forgotten. Every check is trimmed to the share the loaded ones brought."""
        self._forgotten = None
        self._sweep(self.per_check())

    def snapshot(self) -> dict[Digest, list[HistoryEntry]]:
        """Every kept entry per check, oldest first (a store's whole rewrite)."""
        return {
            digest: [_entry(kept) for kept in s.entries]
            for digest, s in self._series.items()
            if s.entries
        }

    @property
    def limits(self) -> HistoryLimits:
        return self._limits

    def set_limits(self, limits: HistoryLimits) -> None:
        """New bounds (a state loaded from a store takes the settings'); a lowered count
        bound drops the oldest results at once, a lowered age bound when next read."""
        limits.validate()
        self._limits = limits
        if not limits.max_results:
            # History turned off: none kept, and none left for a store to write.
            self._series.clear()
            if self._pending is not None:
                self._pending.clear()
            return
        self._sweep(self.per_check())

    def per_check(self) -> int:
        """How many results each check keeps now: ``max_results``, or less when the
        overall bound shares ``max_total`` among more checks. A check holding more than
        its share gives the excess up when it next records; every check is trimmed at
        once when the share falls by a tenth (``_sweep``), so a check that records no
        more (dangling, or on a node gone) cannot keep a larger, older share: the whole
        stays within ``max_total / 0.9`` (and one result per check)."""
        limits = self._limits
        if limits.max_total is None:
            return limits.max_results
        share = limits.max_total // max(1, len(self._series))
        return max(1, min(limits.max_results, share))

    def _sweep(self, bound: int) -> None:
        """Trims every check to ``bound`` results (the share fell: checks came)."""
        if bound < self._swept_share:
            for series in self._series.values():
                series.drop_oldest(len(series.entries) - bound)
        self._swept_share = bound

    def __contains__(self, digest: object) -> bool:
        return digest in self._series

    def __len__(self) -> int:
        """How many results are kept, all checks together."""
        return sum(len(series.entries) for series in self._series.values())

    def digests(self) -> list[Digest]:
        return list(self._series)

    def entry_for(self, node: NodeName, result: CheckResult, *, now_wall: float) -> HistoryEntry:
        """The entry ``result`` becomes, its errors cut to the limits."""
        limits = self._limits
        errors = (
            tuple(error[: limits.max_error_chars] for error in result.errors[: limits.max_errors])
            if result.errors
            else ()
        )
        started_at = result.started_at
        # Positional: a named tuple made from keywords costs twice as much.
        return HistoryEntry(
            result.run_id,
            node,
            result.ok,
            errors,
            started_at,
            result.duration_s,
            started_at if started_at < now_wall else now_wall,
        )

    def record(
        self, node: NodeName, result: CheckResult, *, now_wall: float
    ) -> HistoryEntry | None:
        """Keeps an accepted result; returns the entry kept (for a store to write), or
        None with the history off."""
        if not self._limits.max_results:
            return None  # history off: not even the entry is made
        entry = self.entry_for(node, result, now_wall=now_wall)
        self.add(result.digest, entry, now_wall=now_wall)
        return entry

    def add(self, digest: Digest, entry: HistoryEntry, *, now_wall: float) -> None:
        """Keeps ``entry`` (also how a store's saved history is loaded back)."""
        if not self._limits.max_results:
            # History off: returning before anything is kept also leaves nothing pending,
            # so a results post gives the store writer no work at all.
            return
        limits = self._limits
        cutoff = now_wall - limits.max_age_s
        if entry.ordered_at < cutoff:
            return  # already too old to keep: it would go at once
        series = self._series.get(digest)
        if series is None:
            series = self._series[digest] = _Series()
        series.insert(entry)
        # The bounds, checked inline: this runs for every accepted result.
        if series.keys[0] < cutoff:
            series.drop_before(cutoff)
        bound = limits.max_results
        if limits.max_total is not None:
            bound = max(1, min(bound, limits.max_total // len(self._series)))
            if bound * 10 < self._swept_share * 9 or bound > self._swept_share:
                self._sweep(bound)  # amortised: the share must fall by a tenth each time
        excess = len(series.entries) - bound
        if excess > 0:
            series.drop_oldest(excess)
        if self._pending is not None:
            self._pending.setdefault(digest, []).append(entry)

    def forget(self, digest: Digest) -> None:
        self._series.pop(digest, None)
        if self._forgotten is not None:
            self._forgotten.add(digest)
        if self._pending is not None:
            # Not written at all: the store drops the check's history with its config.
            self._pending.pop(digest, None)

    def results(
        self,
        digest: Digest,
        *,
        now_wall: float,
        since: float | None = None,
        limit: int = LIMIT_DEFAULT,
    ) -> list[HistoryEntry]:
        """The check's kept results, newest first: those that ran at or after ``since``
        (all kept without it), at most ``limit``."""
        if not 1 <= limit <= LIMIT_MAX:
            raise ValueError(f"limit must be between 1 and {LIMIT_MAX}")
        series = self._fresh(digest, now_wall)
        if series is None:
            return []
        start = 0 if since is None else bisect.bisect_left(series.keys, since)
        start = max(start, len(series.entries) - limit)
        return [_entry(kept) for kept in reversed(series.entries[start:])]

    def uptime(self, digest: Digest, window_s: float, *, now_wall: float) -> float | None:
        """Share of ok runs among those that ran in the last ``window_s``; None without one."""
        series = self._fresh(digest, now_wall)
        if series is None:
            return None
        # A run exactly window_s ago is in the window; one dated after now_wall cannot be
        # (ordered_at is capped at arrival, and arrival is never after now).
        runs, ok = series.ok_from(bisect.bisect_left(series.keys, now_wall - window_s))
        return ok / runs if runs else None

    def uptimes(self, digest: Digest, *, now_wall: float) -> dict[str, float | None]:
        return {
            name: self.uptime(digest, window_s, now_wall=now_wall)
            for name, window_s in UPTIME_WINDOWS_S.items()
        }

    def duration_percentiles(self, digest: Digest, *, now_wall: float) -> Percentiles:
        """p50/p95/p99 of the kept runs' durations (nearest rank); None without a run."""
        series = self._fresh(digest, now_wall)
        durations = sorted(kept[_DURATION] for kept in series.entries) if series else []
        return Percentiles(
            p50=percentile(durations, 50),
            p95=percentile(durations, 95),
            p99=percentile(durations, 99),
        )

    def _fresh(self, digest: Digest, now_wall: float) -> _Series | None:
        series = self._series.get(digest)
        if series is not None:
            series.drop_before(now_wall - self._limits.max_age_s)
        return series


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of ascending ``ordered`` (None when empty): the smallest
    value with at least ``p`` % of the values at or below it, always an observed one."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
