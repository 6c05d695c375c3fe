"""Writes to sources, planned before anything changes.

A write (a source's whole set replaced, or configs added to it) is worked out first,
from what each source holds and the per-source limit alone: the counts it will report
(``SourceChange``) and its work, as pieces that say what a source holds or lets go of
(``Hold``, ``Release``). ``ClusterState.apply_work`` then does the work, whole or in
slices with other steps in between (the engine slices a PUT of 100,000 checks): every
piece says what to hold or let go of, not what to change, so a slice applied after
another writer's step still does the right thing.

Planning is where the per-source limit is checked: a write that would make a source
hold more checks than it may raises TooManyChecks before any work exists.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass

from dispatcher.core.model import CheckConfig, Digest, SourceName
from dispatcher.core.outcomes import SourceChange
from dispatcher.errors import TooManyChecks


@dataclass(frozen=True, slots=True)
class Hold:
    """``source`` holds these configs from now on (a new weight applies; a new check
    is placed)."""

    source: SourceName
    configs: Sequence[CheckConfig]

    def __len__(self) -> int:
        return len(self.configs)


@dataclass(frozen=True, slots=True)
class Release:
    """``source`` lets go of these checks (a check no source holds any more goes)."""

    source: SourceName
    digests: Sequence[Digest]

    def __len__(self) -> int:
        return len(self.digests)


SourceWork = Hold | Release


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """A write to sources worked out before anything changes: what it will report, and
    the work in the order it must be done (``plan_replace``, ``plan_add``).

    The work can be done in one step or in slices (``slices``) with other steps in
    between: every piece says what to hold or let go of, not what to change, so a slice
    applied after another writer's step still does the right thing."""

    changes: dict[SourceName, SourceChange]
    work: list[SourceWork]

    @property
    def size(self) -> int:
        """How many checks the work touches."""
        return sum(len(piece) for piece in self.work)

    def slices(self, size: int) -> Iterator[list[SourceWork]]:
        """The work in order, in slices that touch at most ``size`` checks each."""
        current: list[SourceWork] = []
        room = size
        for piece in self.work:
            start = 0
            while start < len(piece):
                take = min(room, len(piece) - start)
                current.append(_part(piece, start, start + take))
                start += take
                room -= take
                if room == 0:
                    yield current
                    current, room = [], size
        if current:
            yield current


def plan_replace(
    sets: Mapping[SourceName, Sequence[CheckConfig]],
    *,
    held: Mapping[SourceName, Set[Digest]],
    max_checks_per_source: int | None,
) -> SourcePlan:
    """What making each set the whole of its source's will do, given what each source
    ``held`` so far (``ClusterState.held_by_source``).

    Raises TooManyChecks when a set holds more checks than a source may. The work
    first lets go of the checks no source of ``sets`` gains, then holds every config
    (a new weight applies; new checks are placed), then lets go of the rest: a check
    that moves from one source to another (a renamed file) is held by its new source
    before its old one lets go, so it is never dropped and re-added and keeps its
    node, stats and results.
    """
    changes: dict[SourceName, SourceChange] = {}
    holds: list[SourceWork] = []
    removed_by_source: dict[SourceName, list[Digest]] = {}
    gained: set[Digest] = set()
    for source, configs in sets.items():
        wanted = {c.digest: c for c in configs}
        _refuse_beyond_limit(source, len(wanted), adding=None, limit=max_checks_per_source)
        had = held.get(source, frozenset())
        added = [d for d in wanted if d not in had]
        removed = sorted(set(had).difference(wanted))
        gained.update(added)
        removed_by_source[source] = removed
        if wanted:
            # Every config: a held one may come with a new weight. Holding what is
            # held costs little, and it is done in the work (sliced), not here.
            holds.append(Hold(source, list(wanted.values())))
        changes[source] = SourceChange(
            digests=[c.digest for c in configs],
            added=len(added),
            removed=len(removed),
            unchanged=len(wanted) - len(added),
        )
    first: list[SourceWork] = []
    last: list[SourceWork] = []
    for source, removed in removed_by_source.items():
        moving = gained.intersection(removed)  # to another source of ``sets``
        early = [d for d in removed if d not in moving] if moving else removed
        late = [d for d in removed if d in moving] if moving else []
        if early:
            first.append(Release(source, early))
        if late:
            last.append(Release(source, late))
    return SourcePlan(changes, [*first, *holds, *last])


def plan_add(
    source: SourceName,
    configs: Sequence[CheckConfig],
    *,
    held: Mapping[SourceName, Set[Digest]],
    max_checks_per_source: int | None,
) -> SourcePlan:
    """What adding ``configs`` to ``source`` will do, given what each source ``held``.
    Raises TooManyChecks when the source would then hold more checks than it may."""
    had = held.get(source, frozenset())
    wanted = {c.digest: c for c in configs}
    added = sum(1 for d in wanted if d not in had)
    _refuse_beyond_limit(source, len(had) + added, adding=added, limit=max_checks_per_source)
    change = SourceChange(
        digests=[c.digest for c in configs],
        added=added,
        removed=0,
        unchanged=len(wanted) - added,
    )
    return SourcePlan({source: change}, [Hold(source, list(wanted.values()))] if wanted else [])


def check_set_size(
    source: SourceName, configs: Sequence[CheckConfig], *, max_checks_per_source: int | None
) -> None:
    """Raises TooManyChecks when ``configs`` hold more distinct checks than one source
    may: what ``plan_replace`` refuses, for a source that checks each set on its own
    before handing several to one write (a config file, a Kubernetes object)."""
    size = len({c.digest for c in configs})
    _refuse_beyond_limit(source, size, adding=None, limit=max_checks_per_source)


def _refuse_beyond_limit(
    source: SourceName, size: int, *, adding: int | None, limit: int | None
) -> None:
    if limit is None or size <= limit:
        return
    what = (
        f"this set has {size:,} distinct checks"
        if adding is None
        else f"it holds {size - adding:,} checks and this request adds {adding:,} new ones"
    )
    raise TooManyChecks(
        f"Source {source[:80]!r} may hold at most {limit:,} checks "
        f"(max_checks_per_source); {what}. Nothing was changed.",
        details={"source": source, "checks": size, "limit": limit},
    )


def _part(piece: SourceWork, start: int, end: int) -> SourceWork:
    if start == 0 and end == len(piece):
        return piece
    if isinstance(piece, Hold):
        return Hold(piece.source, piece.configs[start:end])
    return Release(piece.source, piece.digests[start:end])
