"""The rebalance planner: pure, deterministic, and as sticky as it can be.

A node's relative load is its load (the sum of its checks' costs) over its capacity.
The mean is the total load over the total capacity; the bound is the mean times
``1 + margin``. The planner moves checks off the nodes above the bound, busiest first,
and only until they are within it: a node at or under the bound keeps every check
(stickiness), so a second plan right after the first moves nothing.

For the busiest node it tries, in order, the movable checks whose cost alone brings
the node within the bound (one move), smallest first, then the others from the largest
down: the fewest moves shed a given excess. A check goes to the least loaded eligible node
(its selector matches) that stays within the bound; both nodes end strictly between
their two old loads (the destination below the source's old load, the source above the
destination's), so every move narrows the gap between the two nodes: the busiest
node never gets busier, the least loaded never gets idler, and the sum of
load² / capacity over the nodes falls with every move (the plan always ends).

A move must also take at least ``MIN_MOVE_GAIN`` of the mean load off its source: a
check cheaper than that is never moved (a source just over the bound sheds a larger
check, or stays), so no move narrows nothing measurable.

Checks the caller marks unmovable (never run, failing) stay where they are. Cordoned
nodes are the caller's to leave out: they neither give nor take checks here. A node
with no ``free`` room left (it holds the most checks a node may) takes none.

The spread is how far the busiest node is above the mean, as a fraction of the mean.
A plan that does not narrow it by ``min_improvement`` of its value moves nothing
unless forced.

``planner_inputs`` reads the planner's inputs off the state's nodes and configs.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace

from sortedcontainers import SortedList

from dispatcher.core.model import CheckConfig, Digest, NodeName
from dispatcher.core.placement import Node

_EPS = 1e-12

MIN_MOVE_GAIN = 0.01
"""The least a move may take off its source's relative load, as a fraction of the mean
relative load. Below it a move narrows nothing one can measure (found: a dry run planned
a move that took a load from 0.00506 to 0.00505), yet every move still stops the check
on one agent and starts it on another."""


@dataclass(frozen=True, slots=True)
class NodeLoad:
    name: NodeName
    capacity: float
    load: float
    labels: Mapping[str, str]
    free: int | None = None
    """How many more checks the node may be given (its check limit); None: no limit."""


@dataclass(frozen=True, slots=True)
class Item:
    """A check on a node, as the planner sees it."""

    digest: Digest
    check_name: str
    cost: float
    node: NodeName
    movable: bool
    eligible: Callable[[Mapping[str, str]], bool]
    """Whether a node with these labels may run the check (its selector)."""
    group: Hashable | None = None
    """Items with the same group are eligible on the same nodes (the same selector);
    None: the ``eligible`` function itself is the group."""


@dataclass(frozen=True, slots=True)
class PlannedMove:
    digest: Digest
    check_name: str
    cost: float
    source: NodeName
    dest: NodeName
    source_before: float
    source_after: float
    dest_before: float
    dest_after: float
    """Relative loads (load / capacity) of both nodes before and after this move."""


@dataclass(frozen=True, slots=True)
class Plan:
    moves: list[PlannedMove]
    mean: float
    bound: float
    spread_before: float
    spread_after: float
    worthwhile: bool
    """False when the plan narrows the spread by less than the minimum (or moves
    nothing): then, unless forced, nothing is applied."""

    @property
    def improvement(self) -> float:
        if self.spread_before <= 0:
            return 0.0
        return (self.spread_before - self.spread_after) / self.spread_before


def spread(relative: Mapping[NodeName, float], mean: float) -> float:
    """How far the busiest node is above the mean, as a fraction of the mean."""
    if not relative or mean <= 0:
        return 0.0
    return max(0.0, max(relative.values()) / mean - 1.0)


def planner_inputs(
    nodes: Mapping[NodeName, Node],
    configs: Mapping[Digest, CheckConfig],
    *,
    mean_cost: float,
    cost: Callable[[Digest], float],
    movable: Callable[[Digest], bool],
    max_checks_per_node: int | None,
    margin: float,
    items: bool = True,
) -> tuple[list[NodeLoad], list[Item]]:
    """The loads of the nodes that take checks (cordoned ones are left as they are) and
    the items on them. No items when ``items`` is false or every node is within the
    bound (the common periodic run): then there is nothing to search, and building
    them for every check would be most of the work."""
    limit = max_checks_per_node
    loads = [
        NodeLoad(
            name,
            node.capacity,
            node.load(mean_cost),
            node.labels,
            free=None if limit is None else max(0, limit - len(node.digests)),
        )
        for name, node in nodes.items()
        if not node.cordoned
    ]
    capacity = sum(n.capacity for n in loads)
    bound = sum(n.load for n in loads) / capacity * (1 + margin) if capacity else 0.0
    if not items or not any(n.load / n.capacity > bound for n in loads):
        return loads, []
    on_nodes = []
    for load in loads:
        for digest in nodes[load.name].digests:
            config = configs[digest]
            on_nodes.append(
                Item(
                    digest=digest,
                    check_name=config.name,
                    cost=cost(digest),
                    node=load.name,
                    movable=movable(digest),
                    eligible=config.matches,
                    group=tuple(sorted(config.node_selector.items())),
                )
            )
    return loads, on_nodes


def plan_rebalance(
    nodes: Sequence[NodeLoad],
    items: Sequence[Item],
    *,
    margin: float = 0.1,
    min_improvement: float = 0.1,
    min_move_gain: float = MIN_MOVE_GAIN,
) -> Plan:
    """The moves that bring every node within ``margin`` of the mean, or as close as
    the movable checks allow, each taking at least ``min_move_gain`` of the mean off its
    source. Deterministic: the same input gives the same plan."""
    ordered = sorted(nodes, key=lambda n: n.name)
    total_capacity = sum(n.capacity for n in ordered)
    mean = sum(n.load for n in ordered) / total_capacity if total_capacity > 0 else 0.0
    bound = mean * (1 + margin)
    planner = _Planner(ordered, items, bound, min_gain=mean * min_move_gain)
    before = spread(planner.relative, mean)
    if mean <= 0 or len(ordered) < 2:
        return Plan([], mean, bound, before, before, worthwhile=False)
    planner.run()
    plan = Plan(planner.moves, mean, bound, before, spread(planner.relative, mean), False)
    return replace(plan, worthwhile=bool(plan.moves) and plan.improvement >= min_improvement - _EPS)


class _Planner:
    """The planning state. Each group of items (one selector) gets its own index of the
    nodes it may go to, so a search for a destination looks at eligible nodes only; a
    search that fails is remembered until room appears (a source falls under the
    bound), so stuck nodes are not searched over and over."""

    def __init__(
        self, nodes: Sequence[NodeLoad], items: Sequence[Item], bound: float, *, min_gain: float
    ) -> None:
        self.bound = bound
        self.min_gain = min_gain
        """The least relative load a move takes off its source."""
        self.capacity: dict[NodeName, float] = {n.name: n.capacity for n in nodes}
        self.free: dict[NodeName, int | None] = {n.name: n.free for n in nodes}
        self.relative: dict[NodeName, float] = {n.name: n.load / n.capacity for n in nodes}
        # Each node's movable checks by (cost, digest).
        self.movable: dict[NodeName, SortedList] = {n.name: SortedList() for n in nodes}
        self.items: dict[Digest, Item] = {}
        # Per group: the nodes by (relative load, name) that its items may go to.
        self.targets: dict[Hashable, SortedList] = {}
        self.groups_of: dict[NodeName, list[Hashable]] = {n.name: [] for n in nodes}
        for item in items:
            if item.movable and item.node in self.movable and item.cost > 0:
                self.movable[item.node].add((item.cost, item.digest))
                self.items[item.digest] = item
                key = _group(item)
                if key not in self.targets:
                    eligible = [n.name for n in nodes if item.eligible(n.labels)]
                    self.targets[key] = SortedList((self.relative[n], n) for n in eligible)
                    for name in eligible:
                        self.groups_of[name].append(key)
        self.moves: list[PlannedMove] = []
        self.room = 0
        """Grows whenever a source falls under the bound: it can take checks now."""
        self.failed: dict[Hashable, tuple[int, float, float, float]] = {}
        """Group -> (room, cost, source load, source capacity) of a search that found
        nothing: any search at least as hard fails too until the room grows."""

    def run(self) -> None:
        """Rounds until one moves nothing or no room appeared: a node stuck in one
        round may find room in the next (a busier node shed load meanwhile). Every move
        lowers the sum of load² / capacity, so the rounds end."""
        while True:
            room = self.room
            if not self._round() or self.room == room:
                return

    def _round(self) -> bool:
        moved = False
        bound = self.bound + _EPS
        heap = [(-r, name) for name, r in self.relative.items() if r > bound]
        heapq.heapify(heap)
        while heap:
            neg_r, source = heapq.heappop(heap)
            if -neg_r != self.relative[source] or self.relative[source] <= bound:
                continue  # a stale entry, or already within the bound
            move = self._best_move(source)
            if move is None:
                continue
            self._apply(move)
            moved = True
            if self.relative[source] > bound:
                heapq.heappush(heap, (-self.relative[source], source))
            else:
                self.room += 1
        return moved

    def _best_move(self, source: NodeName) -> PlannedMove | None:
        """The smallest check that alone brings ``source`` within the bound and may go
        somewhere, else the largest that may; to the least loaded eligible node with
        room. Checks below the minimum gain are not candidates."""
        r_s = self.relative[source]
        cap_s = self.capacity[source]
        excess = (r_s - self.bound) * cap_s
        candidates: SortedList = self.movable[source]
        floor = bisect.bisect_left(candidates, (self.min_gain * cap_s - _EPS, ""))
        enough = max(floor, bisect.bisect_left(candidates, (excess - _EPS, "")))
        # Every check that is enough alone, smallest first (a larger one may go where
        # the smallest may not: selectors do not depend on size), then the others,
        # largest first.
        order = [
            *candidates.islice(enough, None),
            *candidates.islice(floor, enough, reverse=True),
        ]
        for cost, digest in order:
            dest = self._destination(self.items[digest], source, cost)
            if dest is not None:
                r_t = self.relative[dest]
                return PlannedMove(
                    digest, self.items[digest].check_name, cost, source, dest,
                    r_s, r_s - cost / self.capacity[source], r_t, r_t + cost / self.capacity[dest],
                )  # fmt: skip
        return None

    def _destination(self, item: Item, source: NodeName, cost: float) -> NodeName | None:
        key = _group(item)
        r_s = self.relative[source]
        cap_s = self.capacity[source]
        failed = self.failed.get(key)
        if (
            failed is not None
            and failed[0] == self.room
            and cost >= failed[1]
            and r_s <= failed[2]
            and cap_s <= failed[3]
        ):
            return None  # as hard as a search that failed, with no new room since
        r_s_after = r_s - cost / cap_s
        target: tuple[float, NodeName]
        for target in self.targets[key]:
            r_t, dest = target
            if r_t >= self.bound - _EPS or r_t >= r_s:
                break  # the rest are fuller still
            if dest == source or self.free[dest] == 0:
                continue
            r_t_after = r_t + cost / self.capacity[dest]
            if r_t_after > self.bound + _EPS or r_t_after >= r_s or r_s_after <= r_t:
                continue
            return dest
        self.failed[key] = (self.room, cost, r_s, cap_s)
        return None

    def _apply(self, move: PlannedMove) -> None:
        for name, old, new in (
            (move.source, move.source_before, move.source_after),
            (move.dest, move.dest_before, move.dest_after),
        ):
            for key in self.groups_of[name]:
                targets = self.targets[key]
                targets.remove((old, name))
                targets.add((new, name))
            self.relative[name] = new
        for name, change in ((move.source, 1), (move.dest, -1)):
            free = self.free[name]
            if free is not None:
                self.free[name] = free + change
        self.movable[move.source].remove((move.cost, move.digest))
        self.movable[move.dest].add((move.cost, move.digest))
        self.moves.append(move)


def _group(item: Item) -> Hashable:
    if item.group is not None:
        return item.group
    try:
        hash(item.eligible)
    except TypeError:
        return ("eligible", id(item.eligible))  # an unhashable callable: itself alone
    return item.eligible
