"""Dispatcher.import_state: the reply waits for the store, a big import goes in slices
through the sources' write path, a dry run writes nothing.

Assertions are on the order of events and on counts, never on durations.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from dispatcher.common.clock import FakeClock
from dispatcher.core.model import CheckConfig, NodeName, SourceName, make_config
from dispatcher.core.snapshot import StateDelta
from dispatcher.core.sourceplan import SourceWork
from dispatcher.core.transfer import ImportDocument
from dispatcher.engine import Dispatcher
from dispatcher.settings import DispatchSettings
from dispatcher.storage.memory import MemoryStateStore
from dispatcher.storage.writer import StoreWriter

OWN = ("file:", "k8s:")
SLICE = 10
N1, N2 = NodeName("n1"), NodeName("n2")
GUARD_S = 10.0
"""Only keeps a broken test from hanging; never a measure."""


def checks(prefix: str, count: int) -> list[CheckConfig]:
    return [
        make_config(name="http", instances=[{"url": f"http://{prefix}{i}/"}]) for i in range(count)
    ]


class GatedStore(MemoryStateStore):
    """The in-memory store, whose writes can be held in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def write(self, delta: StateDelta, *, epoch: int) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().write(delta, epoch=epoch)


@dataclass
class Term:
    dispatcher: Dispatcher
    store: GatedStore


@pytest.fixture
async def term() -> AsyncIterator[Term]:
    """A dispatcher leading a term whose changes go to a (gated) store."""
    clock = FakeClock()
    dispatcher = Dispatcher(settings=DispatchSettings(apply_slice_checks=SLICE), clock=clock)
    store = GatedStore()
    await store.claim(epoch=1)
    state = dispatcher.new_state(track_changes=True)
    writer = StoreWriter(
        store, epoch=1, on_fenced=lambda: None, clock=clock, snapshot=state.snapshot
    )
    dispatcher.begin_term(state=state, epoch=1, writer=writer)
    task = asyncio.create_task(writer.run(), name="store_writer")
    try:
        yield Term(dispatcher, store)
    finally:
        dispatcher.end_term()
        store.gate.set()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_import_returns_only_once_the_store_holds_it(term: Term) -> None:
    dispatcher, store = term.dispatcher, term.store
    await dispatcher.node_status(N1, last_change=-1)
    store.gate.clear()
    store.entered.clear()
    document = ImportDocument(sources={SourceName("ci"): checks("c", 3)}, cordoned=[N1])

    task = asyncio.create_task(dispatcher.import_state(document, mode="replace", own_prefixes=OWN))
    async with asyncio.timeout(GUARD_S):
        await store.entered.wait()
    await asyncio.sleep(0)
    assert not task.done(), "no reply while the store has not confirmed"

    store.gate.set()
    async with asyncio.timeout(GUARD_S):
        outcome = await task

    assert outcome.changes[SourceName("ci")].added == 3
    assert store.sources[SourceName("ci")] == {c.digest for c in checks("c", 3)}
    assert store.nodes[N1].cordoned


async def test_a_big_import_goes_in_slices_with_a_heartbeat_answered_in_between(
    term: Term,
) -> None:
    dispatcher = term.dispatcher
    await dispatcher.node_status(N1, last_change=-1)
    state = dispatcher.state
    apply = state.apply_work
    slices: list[int] = []
    first = asyncio.Event()

    def recording(work: Sequence[SourceWork], *, now: float) -> None:
        apply(work, now=now)
        slices.append(sum(len(piece) for piece in work))
        first.set()

    state.apply_work = recording  # type: ignore[method-assign]
    document = ImportDocument(
        sources={SourceName(f"s{i}"): checks(f"s{i}-", 3 * SLICE) for i in range(4)}, cordoned=[]
    )
    done: list[str] = []

    task = asyncio.create_task(dispatcher.import_state(document, mode="merge", own_prefixes=OWN))
    task.add_done_callback(lambda _: done.append("import"))
    async with asyncio.timeout(GUARD_S):
        await first.wait()
    await dispatcher.node_status(N2, last_change=-1)
    done.append("heartbeat")
    async with asyncio.timeout(GUARD_S):
        outcome = await task

    assert done == ["heartbeat", "import"]
    assert len(slices) == 12
    assert max(slices) == SLICE
    assert sum(c.added for c in outcome.changes.values()) == 12 * SLICE
    assert len(term.store.configs) == 12 * SLICE


async def test_a_dry_run_writes_nothing_to_the_state_or_the_store(term: Term) -> None:
    dispatcher, store = term.dispatcher, term.store
    await dispatcher.node_status(N1, last_change=-1)
    writes = store.writes
    document = ImportDocument(sources={SourceName("ci"): checks("c", 3)}, cordoned=[N1])

    outcome = await dispatcher.import_state(
        document, mode="replace", own_prefixes=OWN, dry_run=True
    )

    assert outcome.dry_run
    assert outcome.changes[SourceName("ci")].added == 3
    assert outcome.plan.cordon == [N1]
    assert dispatcher.state.configs == {}
    assert not dispatcher.state.node(N1).cordoned
    assert store.writes == writes
