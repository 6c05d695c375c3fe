"""Node records, the checks' measured costs, and the index that orders nodes by load.

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
from dispatcher.core.snapshot import NodeRecord


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

    @classmethod
    def restored(cls, name: NodeName, record: NodeRecord, *, heartbeat_at: float) -> Node:
        """The node a shared store's record describes, as if it had just sent a heartbeat."""
        return cls(
            name=name,
            labels=dict(record.labels),
            capacity=max(1, record.capacity),
            heartbeat_at=heartbeat_at,
            last_change=0,
            cordoned=record.cordoned,
        )

    def record(self) -> NodeRecord:
        """What a shared store keeps of the node: no heartbeat times, no stats."""
        return NodeRecord(labels=dict(self.labels), capacity=self.capacity, cordoned=self.cordoned)

    def load(self, mean_cost: float) -> float:
        """Sum of the costs of this node's checks."""
        return self.measured_cost + self.unmeasured_weight * mean_cost

    def relative_load(self, mean_cost: float) -> float:
        """Load per unit of capacity: what placement compares."""
        return self.load(mean_cost) / self.capacity

    def add_cost(self, *, weight: float, measured: float | None) -> None:
        """Adds a check's cost to the load: its utilisation once measured, else its
        weight (priced at the mean measured cost when the load is read)."""
        if measured is None:
            self.unmeasured_weight += weight
        else:
            self.measured_cost += measured

    def remove_cost(self, *, weight: float, measured: float | None) -> None:
        """Takes a check's cost off the load (``add_cost`` undone). A node that holds
        no check any more has a load of exactly zero."""
        if not self.digests:
            # Exact zero instead of the residue of many float additions.
            self.measured_cost = 0.0
            self.unmeasured_weight = 0.0
        elif measured is None:
            self.unmeasured_weight -= weight
        else:
            self.measured_cost -= measured


class MeasuredCosts:
    """The checks' measured utilisations and their mean, which prices a unit of weight
    of every check not measured yet (1.0 while nothing is measured)."""

    __slots__ = ("_by_check", "_total")

    def __init__(self) -> None:
        self._by_check: dict[Digest, float] = {}
        self._total = 0.0

    def get(self, digest: Digest) -> float | None:
        return self._by_check.get(digest)

    def mean(self) -> float:
        if not self._by_check:
            return 1.0
        return self._total / len(self._by_check)

    def set(self, digest: Digest, utilisation: float | None) -> None:
        """Records a check's measured utilisation (None: forgets it)."""
        old = self._by_check.pop(digest, None)
        if old is not None:
            self._total -= old
        if utilisation is not None:
            self._by_check[digest] = utilisation
            self._total += utilisation
        if not self._by_check:
            self._total = 0.0  # exact zero, not the residue of many float additions


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
