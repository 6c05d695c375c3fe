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

``planner_input_steps`` reads the planner's inputs off the state's nodes and configs: the
items of the nodes above the bound only, since no other node ever gives a check (a
destination ends within the bound), so the items of the others could not change the plan.

Reading the inputs and planning both come in slices (``planner_input_steps`` and
``plan_steps`` are generators that yield after about ``SLICE_WORK`` units of work and
return their result), so that a dispatcher can read the inputs under its lock a slice at
a time and plan with its event loop free between slices; ``run_steps`` runs one whole
(``plan_rebalance`` is ``plan_steps`` run whole).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Generator, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace

from sortedcontainers import SortedList

from dispatcher.core.model import CheckConfig, Digest, NodeName
from dispatcher.core.placement import Node
from dispatcher.core.steps import run_steps

_EPS = 1e-12
_NEAR = 1e-9
"""Relative slack on the bound when picking the nodes whose items the planner needs: the
planner sums the loads in another order, so its bound may differ in the last bits."""

SLICE_WORK = 2_000
"""Work between two yields of the sliced forms, in units of about a microsecond on the
2-core CI machine: a node's load read, a node looked at for a selector group, a
destination looked at in a search; an item read (``ITEM_WORK``) or a move planned
(``MOVE_WORK``) count more. About 2 ms a slice there when it is quiet."""
ITEM_WORK = 3
MOVE_WORK = 20

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


def planner_input_steps(
    nodes: Mapping[NodeName, Node],
    configs: Mapping[Digest, CheckConfig],
    *,
    mean_cost: float,
    cost: Callable[[Digest], float],
    movable: Callable[[Digest], bool],
    max_checks_per_node: int | None,
    margin: float,
    items: bool = True,
    slice_work: int = SLICE_WORK,
) -> Generator[None, None, tuple[list[NodeLoad], list[Item]]]:
    """The loads of the nodes that take checks (cordoned ones are left as they are) and
    the items on the nodes above the bound; no items when ``items`` is false or every
    node is within the bound (the common periodic run: nothing to search).

    In slices: the loads, then the items a node at a time (a node's items all in one
    slice), yielding between nodes. ``nodes`` and ``configs`` are read live: when they
    change between slices (a caller that frees its lock between them), a node gone is
    passed over and each node is read as its slice finds it, so the plan's moves must
    be checked against the state before they are made (``ClusterState.apply_rebalance``
    does)."""
    limit = max_checks_per_node
    loads: list[NodeLoad] = []
    work = 0
    for name in list(nodes):
        node = nodes.get(name)
        if node is None or node.cordoned:
            continue  # gone since the slice that listed the nodes; cordoned: left alone
        loads.append(
            NodeLoad(
                name,
                node.capacity,
                node.load(mean_cost),
                node.labels,
                free=None if limit is None else max(0, limit - len(node.digests)),
            )
        )
        work += 1
        if work >= slice_work:
            yield
            work = 0
    capacity = sum(n.capacity for n in loads)
    bound = sum(n.load for n in loads) / capacity * (1 + margin) if capacity else 0.0
    # A superset of the nodes the planner finds above its bound: only they give checks.
    givers = sorted(n.name for n in loads if n.load / n.capacity > bound * (1 - _NEAR))
    if not items or not givers:
        return loads, []
    on_nodes: list[Item] = []
    for name in givers:
        if work >= slice_work:
            yield
            work = 0
        node = nodes.get(name)
        if node is None:
            continue  # gone since its load was read
        for digest in node.digests:
            config = configs[digest]
            on_nodes.append(
                Item(
                    digest=digest,
                    check_name=config.name,
                    cost=cost(digest),
                    node=name,
                    movable=movable(digest),
                    eligible=config.matches,
                    group=tuple(sorted(config.node_selector.items())),
                )
            )
        work += 1 + ITEM_WORK * len(node.digests)
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
    return run_steps(
        plan_steps(
            nodes,
            items,
            margin=margin,
            min_improvement=min_improvement,
            min_move_gain=min_move_gain,
        )
    )


