"""Node records, the checks' measured costs, and the index that orders nodes by load.

A node's load is the sum of its checks' costs (ARCHITECTURE.md, Placement): a measured
check costs its utilisation, an unmeasured one its weight times the mean measured cost.
Keeping the measured sum and the unmeasured weight apart lets the index rank a node in
O(1) for any mean, and re-rank everything only when the mean moves and a placement is
actually asked for.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field

from sortedcontainers import SortedList

from dispatcher.core.model import Digest, NodeName
from dispatcher.core.snapshot import NodeRecord

StatsKept = tuple[float, int, int, str | None, float | None]
"""A ``CheckStats``'s fields as a node keeps them: a plain tuple, which the garbage
collector stops tracking (see ``history.Kept``): 100,000 of them at 10,000 agents, a
new one for each check at every heartbeat."""


@dataclass(slots=True, eq=False)
class Node:
    """One node agent as the leader knows it (a node store)."""

    name: NodeName
    labels: dict[str, str]
    capacity: int
    heartbeat_at: float
    last_change: int
    digests: set[Digest] = field(default_factory=set)
    stats: dict[Digest, StatsKept] = field(default_factory=dict)
    """The agent's last stats for each of its checks (``CheckStats``'s fields)."""
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


# How many nodes a scan of the load order reads off the heap's tree before it turns to
# the sorted copy: a check that most nodes may run finds one among the first few; one
# that few may run (a selector that matches one host, or one zone whose nodes are all
# busier than the rest) scans on, and past a few nodes the sorted copy, brought up to
# date, costs less than walking the tree (measured at 2,000 nodes: 4 beat 8 and 16).
_SCAN_IN_HEAP = 4
_LEFT_BEHIND_MAX = 64
"""Entries left behind that a walk of the heap may meet before the heap is compacted
(at the next read)."""

Key = tuple[float, NodeName]


class LoadIndex:
    """Node names ordered by (relative load, name); ties break by name.

    Placement reads the least loaded node far more often than anything else, and then
    raises that very node's load: scheduling 100,000 checks does it 100,000 times. So
    the order is a binary heap of keys (``heapq``, in C): a node whose key changes gets
    a new key tuple, which replaces the top in one step when the node was the least
    loaded and is pushed otherwise. A key left behind by a change is dropped when it
    reaches the top, and the heap is rebuilt when such leftovers outnumber the nodes; a
    key is current when it is the very tuple ``_keys`` holds for its node.

    Cordoned nodes are not in the order (they take no check). ``ascending`` gives the
    first node from the top, the next few by walking the heap's
    tree in order, and the rest, for a scan that goes that far, from a sorted copy of
    the keys. The copy is brought up to date only then: node by node when few keys
    changed since it was last read, and built again (or, past that, no longer kept up)
    when many did.
    """

    __slots__ = (
        "_compact_next",
        "_dirty",
        "_heap",
        "_keys",
        "_mean_cost",
        "_sorted",
        "_sorted_keys",
        "_stale",
    )

    def __init__(self) -> None:
        self._keys: dict[NodeName, Key] = {}
        self._heap: list[Key] = []
        self._compact_next = False
        self._sorted: SortedList | None = None  # None: built at the next long scan
        self._sorted_keys: dict[NodeName, Key] = {}  # the keys ``_sorted`` holds
        self._dirty: set[NodeName] = set()  # nodes whose key changed since
        self._mean_cost = 1.0
        self._stale = False

    def set_mean_cost(self, mean_cost: float) -> None:
        if mean_cost != self._mean_cost:
            self._mean_cost = mean_cost
            self._stale = True

    def update(self, node: Node) -> None:
        if node.cordoned:
            # Out of the order: a cordoned node takes no check, and one that holds none
            # would sit at the top for good, so that every placement walked past it
            # through the entries left behind below (the fleet benchmark's cordoned
            # probe node made placing 100,000 checks take minutes).
            self.remove(node.name)
            return
        if self._stale:
            return  # the whole order is rebuilt before the next read
        name = node.name
        # Node.relative_load inline (the same arithmetic, so the same key): this runs
        # once per check placed.
        load = node.measured_cost + node.unmeasured_weight * self._mean_cost
        key = (load / node.capacity, name)
        old = self._keys.get(name)
        if old == key:
            return  # same place in the order
        self._keys[name] = key
        if self._sorted is not None:
            self._changed(name)
        heap = self._heap
        if heap and heap[0] is old:
            heapq.heapreplace(heap, key)
        else:
            heapq.heappush(heap, key)
            self._compact_if_needed()

    def remove(self, name: NodeName) -> None:
        key = self._keys.pop(name, None)
        if key is not None and not self._stale:
            if self._sorted is not None:
                self._changed(name)
            self._compact_if_needed()

    def least(self, nodes: dict[NodeName, Node]) -> NodeName | None:
        """The least loaded node (the first of ``ascending``), None when there is none:
        what placement asks first, without a generator to start and close."""
        if self._stale:
            self._rebuild(nodes)
        elif self._compact_next:
            self._compact()
        heap, keys = self._heap, self._keys
        while heap:
            top = heap[0]
            if keys.get(top[1]) is top:
                return top[1]
            heapq.heappop(heap)  # left behind by a change: drop it
        return None

    def ascending(self, nodes: dict[NodeName, Node]) -> Iterator[NodeName]:
        """Node names from the least to the most loaded.

        Callers must not change loads while iterating.
        """
        first = self.least(nodes)
        if first is None:
            return
        yield first
        heap, keys = self._heap, self._keys
        # The next few in order: a walk of the heap's tree, least key first (a parent's
        # key is no greater than its children's, so the frontier's least is next).
        size = len(heap)
        frontier: list[tuple[Key, int]] = [(heap[i], i) for i in (1, 2) if i < size]
        heapq.heapify(frontier)
        given = 1
        left_behind = 0
        while frontier and given < _SCAN_IN_HEAP:
            key, i = heapq.heappop(frontier)
            if keys.get(key[1]) is key:
                yield key[1]
                given += 1
            else:
                left_behind += 1
                if left_behind == _LEFT_BEHIND_MAX:
                    # Entries left behind pile up under a top that stays (a node no
                    # check may go to but the least loaded): a walk through them on
                    # every placement would cost more than compacting once.
                    self._compact_next = True
            child = 2 * i + 1
            if child < size:
                heapq.heappush(frontier, (heap[child], child))
                if child + 1 < size:
                    heapq.heappush(frontier, (heap[child + 1], child + 1))
        if not frontier:
            return  # every node given
        # A long scan: the sorted copy holds the same current keys, so its first
        # ``given`` are the ones already given.
        for _, name in self._sorted_order().islice(given):
            yield name

    def _changed(self, name: NodeName) -> None:
        """A node's key changed (or it left) while the sorted copy is kept."""
        self._dirty.add(name)
        if len(self._dirty) > len(self._keys) // 4 + 8:
            # Building the copy again costs less than this many single updates: stop
            # keeping it up until a long scan needs it.
            self._drop_sorted()

    def _drop_sorted(self) -> None:
        self._sorted = None
        self._sorted_keys = {}
        self._dirty.clear()

    def _sorted_order(self) -> SortedList:
        if self._sorted is None:
            self._sorted = SortedList(self._keys.values())
            self._sorted_keys = dict(self._keys)
        else:
            for name in self._dirty:
                old = self._sorted_keys.pop(name, None)
                if old is not None:
                    self._sorted.remove(old)
                key = self._keys.get(name)
                if key is not None:
                    self._sorted.add(key)
                    self._sorted_keys[name] = key
        self._dirty.clear()
        return self._sorted

    def _compact_if_needed(self) -> None:
        if len(self._heap) > 2 * len(self._keys) + 64:
            self._compact()

    def _compact(self) -> None:
        """The heap of the current keys only."""
        self._heap = list(self._keys.values())
        heapq.heapify(self._heap)
        self._compact_next = False

    def _rebuild(self, nodes: dict[NodeName, Node]) -> None:
        self._keys = {
            name: (node.relative_load(self._mean_cost), name)
            for name, node in nodes.items()
            if not node.cordoned
        }
        self._heap = list(self._keys.values())
        heapq.heapify(self._heap)
        self._drop_sorted()
        self._stale = False
