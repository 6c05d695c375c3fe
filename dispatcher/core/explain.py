"""Why a check is where it is, or why it dangles, in one sentence (``GET /checks/{digest}``).

A pure function of read-only views of the state: the state passes what it holds of the
check and its nodes, so the wording lives here and the state keeps only the reason code
each placement was made for.
"""

from __future__ import annotations

from collections.abc import Mapping

from dispatcher.core.model import CheckConfig, NodeName
from dispatcher.core.placement import Node

REASONS: Mapping[str, str] = {
    "new_check": "the least loaded eligible node when the check arrived",
    "dispatched": "the least loaded eligible node when it was dispatched from dangling",
    "adopted": "its agent reported running it, so the placement was kept",
    "node_expired": "re-dispatched after its previous node expired",
    "node_left": "re-dispatched after its previous node left",
    "labels_changed": "re-dispatched after its previous node's labels stopped matching",
    "drained": "moved here when its previous node was drained",
    "isolated": "moved here when another check was isolated on its previous node",
    "rebalanced": "moved here by a rebalance",
    "restored": "kept where the previous leader had placed it (loaded from the shared store)",
}
"""Placement reason codes (the ``reason`` of a ``Decision``) in words."""

_SHOWN = 5
"""Node names listed at most in a sentence (a cluster may have thousands)."""


def explain_check(
    config: CheckConfig,
    *,
    node: NodeName | None,
    reason: str | None,
    nodes: Mapping[NodeName, Node],
    warmup_left_s: float,
    max_checks_per_node: int | None = None,
) -> str:
    """The sentence for a check placed on ``node`` for ``reason``, or dangling (``node``
    None) while the dispatcher warms up for ``warmup_left_s`` more (> 0) or is warm; a
    node holding ``max_checks_per_node`` checks takes no more."""
    if node is not None:
        why = reason or "placed"
        return f"Dispatched to {node}: {REASONS.get(why, why)}."
    if warmup_left_s > 0:
        return (
            f"Dangling: the dispatcher is warming up for {warmup_left_s:.1f} s more and places "
            "only checks that an agent reports running."
        )
    if not nodes:
        return "Dangling: no node agent is registered."
    matching = [n for n in sorted(nodes) if config.matches(nodes[n].labels)]
    if not matching:
        return (
            f"Dangling: no registered node has labels matching the selector "
            f"{','.join(f'{k}={v}' for k, v in sorted(config.node_selector.items()))}."
        )
    if all(nodes[n].cordoned for n in matching):
        return f"Dangling: every node matching its selector is cordoned ({', '.join(matching)})."
    limit = max_checks_per_node
    open_nodes = [n for n in matching if not nodes[n].cordoned]
    if limit is not None and all(len(nodes[n].digests) >= limit for n in open_nodes):
        shown = ", ".join(open_nodes[:_SHOWN])
        more = f" and {len(open_nodes) - _SHOWN:,} more" if len(open_nodes) > _SHOWN else ""
        return (
            f"Dangling: every node that may run it holds {limit:,} checks, the most a node "
            f"may hold (max_checks_per_node): {shown}{more}."
        )
    return "Dangling: waiting for the next dispatch tick."
