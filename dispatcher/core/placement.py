"""Node records and the index that orders them by relative load.

A node's load is the sum of its checks' costs (ARCHITECTURE.md, Placement): a measured
check costs its utilisation, an unmeasured one its weight times the mean measured cost.
Keeping the measured sum and the unmeasured weight apart lets the index rank a node in
O(1) for any mean, and re-rank everything only when the mean moves and a placement is
actually asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from sortedcontainers import SortedList

from dispatcher.core.model import CheckStats, Digest, NodeName


@dataclass(slots=True, eq=False)
class Node:
    """One node agent as the leader knows it (a node store)."""

    name: NodeName
    labels: dict[str, str]
    capacity: int
    heartbeat_at: float
    last_change: int
    digests: set[Digest] = field(default_factory=set)
    stats: dict[Digest, CheckStats] = field(default_factory=dict)
    cordoned: bool = False
    measured_cost: float = 0.0
    unmeasured_weight: float = 0.0
    reported_running: frozenset[Digest] = frozenset()

    def load(self, mean_cost: float) -> float:
        """Sum of the costs of this node's checks."""
        return self.measured_cost + self.unmeasured_weight * mean_cost

    def relative_load(self, mean_cost: float) -> float:
        """Load per unit of capacity: what placement compares."""
        return self.load(mean_cost) / self.capacity


class LoadIndex:
    """Node names ordered by (relative load, name); ties break by name."""

    def __init__(self) -> None:
        self._order: SortedList = SortedList()
        self._keys: dict[NodeName, tuple[float, str]] = {}
        self._mean_cost = 1.0
        self._stale = False

    def set_mean_cost(self, mean_cost: float) -> None:
        if mean_cost != self._mean_cost:
            self._mean_cost = mean_cost
            self._stale = True

    def update(self, node: Node) -> None:
        if self._stale:
            return  # the whole order is rebuilt before the next read
        old = self._keys.get(node.name)
        if old is not None:
            self._order.remove(old)
        key = (node.relative_load(self._mean_cost), node.name)
        self._keys[node.name] = key
        self._order.add(key)

    def remove(self, name: NodeName) -> None:
        key = self._keys.pop(name, None)
        if key is not None and not self._stale:
            self._order.remove(key)

    def ascending(self, nodes: dict[NodeName, Node]) -> Iterator[NodeName]:
        """Node names from the least to the most loaded.

        Callers must not change loads while iterating.
        """
        if self._stale:
            self._rebuild(nodes)
        for _, name in self._order:
            yield NodeName(name)

    def _rebuild(self, nodes: dict[NodeName, Node]) -> None:
        self._keys = {
            name: (node.relative_load(self._mean_cost), name) for name, node in nodes.items()
        }
        self._order = SortedList(self._keys.values())
        self._stale = False
