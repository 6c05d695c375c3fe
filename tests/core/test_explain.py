"""The explanation sentence as a pure function of what the state holds (no state built)."""

from __future__ import annotations

import pytest

from dispatcher.core.explain import explain_check
from dispatcher.core.model import Digest, NodeName, make_config
from dispatcher.core.placement import Node

CONFIG = make_config(name="http", instances=[{"url": "a"}], node_selector={"zone": "a"})
A, B = NodeName("a"), NodeName("b")


def node(name: NodeName, *, zone: str, cordoned: bool = False) -> Node:
    labels = {"zone": zone}
    return Node(name, labels, capacity=1, heartbeat_at=0.0, last_change=0, cordoned=cordoned)


@pytest.mark.parametrize(
    ("placed_on", "reason", "nodes", "warmup_left_s", "sentence"),
    [
        (A, "drained", [], 0.0, "Dispatched to a: moved here when its previous node was drained."),
        (A, None, [], 0.0, "Dispatched to a: placed."),
        (A, "some_new_reason", [], 0.0, "Dispatched to a: some_new_reason."),
        (None, None, [], 2.5, "Dangling: the dispatcher is warming up for 2.5 s more and places "
                              "only checks that an agent reports running."),
        (None, None, [], float("-inf"), "Dangling: no node agent is registered."),
        (None, None, [node(B, zone="b")], 0.0,
         "Dangling: no registered node has labels matching the selector zone=a."),
        (None, None, [node(A, zone="a", cordoned=True), node(B, zone="b")], 0.0,
         "Dangling: every node matching its selector is cordoned (a)."),
        (None, None, [node(A, zone="a")], 0.0, "Dangling: waiting for the next dispatch tick."),
    ],
)  # fmt: skip
def test_the_sentence_for_each_case(
    placed_on: NodeName | None,
    reason: str | None,
    nodes: list[Node],
    warmup_left_s: float,
    sentence: str,
) -> None:
    assert (
        explain_check(
            CONFIG,
            node=placed_on,
            reason=reason,
            nodes={n.name: n for n in nodes},
            warmup_left_s=warmup_left_s,
        )
        == sentence
    )


def full(name: NodeName, *, zone: str, checks: int, cordoned: bool = False) -> Node:
    holder = node(name, zone=zone, cordoned=cordoned)
    holder.digests.update(Digest(f"{name}-{i}") for i in range(checks))
    return holder


@pytest.mark.parametrize(
    ("nodes", "sentence"),
    [
        pytest.param(
            [full(A, zone="a", checks=2), full(B, zone="b", checks=0)],
            "Dangling: every node that may run it holds 2 checks, the most a node may hold "
            "(max_checks_per_node): a.",
            id="the-one-matching-node-is-full",
        ),
        pytest.param(
            [full(A, zone="a", checks=2), full(B, zone="a", checks=2, cordoned=True)],
            "Dangling: every node that may run it holds 2 checks, the most a node may hold "
            "(max_checks_per_node): a.",
            id="full-or-cordoned",
        ),
        pytest.param(
            [full(NodeName(f"n{i}"), zone="a", checks=3) for i in range(7)],
            "Dangling: every node that may run it holds 2 checks, the most a node may hold "
            "(max_checks_per_node): n0, n1, n2, n3, n4 and 2 more.",
            id="above-a-lowered-limit-many-listed-in-part",
        ),
        pytest.param(
            [full(A, zone="a", checks=2), full(B, zone="a", checks=1)],
            "Dangling: waiting for the next dispatch tick.",
            id="one-has-room",
        ),
    ],
)
def test_a_check_dangles_because_every_node_is_full(nodes: list[Node], sentence: str) -> None:
    assert (
        explain_check(
            CONFIG,
            node=None,
            reason=None,
            nodes={n.name: n for n in nodes},
            warmup_left_s=0.0,
            max_checks_per_node=2,
        )
        == sentence
    )
