"""Export and import in the pure core: the export's order, what an import plans, and the
round trip (export, import into an empty state, export again: the same values)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.core.model import CheckConfig, NodeName, SourceName, make_config
from dispatcher.core.state import ClusterState
from dispatcher.core.transfer import (
    ImportDocument,
    ImportMode,
    config_json,
    export_state,
    plan_import,
    preview,
)
from dispatcher.errors import TooManyChecks

OWN = ("file:", "k8s:")
A, B, C = SourceName("api:a"), SourceName("api:b"), SourceName("api:c")
FILE = SourceName("file:web.yaml")
N1, N2 = NodeName("n1"), NodeName("n2")


def check(label: str, **fields: Any) -> CheckConfig:
    return make_config(name="http", instances=[{"url": f"http://{label}/"}], **fields)


def state_with(
    sources: dict[SourceName, list[CheckConfig]],
    *,
    nodes: tuple[NodeName, ...] = (),
    cordoned: tuple[NodeName, ...] = (),
) -> ClusterState:
    state = ClusterState()
    for name in nodes:
        state.node_status(name, now=0.0, last_change=-1)
    for name in cordoned:
        state.cordon(name)
    state.replace_sources(sources, now=0.0)
    return state


def digests(sets: dict[SourceName, list[CheckConfig]]) -> dict[SourceName, list[str]]:
    """Configs compare by identity (CheckConfig has eq=False): compare their digests."""
    return {source: [c.digest for c in configs] for source, configs in sets.items()}


def document_of(state: ClusterState) -> ImportDocument:
    """What an import reads back from ``state``'s export (the API does this over JSON)."""
    exported = export_state(state)
    return ImportDocument(
        sources={
            SourceName(s): [make_config(**c) for c in cs]
            for s, cs in exported.json_sources().items()
        },
        cordoned=[NodeName(n) for n in exported.cordoned],
    )


def exported_values(state: ClusterState) -> dict[str, Any]:
    exported = export_state(state)
    return {"sources": exported.json_sources(), "cordoned": exported.cordoned}


def imported(
    document: ImportDocument,
    into: ClusterState,
    *,
    mode: ImportMode = "replace",
    limit: int | None = None,
) -> ClusterState:
    """What the engine does with a plan: cordon, then write the sources."""
    plan = plan_import(
        document,
        mode=mode,
        held=into.held_by_source,
        nodes=into.nodes,
        own_prefixes=OWN,
        max_checks_per_source=limit,
    )
    for name in plan.cordon:
        into.cordon(name)
    into.replace_sources(plan.sets, now=1.0)
    return into


# ------------------------------------------------------------------ export


def test_the_export_is_ordered_by_content_alone() -> None:
    configs = [check(f"c{i}") for i in range(6)]
    state = state_with(
        {B: configs[3:], A: configs[:4], FILE: configs[5:]},
        nodes=(N2, N1),
        cordoned=(N2, N1),
    )

    exported = export_state(state)

    assert list(exported.sources) == [A, B, FILE]  # sorted; the file source for reference
    for source, items in exported.json_sources().items():
        held = [c for c in configs if c.digest in state.held_by_source[SourceName(source)]]
        assert items == [config_json(c) for c in sorted(held, key=lambda c: c.digest)]
    assert exported.cordoned == [N1, N2]


def test_an_exported_config_has_its_defaults_written_out() -> None:
    config = make_config(name="tcp", instances=[{"host": "h", "port": 1}], interval_s=5)
    assert config_json(config) == {
        "name": "tcp",
        "instances": [{"host": "h", "port": 1}],
        "init_config": {},
        "interval_s": 5.0,
        "timeout_s": 5.0,
        "node_selector": {},
        "weight": 1.0,
    }
    assert make_config(**config_json(config)).digest == config.digest


def test_an_empty_state_exports_nothing() -> None:
    assert exported_values(ClusterState()) == {"sources": {}, "cordoned": []}


# ------------------------------------------------------------------ plans


def test_replace_empties_the_sources_the_document_does_not_name_but_not_the_own_ones() -> None:
    state = state_with({A: [check("a")], B: [check("b")], FILE: [check("f")]})
    document = ImportDocument(sources={A: [check("a2")], C: [check("c")]}, cordoned=[])

    plan = plan_import(
        document,
        mode="replace",
        held=state.held_by_source,
        nodes=state.nodes,
        own_prefixes=OWN,
        max_checks_per_source=None,
    )

    assert digests(plan.sets) == {A: [check("a2").digest], B: [], C: [check("c").digest]}
    assert plan.skipped_sources == []


