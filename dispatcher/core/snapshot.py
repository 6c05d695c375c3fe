"""What a shared store keeps of the cluster state, and the changes it is sent.

The storage modules need these records and nothing of ``ClusterState``: a store holds a
``Snapshot`` and applies ``StateDelta``s. The state records which persisted records each
step changed in a ``ChangeTracker``; the tracker turns them into a delta by reading the
records' current values (a record gone from the state is a deletion).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field

from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What a shared store keeps of a node: no heartbeat times, no stats."""

    labels: Mapping[str, str]
    capacity: int
    cordoned: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The persisted part of the state, as a shared store holds it."""

    configs: Mapping[Digest, CheckConfig] = field(default_factory=dict)
    sources: Mapping[SourceName, frozenset[Digest]] = field(default_factory=dict)
    placement: Mapping[Digest, NodeName] = field(default_factory=dict)
    nodes: Mapping[NodeName, NodeRecord] = field(default_factory=dict)


@dataclass(slots=True)
class StateDelta:
    """Records changed since the last ``take_delta()``: a value to write, None to delete."""

    configs: dict[Digest, CheckConfig | None] = field(default_factory=dict)
    sources: dict[SourceName, frozenset[Digest] | None] = field(default_factory=dict)
    placement: dict[Digest, NodeName | None] = field(default_factory=dict)
    nodes: dict[NodeName, NodeRecord | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.configs or self.sources or self.placement or self.nodes)

    def __len__(self) -> int:
        return len(self.configs) + len(self.sources) + len(self.placement) + len(self.nodes)

    def merge(self, later: StateDelta) -> None:
        """Folds a later delta into this one; the later value of a record wins."""
        self.configs.update(later.configs)
        self.sources.update(later.sources)
        self.placement.update(later.placement)
        self.nodes.update(later.nodes)


class ChangeTracker:
    """The keys of the persisted records changed since the last ``take``.

    Only keys are kept, not values: a record changed many times in one step (a check
    attached, detached and attached again) is written once, with its final value. A
    disabled tracker (a state no store follows) records nothing, so it never grows.
    """

    __slots__ = ("_configs", "_enabled", "_nodes", "_placement", "_sources")

    def __init__(self, *, enabled: bool = True) -> None:
        self._enabled = enabled
        self._configs: set[Digest] = set()
        self._sources: set[SourceName] = set()
        self._placement: set[Digest] = set()
        self._nodes: set[NodeName] = set()

    def __bool__(self) -> bool:
        return bool(self._configs or self._sources or self._placement or self._nodes)

    def config(self, digest: Digest) -> None:
        if self._enabled:
            self._configs.add(digest)

    def source(self, source: SourceName) -> None:
        if self._enabled:
            self._sources.add(source)

    def placement(self, digest: Digest) -> None:
        if self._enabled:
            self._placement.add(digest)

    def node(self, name: NodeName) -> None:
        if self._enabled:
            self._nodes.add(name)

    def forget_placements(self, digests: Iterable[Digest]) -> None:
        """Drops placements the store already holds as they are (a restored state)."""
        self._placement.difference_update(digests)

    def take(
        self,
        *,
        configs: Mapping[Digest, CheckConfig],
        sources: Mapping[SourceName, Set[Digest]],
        placement: Mapping[Digest, NodeName],
        node_record: Callable[[NodeName], NodeRecord | None],
    ) -> StateDelta:
        """The changed records with their current values (None: deleted), in key order;
        the tracker starts empty again."""
        if not self:
            return StateDelta()  # the common heartbeat: nothing to write
        delta = StateDelta(
            configs={d: configs.get(d) for d in sorted(self._configs)},
            sources={
                s: frozenset(held) if (held := sources.get(s)) else None
                for s in sorted(self._sources)
            },
            placement={d: placement.get(d) for d in sorted(self._placement)},
            nodes={n: node_record(n) for n in sorted(self._nodes)},
        )
        self._configs = set()
        self._sources = set()
        self._placement = set()
        self._nodes = set()
        return delta
