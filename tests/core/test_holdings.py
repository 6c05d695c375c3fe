"""The two-way index of sources and the checks they hold, on its own."""

from __future__ import annotations

from dispatcher.core.holdings import Holdings
from dispatcher.core.model import Digest, SourceName

S1, S2 = SourceName("s1"), SourceName("s2")
D1, D2 = Digest("d1"), Digest("d2")


def test_a_check_is_held_until_its_last_source_lets_go() -> None:
    holdings = Holdings()
    assert holdings.hold(S1, D1)
    assert holdings.hold(S2, D1)
    assert not holdings.hold(S1, D1)  # already held by s1
    assert holdings.holders(D1) == {S1, S2}

    assert not holdings.release(S2, D1)  # s1 still holds it
    assert D1 in holdings
    assert holdings.release(S1, D1)  # the last holder
    assert D1 not in holdings
    assert holdings.holders(D1) == frozenset()


def test_a_source_that_holds_nothing_is_not_listed() -> None:
    holdings = Holdings()
    holdings.hold(S2, D1)
    holdings.hold(S1, D1)
    holdings.hold(S1, D2)
    assert holdings.sources() == [S1, S2]
    assert holdings.held_by(S1) == {D1, D2}

    holdings.release(S1, D1)
    holdings.release(S1, D2)
    assert holdings.sources() == [S2]
    assert holdings.held_by(S1) == frozenset()
    assert dict(holdings.by_source) == {S2: {D1}}


def test_releasing_what_a_source_does_not_hold_changes_nothing() -> None:
    holdings = Holdings()
    holdings.hold(S1, D1)
    assert not holdings.release(S2, D1)  # s2 never held it
    assert not holdings.release(S1, D2)  # nobody holds d2
    assert holdings.holders(D1) == {S1}
    assert dict(holdings.by_source) == {S1: {D1}}


def test_holding_in_bulk_is_holding_each_pair() -> None:
    """``hold_all`` (a takeover's restore) indexes both ways as ``hold`` one by one does,
    a check two sources hold included, and a source given nothing is not listed."""
    S3 = SourceName("s3")
    D3 = Digest("d3")
    sets = {S1: frozenset({D1, D2}), S2: frozenset({D2, D3}), S3: frozenset[Digest]()}
    bulk, one_by_one = Holdings(), Holdings()
    bulk.hold_all(sets)
    for source, digests in sets.items():
        for digest in digests:
            one_by_one.hold(source, digest)

    assert dict(bulk.by_source) == dict(one_by_one.by_source) == {S1: {D1, D2}, S2: {D2, D3}}
    for digest in (D1, D2, D3):
        assert bulk.holders(digest) == one_by_one.holders(digest)
    assert bulk.holders(D2) == {S1, S2}
    # The same representation too (a check one source holds is kept as its name alone).
    assert bulk._by_check == one_by_one._by_check
    assert bulk.release(S1, D1)  # its only holder: held no more, as after ``hold``
    assert not bulk.release(S1, D2)  # s2 still holds it
    assert D2 in bulk