def test_merge_writes_only_the_document_s_sources() -> None:
    state = state_with({A: [check("a")], B: [check("b")]})
    document = ImportDocument(sources={A: [check("a2")], C: []}, cordoned=[])

    plan = plan_import(
        document,
        mode="merge",
        held=state.held_by_source,
        nodes=state.nodes,
        own_prefixes=OWN,
        max_checks_per_source=None,
    )

    assert digests(plan.sets) == {A: [check("a2").digest], C: []}
    assert plan.mode == "merge"


@pytest.mark.parametrize("mode", ["replace", "merge"])
def test_the_dispatcher_s_own_sources_in_a_document_are_skipped(mode: ImportMode) -> None:
    k8s = SourceName("k8s:service:default:shop")
    document = ImportDocument(
        sources={FILE: [check("f")], k8s: [check("k")], A: [check("a")]}, cordoned=[]
    )

    plan = plan_import(
        document, mode=mode, held={}, nodes={}, own_prefixes=OWN, max_checks_per_source=None
    )

    assert digests(plan.sets) == {A: [check("a").digest]}
    assert plan.skipped_sources == [FILE, k8s]


def test_cordons_of_registered_nodes_are_planned_the_others_skipped() -> None:
    state = state_with({}, nodes=(N1,))
    document = ImportDocument(sources={}, cordoned=[NodeName("ghost"), N1, N1])

    plan = plan_import(
        document,
        mode="merge",
        held=state.held_by_source,
        nodes=state.nodes,
        own_prefixes=OWN,
        max_checks_per_source=None,
    )

    assert plan.cordon == [N1]
    assert plan.skipped_cordons == ["ghost"]


def test_a_set_beyond_the_per_source_limit_is_refused_in_the_plan() -> None:
    document = ImportDocument(
        sources={A: [check("1"), check("2"), check("1")], B: [check("3"), check("4"), check("5")]},
        cordoned=[],
    )
    with pytest.raises(TooManyChecks) as raised:
        plan_import(
            document, mode="replace", held={}, nodes={}, own_prefixes=OWN, max_checks_per_source=2
        )
    assert raised.value.details == {"source": B, "checks": 3, "limit": 2}


def test_preview_counts_against_each_source_s_own_set() -> None:
    state = state_with({A: [check("a"), check("keep")], B: [check("b")]})
    document = ImportDocument(sources={A: [check("keep"), check("new")]}, cordoned=[])
    plan = plan_import(
        document,
        mode="replace",
        held=state.held_by_source,
        nodes=state.nodes,
        own_prefixes=OWN,
        max_checks_per_source=None,
    )

    changes = preview(plan, held=state.held_by_source, max_checks_per_source=None)

    assert {s: (c.added, c.removed, c.unchanged) for s, c in changes.items()} == {
        A: (1, 1, 1),
        B: (0, 1, 0),
    }
    assert state.held_count(A) == 2, "a preview changes nothing"


# ------------------------------------------------------------- round trip


def test_export_import_export_gives_the_same_values() -> None:
    shared = check("shared", weight=2.5)
    source_state = state_with(
        {
            A: [check("a", interval_s=30, node_selector={"zone": "z1"}), shared],
            B: [shared, check("b", timeout_s=1)],
            FILE: [check("f")],
        },
        nodes=(N1, N2),
        cordoned=(N1,),
    )
    target = state_with({C: [check("old")]}, nodes=(N1, N2))

    after = imported(document_of(source_state), target)

    expected = exported_values(source_state)
    del expected["sources"][FILE]  # skipped on import
    assert exported_values(after) == expected
    assert after.node(N1).cordoned
    assert not after.node(N2).cordoned


def test_an_import_never_uncordons() -> None:
    target = state_with({}, nodes=(N1, N2), cordoned=(N2,))
    after = imported(ImportDocument(sources={}, cordoned=[N1]), target)
    assert after.node(N1).cordoned
    assert after.node(N2).cordoned


_labels = st.text("abcxyz", min_size=1, max_size=4)


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["api:a", "api:b", "ci", "file:x.yaml", "k8s:svc:d:s"]),
        st.lists(st.tuples(_labels, st.floats(0.1, 10)), max_size=6),
        max_size=5,
    ),
    st.sampled_from(["replace", "merge"]),
)
def test_round_trip_into_an_empty_state(
    sets: dict[str, list[tuple[str, float]]], mode: ImportMode
) -> None:
    # Same label, same digest: a weight differs only where one source holds it twice.
    sources = {
        SourceName(s): [check(label, weight=round(w, 3)) for label, w in items]
        for s, items in sets.items()
    }
    original = state_with(sources)

    after = imported(document_of(original), ClusterState(), mode=mode)

    expected = exported_values(original)
    for name in [s for s in expected["sources"] if s.startswith(OWN)]:
        del expected["sources"][name]
    assert exported_values(after) == expected
