"""A dispatcher's writes to sources: one writer of a source at a time, big ones in slices.

A write is planned first against the dispatcher's current state (``core.sourceplan``:
the limit check and the report) and its work then done: in the planning step when it
touches at most ``apply_slice_checks`` checks, else in slices of that many (one PUT of
100,000 checks), each one step under the dispatcher's lock, with the lock released and
the event loop free between them, so heartbeats, long polls and ``/healthz`` go on
meanwhile. Writes to the same source are serialised by a lock per source
(``SourceLocks``), so two writers never interleave their slices. The reply waits until
every slice is applied and stored; long polls wake once, after the last slice.

The dispatcher owns the steps (its lock, publishing, long polls, the store) and hands
them in; this module decides what each step does and when the loop gets a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Protocol, TypeVar

from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName
from dispatcher.core.outcomes import SourceChange
from dispatcher.core.sourceplan import SourcePlan, SourceWork, plan_add, plan_replace
from dispatcher.core.state import ClusterState
from dispatcher.errors import NoLeader

T = TypeVar("T")


class Step(Protocol):
    """Runs ``operation`` (given the clock's ``now``) as one step under the dispatcher's
    lock and publishes it, adding the nodes whose long polls are to wake to ``woken``
    instead of waking them; returns its result and the step's number for the store."""

    def __call__(
        self, operation: Callable[[float], T], woken: set[NodeName]
    ) -> Awaitable[tuple[T, int]]: ...


class SourceWrites:
    """Replaces and adds to sources' sets for a dispatcher, through its steps."""

    def __init__(
        self,
        *,
        state: Callable[[], ClusterState],
        step: Step,
        wake: Callable[[Iterable[NodeName]], None],
        stored: Callable[[int], Awaitable[None]],
        slice_checks: int,
    ) -> None:
        self._state = state
        self._step = step
        self._wake = wake
        self._stored = stored
        self._slice_checks = slice_checks
        self._locks = SourceLocks()

    async def replace(
        self, sets: Mapping[SourceName, Sequence[CheckConfig]]
    ) -> dict[SourceName, SourceChange]:
        """Makes each set the whole of its source's (``plan_replace``)."""
        async with self._locks.hold(sets):
            plan = await self._write(
                lambda state: plan_replace(
                    sets,
                    held=state.held_by_source,
                    max_checks_per_source=state.max_checks_per_source,
                ),
                replacing=sets,
            )
        return plan.changes

    async def add(self, source: SourceName, configs: Sequence[CheckConfig]) -> list[Digest]:
        """Adds to the source's set (``plan_add``)."""
        async with self._locks.hold([source]):
            plan = await self._write(
                lambda state: plan_add(
                    source,
                    configs,
                    held=state.held_by_source,
                    max_checks_per_source=state.max_checks_per_source,
                )
            )
        return list(plan.changes[source].digests)

    async def _write(
        self,
        make_plan: Callable[[ClusterState], SourcePlan],
        *,
        replacing: Collection[SourceName] = (),
    ) -> SourcePlan:
        """Plans a write and does its work, whole or in slices; returns once every slice
        is stored. The caller holds the sources' locks. A term that ends in between
        (NoLeader) leaves the slices applied so far: every piece is idempotent, and a
        source re-sends its set. ``replacing``: the sources whose whole sets it writes."""
        woken: set[NodeName] = set()
        try:
            (plan, pieces, term), seq = await self._step(
                lambda now: self._plan(make_plan, now, replacing), woken
            )
            for piece in pieces:
                # Releasing the lock is not enough: re-taking a lock nobody waits for does
                # not yield, and /healthz, say, does not wait for the lock at all.
                await asyncio.sleep(0)
                _, seq = await self._step(self._applying(piece, term), woken)
        finally:
            self._wake(woken)
        await self._stored(seq)
        return plan

    def _plan(
        self,
        make_plan: Callable[[ClusterState], SourcePlan],
        now: float,
        replacing: Collection[SourceName],
    ) -> tuple[SourcePlan, list[list[SourceWork]], ClusterState]:
        """The planning step: the plan, done at once when small, else cut in slices; and
        the state of the term it was planned in."""
        state = self._state()
        plan = make_plan(state)  # TooManyChecks here: nothing changed
        # Before any slice, and even when there is no work (a source that now holds
        # nothing): a warming-up state must not let an agent's report undo this write.
        state.note_replaced(replacing, now=now)
        if plan.size <= self._slice_checks:
            state.apply_work(plan.work, now=now)
            return plan, [], state
        return plan, list(plan.slices(self._slice_checks)), state

    def _applying(self, piece: Sequence[SourceWork], term: ClusterState) -> Callable[[float], None]:
        """A slice's step, for the term the write was planned in: when that term ended
        and another began between two slices, the rest must not land in the new term's
        state (the old term's writer, which the reply would not wait for, may not have
        stored the earlier slices), so the write fails with NoLeader instead."""

        def apply(now: float) -> None:
            if self._state() is not term:
                raise NoLeader("The leadership term changed during this write; retry it.")
            term.apply_work(piece, now=now)

        return apply


@dataclass
class _Held:
    lock: asyncio.Lock
    users: int = 0


class SourceLocks:
    """A lock per source: made when first needed, dropped when nobody holds or awaits
    it (sources come and go by the thousand)."""

    def __init__(self) -> None:
        self._locks: dict[SourceName, _Held] = {}

    @contextlib.asynccontextmanager
    async def hold(self, keys: Collection[SourceName]) -> AsyncIterator[None]:
        """Holds every key's lock, taken in sorted order (so two writers of the same
        sources cannot each hold one the other waits for)."""
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys)):
                await stack.enter_async_context(self._one(key))
            yield

    @contextlib.asynccontextmanager
    async def _one(self, key: SourceName) -> AsyncIterator[None]:
        held = self._locks.get(key)
        if held is None:
            held = self._locks[key] = _Held(asyncio.Lock())
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if held.users == 0:
                del self._locks[key]
