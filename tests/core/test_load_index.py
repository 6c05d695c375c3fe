"""The load index against its definition: after any sequence of changes, reading it gives
the nodes sorted by (relative load, name), whole or for as far as a reader goes.

The index is a heap with keys left behind, a walk of its tree and a sorted copy kept up
lazily (``LoadIndex``); the definition is one ``sorted`` over the nodes. Loads are drawn
from a few values so that ties (broken by name) are common, and there are more nodes than
the heap walk gives before a scan turns to the sorted copy.
"""

from __future__ import annotations

from itertools import islice

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.core.model import NodeName
from dispatcher.core.placement import LoadIndex, Node

NAMES = [NodeName(f"n{i:02d}") for i in range(40)]

names = st.sampled_from(NAMES)
# (name, measured cost, unmeasured weight, capacity): few distinct values, many ties
changes = st.tuples(
    names,
    st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    st.sampled_from([0.0, 1.0, 2.0, 3.0]),
    st.sampled_from([1, 2]),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), changes),
        st.tuples(st.just("remove"), names),
        st.tuples(st.just("cordon"), names),  # cordon, or uncordon when cordoned
        st.tuples(st.just("mean"), st.sampled_from([0.5, 1.0, 2.0])),
        st.tuples(st.just("read"), st.integers(min_value=0, max_value=45)),
        # Read until the first node in a subset, then raise its load: what placement does.
        st.tuples(st.just("place"), st.frozensets(names, min_size=1)),
    ),
    max_size=300,
)


def expected(nodes: dict[NodeName, Node], mean_cost: float) -> list[NodeName]:
    """Every node that may take a check (not cordoned), by load then name."""
    return [
        name
        for _, name in sorted(
            (n.relative_load(mean_cost), n.name) for n in nodes.values() if not n.cordoned
        )
    ]


@settings(max_examples=300, deadline=None)
@given(operations)
def test_reading_the_index_gives_the_nodes_by_load_then_name(
    ops: list[tuple[str, object]],
) -> None:
    index = LoadIndex()
    nodes: dict[NodeName, Node] = {}
    mean_cost = 1.0
    for kind, arg in ops:
        if kind == "set":
            assert isinstance(arg, tuple)
            name, measured, unmeasured, capacity = arg
            node = nodes.setdefault(name, Node(name, {}, 1, heartbeat_at=0.0, last_change=0))
            node.measured_cost, node.unmeasured_weight, node.capacity = (
                measured,
                unmeasured,
                capacity,
            )
            index.update(node)
        elif kind == "remove":
            assert isinstance(arg, str)
            nodes.pop(NodeName(arg), None)
            index.remove(NodeName(arg))
        elif kind == "cordon":
            assert isinstance(arg, str)
            if NodeName(arg) in nodes:
                node = nodes[NodeName(arg)]
                node.cordoned = not node.cordoned
                index.update(node)
        elif kind == "mean":
            assert isinstance(arg, float)
            mean_cost = arg
            index.set_mean_cost(mean_cost)
        elif kind == "read":
            assert isinstance(arg, int)
            got = list(islice(index.ascending(nodes), arg))
            assert got == expected(nodes, mean_cost)[:arg]
        else:
            assert isinstance(arg, frozenset)
            order = expected(nodes, mean_cost)
            chosen = next((name for name in index.ascending(nodes) if name in arg), None)
            assert chosen == next((name for name in order if name in arg), None)
            if chosen is not None:
                nodes[chosen].unmeasured_weight += 1.0
                index.update(nodes[chosen])
    assert list(index.ascending(nodes)) == expected(nodes, mean_cost)


def test_a_long_scan_after_many_changes_still_reads_in_order() -> None:
    # 200 nodes, many raised each round (leftover keys pile up and the heap is rebuilt),
    # nodes leaving and coming back, and full scans in between: the sorted copy is
    # built, kept up node by node, dropped and built again.
    index = LoadIndex()
    nodes = {
        NodeName(f"n{i:03d}"): Node(NodeName(f"n{i:03d}"), {}, 1, heartbeat_at=0.0, last_change=0)
        for i in range(200)
    }
    for node in nodes.values():
        index.update(node)
    for round_ in range(30):
        for i, node in enumerate(nodes.values()):
            if (i * 7 + round_) % (1 + round_ % 5) == 0:
                node.measured_cost += (i % 3) * 0.5
                index.update(node)
        # A node leaves and one that left comes back: its old keys must not count.
        gone = nodes.pop(NodeName(f"n{round_ * 5:03d}"))
        index.remove(gone.name)
        if round_ >= 2:
            back = Node(NodeName(f"n{(round_ - 2) * 5:03d}"), {}, 1, heartbeat_at=0, last_change=0)
            nodes[back.name] = back
            index.update(back)
        last = NodeName(f"n{199 - round_:03d}")
        assert next(n for n in index.ascending(nodes) if n == last) == last
        assert list(index.ascending(nodes)) == expected(nodes, 1.0)


def test_a_cordoned_empty_node_does_not_make_every_placement_walk_the_heap() -> None:
    """A cordoned node that holds nothing would be the least loaded for good: it is out
    of the order. And a top that no check may go to (here, every check excludes it) lets
    entries left behind pile up under it: once a walk meets too many, the heap is
    compacted at the next read, so it stays about the size of the nodes."""
    index = LoadIndex()
    nodes = {
        NodeName(f"n{i:03d}"): Node(NodeName(f"n{i:03d}"), {}, 1, heartbeat_at=0.0, last_change=0)
        for i in range(200)
    }
    for node in nodes.values():
        index.update(node)
    probe = nodes[NodeName("n000")]
    probe.cordoned = True
    index.update(probe)
    assert index.least(nodes) != probe.name
    assert probe.name not in list(index.ascending(nodes))
    # Placement that passes over the least loaded node every time (as it would a node
    # no check fits): the others' raised loads leave entries behind under it.
    top = index.least(nodes)
    largest_heap = 0
    for _ in range(5_000):
        chosen = next(name for name in index.ascending(nodes) if name != top)
        nodes[chosen].unmeasured_weight += 1.0
        index.update(nodes[chosen])
        largest_heap = max(largest_heap, len(index._heap))
    assert largest_heap <= len(nodes) + 2 * 64
    assert list(index.ascending(nodes)) == expected(nodes, 1.0)
    probe.cordoned = False
    index.update(probe)
    assert index.least(nodes) == probe.name  # back, and the least loaded
