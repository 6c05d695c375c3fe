"""Which sources hold which checks, indexed both ways.

A check is held while at least one source holds it: two sources may hold the same check
(the same digest), and it stays, with its node, stats and results, until the last one
lets go. This index only keeps the two directions in step; what a check's arrival or
departure means (placing it, dropping it) is the state's.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from dispatcher.core.model import Digest, SourceName


class Holdings:
    """Sources to the checks they hold, and checks to the sources holding them. A source
    that holds nothing is not listed.

    A check held by one source (nearly every check) maps to that source's name alone, not
    to a set of one: 100,000 checks would otherwise cost 100,000 small sets, in memory
    and in the garbage collector's passes over the state."""

    __slots__ = ("_by_check", "_by_source")

    def __init__(self) -> None:
        self._by_source: dict[SourceName, set[Digest]] = {}
        self._by_check: dict[Digest, SourceName | set[SourceName]] = {}

    @property
    def by_source(self) -> Mapping[SourceName, Set[Digest]]:
        return self._by_source

    def __contains__(self, digest: object) -> bool:
        """Whether any source holds the check."""
        return digest in self._by_check

    def sources(self) -> list[SourceName]:
        return sorted(self._by_source)

    def held_by(self, source: SourceName) -> Set[Digest]:
        return self._by_source.get(source, frozenset())

    def holders(self, digest: Digest) -> Set[SourceName]:
        holders = self._by_check.get(digest)
        if holders is None:
            return frozenset()
        if isinstance(holders, str):
            return frozenset((holders,))
        return holders

    def hold(self, source: SourceName, digest: Digest) -> bool:
        """``source`` holds the check from now on; False when it already did."""
        held = self._by_source.get(source)
        if held is None:
            held = self._by_source[source] = set()
        elif digest in held:
            return False
        held.add(digest)
        holders = self._by_check.get(digest)
        if holders is None:
            self._by_check[digest] = source
        elif isinstance(holders, str):
            self._by_check[digest] = {holders, source}
        else:
            holders.add(source)
        return True

    def hold_all(self, sets: Mapping[SourceName, Set[Digest]]) -> None:
        """Each source holds its checks (``hold`` for every pair), in bulk: how a new
        leader takes over a stored state of 100,000 checks (one call each was a tenth
        of that takeover)."""
        by_check = self._by_check
        for source, digests in sets.items():
            if not digests:
                continue
            self._by_source.setdefault(source, set()).update(digests)
            shared = by_check.keys() & digests  # held by an earlier source too
            for digest in shared:
                holders = by_check[digest]
                if isinstance(holders, str):
                    if holders != source:
                        by_check[digest] = {holders, source}
                else:
                    holders.add(source)
            fresh = digests - shared if shared else digests
            by_check.update(dict.fromkeys(fresh, source))  # one holder: its name alone

    def release(self, source: SourceName, digest: Digest) -> bool:
        """``source`` lets go of the check; True when that was its last holder (the
        check is held no more)."""
        held = self._by_source.get(source)
        if held is None or digest not in held:
            return False
        held.discard(digest)
        if not held:
            del self._by_source[source]
        holders = self._by_check[digest]  # both directions are kept in step
        if isinstance(holders, str):
            del self._by_check[digest]
            return True
        holders.discard(source)
        if len(holders) == 1:
            (self._by_check[digest],) = holders  # back to the name alone
        return False