def plan_steps(
    nodes: Sequence[NodeLoad],
    items: Sequence[Item],
    *,
    margin: float = 0.1,
    min_improvement: float = 0.1,
    min_move_gain: float = MIN_MOVE_GAIN,
    slice_work: int = SLICE_WORK,
) -> Generator[None, None, Plan]:
    """``plan_rebalance`` in slices of about ``slice_work`` (yielding between them): the
    same plan. Pure: it reads only its arguments, which must not change meanwhile."""
    ordered = sorted(nodes, key=lambda n: n.name)
    total_capacity = sum(n.capacity for n in ordered)
    mean = sum(n.load for n in ordered) / total_capacity if total_capacity > 0 else 0.0
    bound = mean * (1 + margin)
    yield
    planner = _Planner(ordered, bound, min_gain=mean * min_move_gain, slice_work=slice_work)
    yield from planner.start()
    before = spread(planner.relative, mean)
    if mean <= 0 or len(ordered) < 2:
        return Plan([], mean, bound, before, before, worthwhile=False)
    yield from planner.index(items)
    yield from planner.run()
    plan = Plan(planner.moves, mean, bound, before, spread(planner.relative, mean), False)
    return replace(plan, worthwhile=bool(plan.moves) and plan.improvement >= min_improvement - _EPS)


