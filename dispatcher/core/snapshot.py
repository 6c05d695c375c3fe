"""What a shared store keeps of the cluster state, and the changes it is sent.

The storage modules need these records and nothing of ``ClusterState``: a store holds a
``Snapshot`` and applies ``StateDelta``s. The state records which persisted records each
step changed in a ``ChangeTracker``; the tracker turns them into a delta by reading the
records' current values (a record gone from the state is a deletion). What a store holds
may not fit together (a placement on a node it does not know); ``fit_together`` keeps
what does and says what to write so the store agrees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field

from dispatcher.core.history import HistoryEntry
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
    history: Mapping[Digest, Sequence[HistoryEntry]] = field(default_factory=dict)
    """Each check's kept results, oldest first (stores that keep history)."""


@dataclass(slots=True)
class StateDelta:
    """Records changed since the last ``take_delta()``: a value to write, None to delete."""

    configs: dict[Digest, CheckConfig | None] = field(default_factory=dict)
    sources: dict[SourceName, frozenset[Digest] | None] = field(default_factory=dict)
    placement: dict[Digest, NodeName | None] = field(default_factory=dict)
    nodes: dict[NodeName, NodeRecord | None] = field(default_factory=dict)
    history: dict[Digest, list[HistoryEntry]] = field(default_factory=dict)
    """Results to append to each check's history (a store applies the configs' deletions
    first, which drop a check's history, then these)."""
    history_bound: int | None = None
    """How many results each check keeps now (``CheckHistory.per_check``), when the
    overall bound makes it fewer than the store's own: a store keeps no more, so its
    history stays within the leader's and a restart loads no more than that."""

    def __bool__(self) -> bool:
        return bool(self.configs or self.sources or self.placement or self.nodes or self.history)

    def history_keep(self, configured: int) -> int:
        """Results a store keeps per check: its own bound, or the leader's share when the
        overall bound (``--history-max-total``) makes that smaller."""
        if self.history_bound is None:
            return configured
        return max(1, min(configured, self.history_bound))

    def __len__(self) -> int:
        return len(self.configs) + len(self.sources) + len(self.placement) + len(self.nodes)

    def merge(self, later: StateDelta) -> None:
        """Folds a later delta into this one; the later value of a record wins."""
        self.configs.update(later.configs)
        self.sources.update(later.sources)
        self.placement.update(later.placement)
        self.nodes.update(later.nodes)
        for digest, config in later.configs.items():
            if config is None:
                # Deleted after these results: they go with it (a store applies the
                # deletion before the appends, which would bring them back).
                self.history.pop(digest, None)
        for digest, entries in later.history.items():
            self.history.setdefault(digest, []).extend(entries)
        if later.history_bound is not None:
            self.history_bound = later.history_bound


def fit_together(snapshot: Snapshot) -> tuple[Snapshot, StateDelta]:
    """The records of ``snapshot`` that fit together, and the writes that make a store
    holding ``snapshot`` hold just those: a source is rewritten without its checks that
    have no config (deleted when none is left); a config no source holds, a placement of
    a check not kept and a placement on a node the snapshot lacks are deleted.

    A store written by a leader holds records that fit (the usual case), so each kind is
    first checked whole with set operations, which run in C: at 100,000 checks, looking
    at the records one by one in Python was a quarter of a takeover's rebuild. The
    mappings that fit are handed on as they are, not copied."""
    fixes = StateDelta()
    stored = snapshot.configs
    sources: dict[SourceName, frozenset[Digest]] = {}
    for source, digests in snapshot.sources.items():
        held = frozenset(digests)
        missing = held.difference(stored)  # a set against a dict: a loop in C
        if missing:
            held = held - missing
            fixes.sources[source] = held or None
        if held:
            sources[source] = held
    kept = set[Digest]().union(*sources.values())
    configs: Mapping[Digest, CheckConfig]
    if len(kept) == len(stored):  # every config is held (kept holds only stored ones)
        configs = stored
    else:
        configs = {d: c for d, c in stored.items() if d in kept}
        fixes.configs.update((d, None) for d in stored if d not in kept)
    placement: Mapping[Digest, NodeName]
    stored_placement = snapshot.placement
    if stored_placement.keys() <= configs.keys() and set(stored_placement.values()).issubset(
        snapshot.nodes
    ):
        placement = stored_placement
    else:
        fitting: dict[Digest, NodeName] = {}
        for digest, name in stored_placement.items():
            if digest in configs and name in snapshot.nodes:
                fitting[digest] = name
            else:
                fixes.placement[digest] = None
        placement = fitting
    history = snapshot.history
    if not history.keys() <= configs.keys():
        history = {d: e for d, e in history.items() if d in configs}
    fitting_snapshot = Snapshot(
        configs=configs,
        sources=sources,
        placement=placement,
        nodes=snapshot.nodes,
        history=history,
    )
    return fitting_snapshot, fixes


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

    def mark(self, delta: StateDelta) -> None:
        """Records every record ``delta`` names as changed (values are read at ``take``)."""
        if self._enabled:
            self._configs.update(delta.configs)
            self._sources.update(delta.sources)
            self._placement.update(delta.placement)
            self._nodes.update(delta.nodes)

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
