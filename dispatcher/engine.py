"""The dispatcher: the core state behind one external lock, the tick loop, long polls.

Every compound operation takes the lock, applies one step to the pure core, then
publishes what the step decided: a log line per decision, metrics, and a wake-up for
the long polls of every node whose configs changed. Nothing here waits on the network
while holding the lock.

A dispatcher serves one leadership term at a time: ``begin_term`` gives it a state (new,
or loaded from the shared store) and the term's epoch, ``end_term`` stops it at once:
every operation then raises NoLeader and every pending long poll ends. With a shared
store, each step's changes are handed to the term's StoreWriter under the lock, and a
reply waits until they are stored.

A write to sources bigger than ``apply_slice_checks`` (one PUT of 100,000 checks) is
planned in one step and applied in slices, each one step under the lock, with the lock
released and the event loop free between them, so heartbeats, long polls and
``/healthz`` go on meanwhile. Writes to the same source are serialised by a lock per
source, so two writers never interleave their slices; the reply waits until every slice
is applied and stored. Long polls wake once the whole write is applied (an agent then
refetches its configs once, not once per slice), one per turn of the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from dispatcher.common.clock import Clock
from dispatcher.common.tasks import run_periodically, sleep_or_stop
from dispatcher.core.model import (
    CheckConfig,
    CheckResult,
    CheckStats,
    Digest,
    NodeName,
    SourceName,
)
from dispatcher.core.outcomes import (
    Decision,
    Move,
    RebalanceOutcome,
    RejectedResult,
    SourceChange,
)
from dispatcher.core.placement import Node
from dispatcher.core.sourceplan import SourcePlan, plan_add, plan_replace
from dispatcher.core.state import NEVER, ClusterState
from dispatcher.errors import NoLeader, StoreError
from dispatcher.metrics import DispatcherMetrics
from dispatcher.settings import DispatchSettings
from dispatcher.storage.writer import StoreWriter

log = structlog.get_logger(__name__)

T = TypeVar("T")

DECISIONS_LOGGED = 20
"""A step with more decisions than this (a big write, an expired node holding many
checks) logs one summary line for them instead of a line each."""
DECISIONS_SHOWN = 5
"""Decisions shown in a summary line."""


class Dispatcher:
    def __init__(
        self,
        *,
        settings: DispatchSettings,
        clock: Clock,
        metrics: DispatcherMetrics | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._metrics = metrics
        self.state = self.new_state()
        self.lock = asyncio.Lock()
        self._waiters: dict[NodeName, asyncio.Future[None]] = {}
        self._source_locks = _KeyedLocks()
        self._answering = asyncio.Lock()
        self._flagged_dangling: set[Digest] = set()
        self._closing = False
        self._active = True
        self._epoch = 0
        self._writer: StoreWriter | None = None
        self._may_act: Callable[[], bool] = _always
        self.last_tick_at = clock.monotonic()
        """When the tick loop last ran a step (monotonic): the dispatch loop's health."""

    # ------------------------------------------------------------------- terms

    def new_state(self) -> ClusterState:
        """An empty state, warming up for ``warmup_duration_s`` from now."""
        warmup = self.settings.warmup_duration_s
        return ClusterState(
            warmup_until=self._clock.monotonic() + warmup if warmup > 0 else NEVER,
            max_checks_per_source=self.settings.max_checks_per_source,
            max_checks_per_node=self.settings.max_checks_per_node,
        )

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def active(self) -> bool:
        return self._active and self._may_act()

    def begin_term(
        self,
        *,
        state: ClusterState,
        epoch: int,
        writer: StoreWriter | None = None,
        may_act: Callable[[], bool] | None = None,
    ) -> None:
        """Starts serving a leadership term with ``state`` (call between terms only).

        ``may_act`` is asked before every step: the elector's local deadline can pass
        before its callback ends the term, and not one more step may happen after it."""
        state.set_limits(
            max_checks_per_source=self.settings.max_checks_per_source,
            max_checks_per_node=self.settings.max_checks_per_node,
        )
        self.state = state
        self._epoch = epoch
        self._writer = writer
        self._may_act = may_act or _always
        self._flagged_dangling.clear()
        self._closing = False
        self._active = True
        self.last_tick_at = self._clock.monotonic()

    def end_term(self) -> None:
        """Stops serving at once: nothing else is decided, pending long polls end, and
        the state is dropped (a later term starts from the store or from empty)."""
        if not self._active:
            return
        self._active = False
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self.state = ClusterState()
        self._flagged_dangling.clear()
        self._wake_waiters()

    # ------------------------------------------------------------- node agents

    async def node_status(
        self,
        name: NodeName,
        *,
        last_change: int,
        labels: Mapping[str, str] | None = None,
        capacity: int | None = None,
        running: Iterable[Digest] | None = None,
        stats: Mapping[Digest, CheckStats] | None = None,
        leaving: bool = False,
    ) -> bool:
        async with self.lock:
            self._guard()
            up_to_date = self.state.node_status(
                name,
                now=self._clock.monotonic(),
                last_change=last_change,
                labels=labels,
                capacity=capacity,
                running=running,
                stats=stats,
                leaving=leaving,
            )
            seq = self._publish()
        await self._stored(seq)
        if leaving:
            log.info("node_left", node=name)
        return up_to_date

    async def node_configs(
        self, name: NodeName, *, since: int | None = None, wait_s: float = 0.0
    ) -> tuple[int, list[CheckConfig]]:
        """The node's configs; with ``since``, waits up to ``wait_s`` for a change.

        Raises UnknownNode when the node is not registered or expires during the wait.
        """
        # The deadline is on the injected clock, so a test moves it on instead of waiting.
        deadline = self._clock.monotonic() + wait_s
        while True:
            async with self.lock:
                self._guard()
                current = self.state.node(name).last_change  # raises UnknownNode
                remaining = deadline - self._clock.monotonic()
                if since is None or current != since or remaining <= 0 or self._closing:
                    answer = self.state.node_configs(name)  # built only when answering
                    seq = self._seq()
                    break
                waiter = self._waiters.get(name)
                if waiter is None or waiter.done():
                    waiter = self._waiters[name] = asyncio.get_running_loop().create_future()
            # Shielded: the waiter is shared by every long poll of this node.
            with contextlib.suppress(TimeoutError):
                async with self._clock.timeout(remaining):
                    await asyncio.shield(waiter)
        await self._stored(seq)  # never hand out a placement the store has not got
        await self._answer_turn()
        return answer

    async def _answer_turn(self) -> None:
        """Hands out config answers one per turn of the event loop: the caller builds
        its reply (thousands of configs) as soon as it has the answer, and many agents
        fetch at once after a change; their replies must not all be built in one turn."""
        await self._answering.acquire()
        asyncio.get_running_loop().call_soon(self._answering.release)

    async def record_results(
        self, name: NodeName, results: Sequence[CheckResult]
    ) -> tuple[int, list[RejectedResult]]:
        async with self.lock:
            self._guard()
            return self.state.record_results(name, results, now_wall=self._clock.time())

    # ---------------------------------------------------------- config sources

    async def replace_source(
        self, source: SourceName, configs: Sequence[CheckConfig]
    ) -> SourceChange:
        return (await self.replace_sources({source: configs}))[source]

    async def replace_sources(
        self, sets: Mapping[SourceName, Sequence[CheckConfig]]
    ) -> dict[SourceName, SourceChange]:
        """Makes each set the whole of its source's (sourceplan.plan_replace); raises
        TooManyChecks, changing nothing, when a set is larger than a source may hold."""
        async with self._source_locks.hold(sets):
            plan = await self._write(
                lambda state: plan_replace(
                    sets,
                    held=state.held_by_source,
                    max_checks_per_source=state.max_checks_per_source,
                )
            )
        changes = plan.changes
        for source, change in changes.items():
            if change.added or change.removed:
                log.info(
                    "source_replaced",
                    source=source,
                    added=change.added,
                    removed=change.removed,
                    unchanged=change.unchanged,
                )
        return changes

    async def add_to_source(
        self, source: SourceName, configs: Sequence[CheckConfig]
    ) -> list[Digest]:
        """Adds to the source's set; raises TooManyChecks, changing nothing, when the
        source would then hold more checks than it may."""
        async with self._source_locks.hold([source]):
            plan = await self._write(
                lambda state: plan_add(
                    source,
                    configs,
                    held=state.held_by_source,
                    max_checks_per_source=state.max_checks_per_source,
                )
            )
        return list(plan.changes[source].digests)

    async def remove_check(self, digest: Digest, *, source: SourceName | None) -> None:
        await self._step(lambda now: self.state.remove_check(digest, source=source, now=now))

    # ------------------------------------------------------------------ admins

    async def cordon(self, name: NodeName) -> Node:
        return await self._step(lambda now: self.state.cordon(name))

    async def uncordon(self, name: NodeName) -> Node:
        return await self._step(lambda now: self.state.uncordon(name, now=now))

    async def drain(self, name: NodeName) -> tuple[Node, list[Move]]:
        """Drains the node; returns it and the moves, from the same step."""

        def drain(now: float) -> tuple[Node, list[Move]]:
            moves = self.state.drain(name, now=now)
            return self.state.node(name), moves

        node, moves = await self._step(drain)
        self._count_moves("drain", moves)
        return node, moves

    async def isolate(self, digest: Digest) -> tuple[NodeName, list[Move]]:
        node, moves = await self._step(lambda now: self.state.isolate(digest, now=now))
        self._count_moves("isolate", moves)
        return node, moves

    def _count_moves(self, trigger: str, moves: Sequence[Move]) -> None:
        if self._metrics is not None and moves:
            self._metrics.rebalance_moves.labels(trigger=trigger).inc(len(moves))

    async def read(self, view: Callable[[ClusterState], T]) -> T:
        """Runs a read-only view of the state under the lock: a consistent snapshot."""
        async with self.lock:
            self._guard()
            result = view(self.state)
            seq = self._seq()
        await self._stored(seq)
        return result

    # -------------------------------------------------------------------- ticks

    async def tick(self) -> None:
        """Expires silent nodes (re-dispatching their checks) and places dangling ones."""
        started = self._clock.monotonic()
        async with self.lock:
            if not self.active:
                return
            now = self._clock.monotonic()
            expired = self.state.expire_nodes(
                now=now, timeout_s=self.settings.node_expiration_timeout_s
            )
            self.state.dispatch_dangling(now=now)
            self._publish()
            dangling = dict(self.state.dangling)
            self.last_tick_at = now
        for name in expired:
            log.warning("node_expired", node=name)
        if self._metrics is not None:
            self._metrics.expiries.inc(len(expired))
            self._metrics.tick_seconds.observe(self._clock.monotonic() - started)
        self._flag_long_dangling(dangling, now=now)

    async def run(self, stop: asyncio.Event) -> None:
        """The term's loops: the tick (at least every second) and periodic rebalancing."""
        async with asyncio.TaskGroup() as loops:
            loops.create_task(
                run_periodically(
                    "dispatch_tick",
                    self.tick,
                    period_s=self.settings.tick_interval_s,
                    stop=stop,
                    clock=self._clock,
                ),
                name="dispatch_tick",
            )
            loops.create_task(self._rebalance_periodically(stop), name="rebalance")

    async def _rebalance_periodically(self, stop: asyncio.Event) -> None:
        """Every ``rebalance_period_s``, the first one period after the term starts (the
        costs are measured from agents' stats by then)."""
        while not await sleep_or_stop(stop, self.settings.rebalance_period_s, clock=self._clock):
            if not self.active or self.warming_up():
                continue
            try:
                await self.rebalance(trigger="periodic")
            except NoLeader:
                continue
            except Exception:
                log.exception("periodic_step_failed", task="rebalance")

    # --------------------------------------------------------------- rebalance

    async def rebalance(
        self, *, force: bool = False, dry_run: bool = False, trigger: str = "api"
    ) -> RebalanceOutcome:
        """Plans a rebalance and applies it (see ClusterState.rebalance); logs each move
        with its reason, and counts the run, its duration and its moves."""
        started = time.perf_counter()
        settings = self.settings
        outcome = await self._step(
            lambda now: self.state.rebalance(
                now=now,
                margin=settings.rebalance_margin,
                min_improvement=settings.rebalance_min_gain,
                force=force,
                dry_run=dry_run,
            )
        )
        plan = outcome.plan
        if outcome.applied:
            for move in outcome.moves:
                assert move.loads is not None
                s_before, s_after, d_before, d_after = move.loads
                log.info(
                    "rebalance_move",
                    digest=move.digest,
                    check=move.check_name,
                    cost=round(move.cost, 6),
                    source=move.source_node,
                    dest=move.dest_node,
                    reason=(
                        f"{move.source_node} at {s_before:.3g} is above the bound "
                        f"{plan.bound:.3g} (mean {plan.mean:.3g}); {move.dest_node} at "
                        f"{d_before:.3g} has room"
                    ),
                    source_load=[round(s_before, 6), round(s_after, 6)],
                    dest_load=[round(d_before, 6), round(d_after, 6)],
                )
        log.info(
            "rebalanced" if outcome.applied else "rebalance_not_applied",
            trigger=trigger,
            outcome=outcome.reason,
            moves=len(outcome.moves),
            spread_before=round(plan.spread_before, 4),
            spread_after=round(plan.spread_after, 4),
            force=force,
            dry_run=dry_run,
        )
        if self._metrics is not None:
            self._metrics.rebalance_seconds.observe(time.perf_counter() - started)
            self._metrics.rebalances.labels(trigger=trigger, outcome=outcome.reason).inc()
            if outcome.applied:
                self._count_moves("rebalance", outcome.moves)
        return outcome

    def warming_up(self) -> bool:
        return self.state.warming_up(self._clock.monotonic())

    def wake_all(self) -> None:
        """Ends every pending long poll, and makes new ones answer at once (shutdown)."""
        self._closing = True
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def _wake(self, names: Iterable[NodeName]) -> None:
        """Wakes the long polls of these nodes, one per turn of the event loop: each then
        builds its node's configs reply, and a step that changes thousands of nodes must
        not have every reply built in one turn (the loop could serve nothing else)."""
        waiters = [
            waiter
            for name in names
            if (waiter := self._waiters.pop(name, None)) is not None and not waiter.done()
        ]
        if not waiters:
            return
        loop = asyncio.get_running_loop()

        def wake(index: int) -> None:
            if not waiters[index].done():
                waiters[index].set_result(None)
            if index + 1 < len(waiters):
                loop.call_soon(wake, index + 1)

        wake(0)

    # ---------------------------------------------------------------- internal

    async def _write(self, make_plan: Callable[[ClusterState], SourcePlan]) -> SourcePlan:
        """Plans a write to sources and does its work: in the planning step when it
        touches at most ``apply_slice_checks`` checks, else in slices of that many, each
        one step under the lock, the lock released and the loop free in between. The
        caller holds the sources' locks. Returns once every slice is stored. A term that
        ends in between (NoLeader) leaves the slices applied so far: every piece is
        idempotent, and a source re-sends its set."""
        size = self.settings.apply_slice_checks
        woken: set[NodeName] = set()
        seq = 0
        try:
            async with self.lock:
                self._guard()
                try:
                    plan = make_plan(self.state)  # TooManyChecks here: nothing changed
                    if plan.size <= size:
                        self.state.apply_work(plan.work, now=self._clock.monotonic())
                        pieces = []
                    else:
                        pieces = list(plan.slices(size))
                finally:
                    seq = self._publish(woken)
            for piece in pieces:
                # Releasing the lock is not enough: re-taking a lock nobody waits for does
                # not yield, and /healthz, say, does not wait for the lock at all.
                await asyncio.sleep(0)
                async with self.lock:
                    self._guard()
                    try:
                        self.state.apply_work(piece, now=self._clock.monotonic())
                    finally:
                        seq = self._publish(woken)
        finally:
            self._wake(woken)
        await self._stored(seq)
        return plan

    async def _step(self, operation: Callable[[float], T]) -> T:
        async with self.lock:
            self._guard()
            try:
                result = operation(self._clock.monotonic())
            finally:
                seq = self._publish()
        await self._stored(seq)
        return result

    def _guard(self) -> None:
        if not self.active:
            raise NoLeader("This replica has just stopped leading; retry shortly.")

    def _seq(self) -> int:
        return self._writer.submitted if self._writer is not None else 0

    async def _stored(self, seq: int) -> None:
        """Waits until the shared store holds every step up to ``seq``."""
        writer = self._writer
        if writer is None or writer.flushed >= seq:
            return
        try:
            await writer.wait_flushed(seq)
        except StoreError as exc:
            raise NoLeader(f"The shared store did not confirm the change: {exc}.") from exc

    def _publish(self, woken: set[NodeName] | None = None) -> int:
        """Logs and counts the step's decisions, wakes long polls (or, with ``woken``,
        adds their nodes to it for the caller to wake later), hands the step's changes
        to the store writer; returns the step's number for ``_stored``."""
        seq = 0
        if self._writer is not None:
            seq = self._writer.submit(self.state.take_delta())
        events = self.state.take_events()
        self._log_decisions(events.decisions)
        changed = (*events.changed_nodes, *events.removed_nodes)
        if woken is None:
            self._wake(changed)
        else:
            woken.update(changed)
        return seq

    def _log_decisions(self, decisions: Sequence[Decision]) -> None:
        """A line per decision; for a big step one line with the counts and the first
        few instead (``dispatch_decisions_summarized``: 100,000 lines would take longer
        to write than the step itself, and say less)."""
        by_reason = Counter(d.reason for d in decisions)
        if self._metrics is not None:
            for reason, count in by_reason.items():
                self._metrics.decisions.labels(reason=reason).inc(count)
        if len(decisions) > DECISIONS_LOGGED:
            log.info(
                "dispatch_decisions_summarized",
                decisions=len(decisions),
                by_reason=dict(sorted(by_reason.items())),
                placed=sum(1 for d in decisions if d.node is not None),
                nodes=len({d.node for d in decisions if d.node is not None}),
                shown=[_decision_fields(d) for d in decisions[:DECISIONS_SHOWN]],
                note=(
                    f"more than {DECISIONS_LOGGED} decisions in one step: counted here "
                    f"instead of a dispatch_decision line each; the first {DECISIONS_SHOWN} "
                    "shown"
                ),
            )
            return
        for decision in decisions:
            log.info("dispatch_decision", **_decision_fields(decision))

    def _flag_long_dangling(self, dangling: Mapping[Digest, float], *, now: float) -> None:
        threshold = self.settings.dangling_warning_s
        self._flagged_dangling &= dangling.keys()
        for digest, since in dangling.items():
            if now - since > threshold and digest not in self._flagged_dangling:
                self._flagged_dangling.add(digest)
                log.warning("check_dangling_long", digest=digest, dangling_s=round(now - since, 1))


def _always() -> bool:
    return True


def _decision_fields(decision: Decision) -> dict[str, object]:
    return {
        "digest": decision.digest,
        "check": decision.check_name,
        "node": decision.node,
        "previous": decision.previous,
        "reason": decision.reason,
    }


@dataclass
class _Held:
    lock: asyncio.Lock
    users: int = 0


class _KeyedLocks:
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
