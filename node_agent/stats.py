"""Which checks' stats a heartbeat carries.

The dispatcher keeps the last stats it got for each check (a heartbeat's ``stats`` are
merged, not replaced), so a heartbeat needs to carry only the checks that ran since their
stats were last sent. With thousands of checks even that can outgrow a request body (each
entry is about 150 bytes, plus its last error of up to 4 KiB): a heartbeat takes the
oldest changes first, up to a byte budget, and the rest wait for the next one. A check
that keeps running is sent again at its next run, so stats lost with a failed heartbeat,
or unknown to a new leader, come back within one interval.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

ENTRY_BYTES = 160
"""A stats entry without its digest and last error, as JSON, rounded up."""


class StatsOutbox:
    def __init__(self) -> None:
        # Insertion order is the order of the changes; a check that runs again keeps its
        # place, so every check is sent in turn however many run.
        self._changed: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._changed)

    def changed(self, digest: str) -> None:
        self._changed.setdefault(digest, None)

    def take(
        self, wire_of: Callable[[str], dict[str, Any] | None], *, budget_bytes: int
    ) -> dict[str, dict[str, Any]]:
        """The stats of the oldest changes, about ``budget_bytes`` of JSON at most (at
        least one entry). ``wire_of`` gives a check's stats, or None once it stopped."""
        taken: dict[str, dict[str, Any]] = {}
        size = 0
        while self._changed:
            digest = next(iter(self._changed))
            stats = wire_of(digest)
            if stats is None:
                self._changed.popitem(last=False)
                continue
            cost = len(digest) + ENTRY_BYTES + len(stats.get("last_error") or "")
            if taken and size + cost > budget_bytes:
                break
            self._changed.popitem(last=False)
            taken[digest] = stats
            size += cost
        return taken
