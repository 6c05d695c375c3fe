"""The small interface a shared state store implements.

A store is fenced by epoch: a new leader first claims it with its term's epoch (any
lower epoch is refused from then on) and loads it; every write carries the writer's
epoch and is refused inside the store unless that epoch is the one that claimed it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from dispatcher.core.history import HistoryEntry
from dispatcher.core.model import Digest
from dispatcher.core.snapshot import Snapshot, StateDelta


class StateStore(Protocol):
    kind: str
    """What it is, for logs and health: ``sqlite``, ``redis`` or ``memory``."""
    may_lose_data: bool
    """Whether it can forget what was written while its claimant writes on (Redis
    restarted empty, or flushed): then the writer checks its claim when idle."""

    async def claim(self, *, epoch: int, history: bool = True) -> Snapshot:
        """Claims the store for ``epoch`` and returns what it holds; with
        ``history=False``, without the checks' history (``load_history`` reads it
        later: a new leader serves its checks first).

        Raises Fenced when a higher epoch has claimed it, StoreError when it fails."""
        ...

    async def load_history(self) -> Mapping[Digest, Sequence[HistoryEntry]]:
        """Every check's kept results, oldest first, as the store holds them now (what
        was written since the claim included). Raises StoreError when it fails or a
        stored result cannot be read (naming it)."""
        ...

    async def write(self, delta: StateDelta, *, epoch: int) -> None:
        """Applies a delta; raises Fenced when ``epoch`` is no longer the claimant's."""
        ...

    async def close(self) -> None: ...
