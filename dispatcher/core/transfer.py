"""Export and import of the whole desired state: every source's configs, and cordons.

Pure and synchronous. ``export_state`` reads the state into plain JSON values, in an
order that depends on the content alone (sources by name, each source's configs by
digest, which is a hash of the content; cordoned nodes by name), so a state exported,
imported elsewhere and exported again gives the same bytes.

``plan_import`` works out what importing a document does, before anything changes:
which sources are written (``replace``: the document's sources become the whole of
what sources hold, so a source the document does not name is emptied; ``merge``: only
the document's sources are written, each replaced by its set, the others are left),
which are skipped (the sources the dispatcher feeds itself, ``file:`` and ``k8s:``:
the file or the Kubernetes object is their truth, as for a PUT), and which nodes are
cordoned. A node the document cordons that is not registered here is skipped and
reported: a node exists only while its agent sends heartbeats, and an import never
invents one. An import never uncordons a node either: a node kept out of service by
hand stays so. Limits are checked in the plan, so a document that would make a source
hold more than it may changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any, Literal

from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName
from dispatcher.core.outcomes import SourceChange
from dispatcher.core.sourceplan import check_set_size, plan_replace
from dispatcher.core.state import ClusterState

ImportMode = Literal["replace", "merge"]
IMPORT_MODES: tuple[ImportMode, ...] = ("replace", "merge")


@dataclass(frozen=True, slots=True)
class ExportedState:
    """What an export holds: each source's configs (sources by name, configs by digest)
    and the cordoned nodes. The configs are the state's own (immutable) values, so that
    taking them under the dispatcher's lock is cheap; their JSON (``config_json``) is
    made afterwards, with the lock free."""

    sources: dict[SourceName, list[CheckConfig]]
    cordoned: list[NodeName]

    def json_sources(self) -> dict[str, list[dict[str, Any]]]:
        """The sources as the document writes them (in one go: small exports, tests)."""
        return {s: [config_json(c) for c in configs] for s, configs in self.sources.items()}


def config_json(config: CheckConfig) -> dict[str, Any]:
    """A config as a source would send it, with its defaults written out (an import
    then gives it the same digest and weight)."""
    return config.content()


def export_state(state: ClusterState) -> ExportedState:
    """Every source with its configs (the dispatcher's own sources too, for reference)
    and every cordoned node, in an order the content alone decides."""
    return ExportedState(
        sources={s: state.source_configs(s) for s in state.source_names()},  # sorted both
        cordoned=sorted(name for name, node in state.nodes.items() if node.cordoned),
    )


@dataclass(frozen=True, slots=True)
class ImportDocument:
    """A validated import document: each source's configs, and the nodes to cordon."""

    sources: Mapping[SourceName, Sequence[CheckConfig]]
    cordoned: Sequence[NodeName]


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """What an import does, worked out before anything changes."""

    mode: ImportMode
    sets: dict[SourceName, list[CheckConfig]]
    """Each source written and its whole new set (empty: the source is emptied)."""
    skipped_sources: list[SourceName]
    """The document's sources that the dispatcher feeds itself: not imported."""
    cordon: list[NodeName]
    """The document's cordoned nodes that are registered here."""
    skipped_cordons: list[NodeName]
    """The document's cordoned nodes that are not registered here."""


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """An import done (or, ``dry_run``, only planned): its plan and the counts per
    source written, against each source's own set, as a PUT reports them."""

    plan: ImportPlan
    changes: Mapping[SourceName, SourceChange]
    dry_run: bool


def plan_import(
    document: ImportDocument,
    *,
    mode: ImportMode,
    held: Mapping[SourceName, Set[Digest]],
    nodes: Collection[NodeName],
    own_prefixes: tuple[str, ...],
    max_checks_per_source: int | None,
) -> ImportPlan:
    """What importing ``document`` does, given what each source ``held`` so far
    (``ClusterState.held_by_source``) and the registered ``nodes``. Sources whose names
    start with one of ``own_prefixes`` are the dispatcher's own: never written, never
    emptied. Raises TooManyChecks, before anything changes, when a set is larger than
    a source may hold."""
    sets: dict[SourceName, list[CheckConfig]] = {}
    skipped: list[SourceName] = []
    for source in sorted(document.sources):
        if source.startswith(own_prefixes):
            skipped.append(source)
            continue
        configs = list(document.sources[source])
        check_set_size(source, configs, max_checks_per_source=max_checks_per_source)
        sets[source] = configs
    if mode == "replace":
        for source in sorted(held):
            if source not in sets and not source.startswith(own_prefixes):
                sets[source] = []
    wanted = sorted(set(document.cordoned))
    return ImportPlan(
        mode=mode,
        sets=dict(sorted(sets.items())),
        skipped_sources=skipped,
        cordon=[n for n in wanted if n in nodes],
        skipped_cordons=[n for n in wanted if n not in nodes],
    )


def preview(
    plan: ImportPlan,
    *,
    held: Mapping[SourceName, Set[Digest]],
    max_checks_per_source: int | None,
) -> dict[SourceName, SourceChange]:
    """The counts the plan's writes would report now (a dry run): what the write to
    sources plans, without its work."""
    return plan_replace(plan.sets, held=held, max_checks_per_source=max_checks_per_source).changes