class _Planner:
    """The planning state. Each group of items (one selector) gets its own index of the
    nodes it may go to, so a search for a destination looks at eligible nodes only, and
    stops at the first node that neither it nor any fuller one could take the check; a
    search that fails is remembered until room appears (a source falls under the
    bound), so stuck nodes are not searched over and over.

    ``index`` and ``run`` are generators that yield after about ``slice_work`` units of
    work (``work``): an item indexed, a node looked at for a group, a destination looked
    at in a search. A yield falls between two moves, never inside one."""

    def __init__(
        self, nodes: Sequence[NodeLoad], bound: float, *, min_gain: float, slice_work: int
    ) -> None:
        self.nodes = nodes
        self.bound = bound
        self.min_gain = min_gain
        """The least relative load a move takes off its source."""
        self.slice_work = slice_work
        self.work = 0
        # Per node (filled by ``start``): capacity, room left under the check limit, and
        # relative load.
        self.capacity: dict[NodeName, float] = {}
        self.free: dict[NodeName, int | None] = {}
        self.relative: dict[NodeName, float] = {}
        # Each node's movable checks by (cost, digest); a node with none has no entry
        # until a check moves to it.
        self.movable: dict[NodeName, SortedList] = {}
        self.items: dict[Digest, Item] = {}
        # Per group: the nodes by (relative load, name) that its items may go to, and the
        # largest capacity among them.
        self.targets: dict[Hashable, SortedList] = {}
        self.largest: dict[Hashable, float] = {}
        self.groups_of: dict[NodeName, list[Hashable]] = {}
        self.moves: list[PlannedMove] = []
        self.room = 0
        """Grows whenever a source falls under the bound: it can take checks now."""
        self.failed: dict[Hashable, tuple[int, float, float, float]] = {}
        """Group -> (room, cost, source load, source capacity) of a search that found
        nothing: any search at least as hard fails too until the room grows."""

    def _due(self) -> bool:
        """Whether a slice's work is done (and the count starts again)."""
        if self.work < self.slice_work:
            return False
        self.work = 0
        return True

    def start(self) -> Generator[None, None, None]:
        """The per-node tables."""
        for n in self.nodes:
            self.capacity[n.name] = n.capacity
            self.free[n.name] = n.free
            self.relative[n.name] = n.load / n.capacity
            self.groups_of[n.name] = []
            self.work += 1
            if self._due():
                yield

    def index(self, items: Sequence[Item]) -> Generator[None, None, None]:
        """Indexes the movable items by node, and each group's eligible nodes."""
        on_node: dict[NodeName, list[tuple[float, Digest]]] = {}
        for item in items:
            if item.movable and item.node in self.capacity and item.cost > 0:
                on_node.setdefault(item.node, []).append((item.cost, item.digest))
                self.items[item.digest] = item
                key = _group(item)
                self.work += 1
                if key not in self.targets:
                    yield from self._add_group(key, item.eligible)
                if self._due():
                    yield
        # Sorted once per node rather than one insertion at a time.
        for name, checks in on_node.items():
            self.movable[name] = SortedList(checks)
            self.work += 1 + len(checks)
            if self._due():
                yield

    def _add_group(
        self, key: Hashable, eligible: Callable[[Mapping[str, str]], bool]
    ) -> Generator[None, None, None]:
        names: list[NodeName] = []
        for n in self.nodes:
            if eligible(n.labels):
                names.append(n.name)
            self.work += 1
            if self._due():
                yield
        self.targets[key] = SortedList((self.relative[n], n) for n in names)
        self.largest[key] = max((self.capacity[n] for n in names), default=0.0)
        for name in names:
            self.groups_of[name].append(key)
        self.work += len(names)

    def run(self) -> Generator[None, None, None]:
        """Rounds until one moves nothing or no room appeared: a node stuck in one
        round may find room in the next (a busier node shed load meanwhile). Every move
        lowers the sum of load² / capacity, so the rounds end."""
        while True:
            room = self.room
            moved = yield from self._round()
            if not moved or self.room == room:
                return

    def _round(self) -> Generator[None, None, bool]:
        moved = False
        bound = self.bound + _EPS
        heap = [(-r, name) for name, r in self.relative.items() if r > bound]
        heapq.heapify(heap)
        while heap:
            if self._due():
                yield
            neg_r, source = heapq.heappop(heap)
            self.work += 1
            if -neg_r != self.relative[source] or self.relative[source] <= bound:
                continue  # a stale entry, or already within the bound
            move = self._best_move(source)
            if move is None:
                continue
            self._apply(move)
            moved = True
            self.work += MOVE_WORK
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
        candidates = self.movable.get(source)
        if candidates is None:
            return None  # nothing on it may move
        floor = bisect.bisect_left(candidates, (self.min_gain * cap_s - _EPS, ""))
        enough = max(floor, bisect.bisect_left(candidates, (excess - _EPS, "")))
        # Every check that is enough alone, smallest first (a larger one may go where
        # the smallest may not: selectors do not depend on size), then the others,
        # largest first.
        order = [
            *candidates.islice(enough, None),
            *candidates.islice(floor, enough, reverse=True),
        ]
        self.work += len(order)
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
        high = self.bound + _EPS
        # What the check adds at least to a node of the group: on the largest one. A node
        # further on is at least as loaded and at most as large, so it ends at least at
        # r_t + least (floating-point division and addition keep that order): once that
        # is too much, every node further on is too.
        targets = self.targets[key]
        least = cost / self.largest[key] if targets else 0.0
        target: tuple[float, NodeName]
        looked = 0
        for target in targets:
            looked += 1
            r_t, dest = target
            if r_t >= self.bound - _EPS or r_t >= r_s_after:
                break  # the rest are fuller still
            if r_t + least > high or r_t + least >= r_s:
                break  # the rest would end above the bound, or above the source
            if dest == source or self.free[dest] == 0:
                continue
            r_t_after = r_t + cost / self.capacity[dest]
            if r_t_after > high or r_t_after >= r_s:
                continue
            self.work += looked
            return dest
        self.work += looked
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
            self.work += 1 + len(self.groups_of[name])
        for name, change in ((move.source, 1), (move.dest, -1)):
            free = self.free[name]
            if free is not None:
                self.free[name] = free + change
        self.movable[move.source].remove((move.cost, move.digest))
        self.movable.setdefault(move.dest, SortedList()).add((move.cost, move.digest))
        self.moves.append(move)


def _group(item: Item) -> Hashable:
    if item.group is not None:
        return item.group
    try:
        hash(item.eligible)
    except TypeError:
        return ("eligible", id(item.eligible))  # an unhashable callable: itself alone
    return item.eligible
