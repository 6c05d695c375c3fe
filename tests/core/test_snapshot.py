"""The change tracker on its own: keys recorded, values read at ``take`` time."""

from __future__ import annotations

from dispatcher.core.model import Digest, NodeName, SourceName, make_config
from dispatcher.core.snapshot import ChangeTracker, NodeRecord, StateDelta

CONFIG = make_config(name="http", instances=[{"url": "a"}])
D1, D2 = CONFIG.digest, Digest("gone")
S1, S2 = SourceName("s1"), SourceName("s2")
N1, N2 = NodeName("n1"), NodeName("n2")
RECORD = NodeRecord(labels={"zone": "a"}, capacity=2, cordoned=False)


def take(tracker: ChangeTracker) -> StateDelta:
    """Takes against a state holding D1 (in S1, on N1) and node N1; D2, S2, N2 are gone."""
    return tracker.take(
        configs={D1: CONFIG},
        sources={S1: {D1}, S2: set()},
        placement={D1: N1},
        node_record=lambda name: RECORD if name == N1 else None,
    )


def test_a_change_is_written_with_its_current_value_and_a_missing_record_as_a_deletion() -> None:
    tracker = ChangeTracker()
    for digest in (D2, D1, D1):  # recorded twice: written once
        tracker.config(digest)
        tracker.placement(digest)
    tracker.source(S1)
    tracker.source(S2)  # an empty set is no source: deleted
    tracker.node(N2)
    tracker.node(N1)
    assert tracker

    delta = take(tracker)

    assert delta.configs == {D1: CONFIG, D2: None}
    assert list(delta.configs) == [D1, D2]  # key order, not the order of changes
    assert delta.sources == {S1: frozenset({D1}), S2: None}
    assert delta.placement == {D1: N1, D2: None}
    assert delta.nodes == {N1: RECORD, N2: None}
    assert len(delta) == 8


def test_take_starts_the_tracker_empty_again() -> None:
    tracker = ChangeTracker()
    tracker.node(N1)
    assert len(take(tracker)) == 1
    assert not tracker
    assert not take(tracker)


def test_a_disabled_tracker_records_nothing() -> None:
    tracker = ChangeTracker(enabled=False)
    tracker.config(D1)
    tracker.source(S1)
    tracker.placement(D1)
    tracker.node(N1)
    assert not tracker
    assert take(tracker) == StateDelta()


def test_a_later_delta_wins_when_merged() -> None:
    earlier = StateDelta(placement={D1: N1}, nodes={N1: RECORD})
    earlier.merge(StateDelta(placement={D1: None}, sources={S1: None}))
    assert earlier == StateDelta(placement={D1: None}, sources={S1: None}, nodes={N1: RECORD})
