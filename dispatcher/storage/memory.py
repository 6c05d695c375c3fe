"""An in-memory StateStore with the same fencing rules as Redis: for tests, and for
several replicas in one process. ``lose()`` forgets everything, as a Redis restarted
without persistence does: the next write finds no claim and raises StoreLost."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from dispatcher.core.history import HistoryEntry
from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName
from dispatcher.core.snapshot import NodeRecord, Snapshot, StateDelta
from dispatcher.errors import Fenced, StoreError, StoreLost

K = TypeVar("K")
V = TypeVar("V")


class MemoryStateStore:
    kind = "memory"
    may_lose_data = True  # lose(), as a Redis restarted empty

    def __init__(self, *, history_max_results: int = 2000) -> None:
        self.epoch = 0
        self._history_max_results = history_max_results
        self.configs: dict[Digest, CheckConfig] = {}
        self.sources: dict[SourceName, frozenset[Digest]] = {}
        self.placement: dict[Digest, NodeName] = {}
        self.nodes: dict[NodeName, NodeRecord] = {}
        self.history: dict[Digest, list[HistoryEntry]] = {}
        """Each check's results as written, the newest ``history_max_results`` (a
        restore sorts them and applies its own bounds)."""
        self.writes = 0
        """Writes that changed something (an empty one only checks the claim)."""
        self.down = False

    def lose(self) -> None:
        """Forgets every record and the claim (a Redis restarted empty, or flushed)."""
        self.epoch = 0
        self.configs.clear()
        self.sources.clear()
        self.placement.clear()
        self.nodes.clear()
        self.history.clear()

    async def claim(self, *, epoch: int, history: bool = True) -> Snapshot:
        self._gate()
        if epoch < self.epoch:
            raise Fenced(f"the store is claimed by epoch {self.epoch}, newer than {epoch}")
        self.epoch = epoch
        return Snapshot(
            configs=dict(self.configs),
            sources=dict(self.sources),
            placement=dict(self.placement),
            nodes=dict(self.nodes),
            history={d: list(e) for d, e in self.history.items()} if history else {},
        )

    async def load_history(self) -> dict[Digest, list[HistoryEntry]]:
        self._gate()
        return {d: list(e) for d, e in self.history.items()}

    async def write(self, delta: StateDelta, *, epoch: int) -> None:
        self._gate()
        if self.epoch == 0:
            raise StoreLost("the store holds no claim: it lost its data")
        if epoch != self.epoch:
            raise Fenced(f"the store is claimed by epoch {self.epoch}, not {epoch}")
        if delta:
            self.writes += 1
        _apply(self.configs, delta.configs)
        _apply(self.sources, delta.sources)
        _apply(self.placement, delta.placement)
        _apply(self.nodes, delta.nodes)
        for digest, config in delta.configs.items():
            if config is None:
                self.history.pop(digest, None)
        keep = delta.history_keep(self._history_max_results)
        for digest, entries in delta.history.items():
            kept = self.history.setdefault(digest, [])
            kept.extend(entries)
            del kept[:-keep]

    async def close(self) -> None:
        return None

    def _gate(self) -> None:
        if self.down:
            raise StoreError("memory store is down")


def _apply(target: dict[K, V], changes: Mapping[K, V | None]) -> None:
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
