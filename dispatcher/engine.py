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

A big write to sources is applied in slices with the lock free in between, one writer
of a source at a time (``sourcewrites``); its reply waits until every slice is applied
and stored, and long polls wake once the whole write is applied (an agent then refetches
its configs once, not once per slice). A rebalance reads its inputs in slices under the
lock, plans in slices with the lock free and makes its moves in one step (``rebalance``).
Long polls are woken, and answered, one per turn of the event loop (``wakeups``). What
the steps decided is logged and counted by ``steplog``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from dispatcher.common.clock import Clock
from dispatcher.common.tasks import run_periodically, sleep_or_stop
from dispatcher.core.history import HistoryLimits, LoadedHistory
from dispatcher.core.model import CheckConfig, CheckResult, CheckStats, Digest, NodeName, SourceName
from dispatcher.core.outcomes import Move, RebalanceOutcome, RejectedResult, SourceChange
from dispatcher.core.placement import Node
from dispatcher.core.rebalance import SLICE_WORK, Item, NodeLoad, plan_steps
from dispatcher.core.rebuild import RunningConfig, UnreadableReport, split_intact
from dispatcher.core.state import NEVER, ClusterState
from dispatcher.core.transfer import (
    ImportDocument,
    ImportMode,
    ImportOutcome,
    ImportPlan,
    plan_import,
    preview,
)
from dispatcher.errors import NoLeader, StoreError
from dispatcher.metrics import DispatcherMetrics
from dispatcher.settings import DispatchSettings
from dispatcher.sourcewrites import SourceWrites
from dispatcher.steplog import StepLog
from dispatcher.storage.writer import StoreWriter
from dispatcher.wakeups import WakeUps, settle

log = structlog.get_logger(__name__)

FINAL_WRITE_S = 2.0
"""How long a planned stop waits for the results that wait for their write."""

MOVES_LOGGED_PER_TURN = 200
"""Rebalance moves logged in one turn of the event loop (a line each, 10 to 30
microseconds: 0.05 to 0.1 s for the 4,600 moves of 100,000 checks on 10,000 nodes)."""

HISTORY_INSTALL_SLICE = 5_000
"""Checks whose stored history is installed in one step (``install_history``): at 5
results each, a few milliseconds under the lock."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _RebalanceInputs:
    """What a rebalance plans from, and the state and term it was read in."""

    state: ClusterState
    epoch: int
    warming_up: bool
    nodes: list[NodeLoad]
    items: list[Item]


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
        self._steplog = StepLog(metrics)
        self.state = self.new_state()
        self.lock = asyncio.Lock()
        self._wakeups = WakeUps()
        self._sources = SourceWrites(
            state=lambda: self.state,
            step=self._locked_step,
            wake=self._wakeups.wake,
            stored=self._stored,
            slice_checks=settings.apply_slice_checks,
        )
        self._rebalancing = asyncio.Lock()
        self.rebalance_slice_work = SLICE_WORK
        """The planner's work per slice (``core.rebalance.SLICE_WORK``)."""
        self._closing = False
        self._active = True
        self._epoch = 0
        self._writer: StoreWriter | None = None
        self._may_act: Callable[[], bool] = _always
        self.last_tick_at = clock.monotonic()
        """When the tick loop last ran a step (monotonic): the dispatch loop's health."""

    # ------------------------------------------------------------------- terms

    def new_state(self, *, track_changes: bool = False) -> ClusterState:
        """An empty state, warming up for ``warmup_duration_s`` from now; a store follows
        a tracking one."""
        warmup = self.settings.warmup_duration_s
        return ClusterState(
            warmup_until=self._clock.monotonic() + warmup if warmup > 0 else NEVER,
            track_changes=track_changes,
            max_checks_per_source=self.settings.max_checks_per_source,
            max_checks_per_node=self.settings.max_checks_per_node,
            history_limits=self.history_limits,
        )

    @property
    def history_limits(self) -> HistoryLimits:
        return HistoryLimits(
            max_results=self.settings.history_max_results,
            max_total=self.settings.history_max_total,
            max_age_s=self.settings.history_max_age_s,
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
            history_limits=self.history_limits,
        )
        self.state = state
        self._epoch = epoch
        self._writer = writer
        self._may_act = may_act or _always
        self._steplog.forget_dangling()
        self._closing = False
        self._active = True
        self.last_tick_at = self._clock.monotonic()

    async def flush(self) -> None:
        """Before a planned stop: writes the results that wait for their timer (they wait
        up to a second to share a write). Only those, and for ``FINAL_WRITE_S`` at most:
        a write already under way is the store's to finish, and a stop never waits on a
        store that does not answer. A failure is logged; the term ends either way."""
        writer = self._writer
        if writer is None or not self._active or not writer.history_waiting:
            return
        try:
            async with self._clock.timeout(FINAL_WRITE_S):
                await writer.wait_flushed(writer.submitted)
        except (StoreError, TimeoutError) as exc:
            log.warning("final_write_failed", error=str(exc) or "timed out")

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
        self._steplog.forget_dangling()
        self._wakeups.wake_all()

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
        running_configs: Sequence[RunningConfig] | None = None,
        unreadable: Sequence[UnreadableReport] = (),
    ) -> bool:
        """A heartbeat; with ``running_configs``, a warming-up leader adopts them (rebuild
        from the agents), stored before the reply as every change is. Reports that do not
        hold (a digest that does not match the content; ``unreadable`` ones) are dropped
        with a warning each, the rest adopted: the heartbeat succeeds all the same."""
        intact, mismatched = split_intact(running_configs or ())
        async with self.lock:
            self._guard()
            now = self._clock.monotonic()
            up_to_date = self.state.node_status(
                name,
                now=now,
                last_change=last_change,
                labels=labels,
                capacity=capacity,
                running=running,
                stats=stats,
                leaving=leaving,
            )
            if running_configs is not None:
                self.state.adopt_running(name, intact, now=now)
            seq = self._publish()
        _log_dropped_reports(name, mismatched, unreadable)
        await self._stored(seq)
        if leaving:
            log.info("node_left", node=name)
        return up_to_date

    def wants_running_configs(self, name: NodeName) -> bool:
        """Whether the node's status reply asks for ``running_configs`` (see
        ClusterState.wants_running_configs)."""
        return self.active and self.state.wants_running_configs(name, now=self._clock.monotonic())

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
                waiter = self._wakeups.waiter(name)
            # A timer and a future: the least a held poll can keep (see WakeUps).
            timer = self._clock.call_later(remaining, functools.partial(settle, waiter))
            try:
                await waiter
            finally:
                timer.cancel()
                self._wakeups.forget(name, waiter)
        await self._stored(seq)  # never hand out a placement the store has not got
        await self._wakeups.answer_turn(len(answer[1]))  # many fetch at once after a change
        return answer

    async def record_results(
        self, name: NodeName, results: Sequence[CheckResult]
    ) -> tuple[int, list[RejectedResult]]:
        async with self.lock:
            self._guard()
            recorded = self.state.record_results(name, results, now_wall=self._clock.time())
            if self._writer is not None:
                # The history goes to the store with the next group commit; the reply
                # does not wait for it (a result lost in a crash is one run of many).
                self._writer.submit(self.state.take_delta())
            return recorded

    # ---------------------------------------------------------- config sources

    async def replace_source(
        self, source: SourceName, configs: Sequence[CheckConfig]
    ) -> SourceChange:
        return (await self.replace_sources({source: configs}))[source]

    async def replace_sources(
        self, sets: Mapping[SourceName, Sequence[CheckConfig]]
    ) -> dict[SourceName, SourceChange]:
        """Makes each set the whole of its source's, in slices when big (``sourcewrites``);
        raises TooManyChecks, changing nothing, when a set is larger than a source may hold."""
        changes = await self._sources.replace(sets)
        self._steplog.source_changes(changes)
        return changes

    async def add_to_source(
        self, source: SourceName, configs: Sequence[CheckConfig]
    ) -> list[Digest]:
        """Adds to the source's set; raises TooManyChecks, changing nothing, when the
        source would then hold more checks than it may."""
        return await self._sources.add(source, configs)

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
        self._steplog.moves("drain", moves)
        return node, moves

    async def isolate(self, digest: Digest) -> tuple[NodeName, list[Move]]:
        node, moves = await self._step(lambda now: self.state.isolate(digest, now=now))
        self._steplog.moves("isolate", moves)
        return node, moves

    async def install_history(self, loaded: LoadedHistory) -> int:
        """Installs the history a store kept, read after this term began serving, in
        slices of ``HISTORY_INSTALL_SLICE`` checks with the lock free in between (a
        heartbeat waits behind one slice, not behind 100,000 checks' history); then
        every check is trimmed to its share. Returns the checks given their history.
        Raises NoLeader when the term ends first (its state is gone)."""
        state = self.state
        installed = 0
        for part in loaded.slices(HISTORY_INSTALL_SLICE):
            async with self.lock:
                self._guard()
                if self.state is not state:
                    raise NoLeader("The term this history was loaded for has ended.")
                installed += state.history.install(part, held=state.configs)
            await asyncio.sleep(0)  # the lock is free: other steps go first
        async with self.lock:
            self._guard()
            if self.state is not state:
                raise NoLeader("The term this history was loaded for has ended.")
            state.history.loaded()
        return installed

    async def read(self, view: Callable[[ClusterState], T]) -> T:
        """Runs a read-only view of the state under the lock: a consistent snapshot."""
        async with self.lock:
            self._guard()
            result = view(self.state)
            seq = self._seq()
        await self._stored(seq)
        return result

    async def read_sliced(self, view: Callable[[ClusterState], Generator[None, None, T]]) -> T:
        """Runs a read-only view too long for one turn of the loop (the dashboard's pass
        over 100,000 checks): the view yields between slices, and each slice runs under
        the lock with the loop free between them, so heartbeats go in between. Not a
        snapshot: each slice sees the state as it is when it runs."""
        steps: Generator[None, None, T] | None = None
        while True:
            async with self.lock:
                self._guard()
                if steps is None:
                    steps = view(self.state)
                try:
                    next(steps)
                except StopIteration as done:
                    result: T = done.value
                    seq = self._seq()
                    break
            await asyncio.sleep(0)
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
        self._steplog.tick(expired, seconds=self._clock.monotonic() - started)
        self._steplog.long_dangling(dangling, now=now, threshold_s=self.settings.dangling_warning_s)

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
        """Plans a rebalance and applies it (see ClusterState.rebalance) with the event
        loop free while it plans: at 100,000 checks on 10,000 nodes planning takes a
        good part of a second, which in one step held back every heartbeat, long poll
        and ``/healthz`` for as long.

        The planner's inputs are read under the lock a slice at a time (``read_sliced``),
        the pure planner then runs in slices with the lock free (``_run_sliced``), and
        the moves that still hold are made in one step under the lock, stored as one
        write (ClusterState.apply_rebalance: a move the state changed under meanwhile is
        skipped and counted). On a state that does not change meanwhile, the same moves
        as planning and applying in one step. One rebalance at a time: a second one
        waits, and plans on what the first did. Logs each move with its reason, and
        counts the run, its duration and its moves."""
        started = time.perf_counter()
        settings = self.settings
        async with self._rebalancing:
            inputs = await self.read_sliced(
                lambda state: self._rebalance_inputs(state, margin=settings.rebalance_margin)
            )
            plan = await self._run_sliced(
                plan_steps(
                    inputs.nodes,
                    inputs.items,
                    margin=settings.rebalance_margin,
                    min_improvement=settings.rebalance_min_gain,
                    slice_work=self.rebalance_slice_work,
                )
            )

            def apply(now: float) -> RebalanceOutcome:
                if self.state is not inputs.state or self._epoch != inputs.epoch:
                    raise NoLeader("The leadership term changed during the rebalance; retry.")
                return self.state.apply_rebalance(
                    plan, now=now, warming_up=inputs.warming_up, force=force, dry_run=dry_run
                )

            outcome = await self._step(apply)
        if outcome.applied:
            # A line per move, thousands at this size: a slice per turn of the loop, the
            # first not in the turn that made the moves.
            moves = outcome.moves
            for first in range(0, len(moves), MOVES_LOGGED_PER_TURN):
                await asyncio.sleep(0)
                self._steplog.rebalance_moves(outcome, moves[first : first + MOVES_LOGGED_PER_TURN])
        self._steplog.rebalance(
            outcome, trigger=trigger, force=force, dry_run=dry_run, started=started
        )
        return outcome

    def _rebalance_inputs(
        self, state: ClusterState, *, margin: float
    ) -> Generator[None, None, _RebalanceInputs]:
        """The planner's inputs from ``state``, in slices (see ``read_sliced``), with the
        state and term they were read in: the moves are made only in that same term."""
        warming_up = state.warming_up(self._clock.monotonic())
        epoch = self._epoch
        nodes, items = yield from state.rebalance_inputs(
            margin=margin, moves=not warming_up, slice_work=self.rebalance_slice_work
        )
        return _RebalanceInputs(state, epoch, warming_up, nodes, items)

    async def _run_sliced(self, steps: Generator[None, None, T]) -> T:
        """Runs pure work on values of its own (no state, no lock) to its end, a slice
        per turn of the event loop (the last one too: what the caller does next is not
        run in the same turn); stops (NoLeader) if the term ends meanwhile."""
        while True:
            self._guard()
            try:
                next(steps)
            except StopIteration as done:
                result: T = done.value
                break
            finally:
                await asyncio.sleep(0)
        return result

    def warming_up(self) -> bool:
        return self.state.warming_up(self._clock.monotonic())

    def wake_all(self) -> None:
        """Ends every pending long poll, and makes new ones answer at once (shutdown)."""
        self._closing = True
        self._wakeups.wake_all()

    # ---------------------------------------------------------------- internal

    async def _step(self, operation: Callable[[float], T]) -> T:
        result, seq = await self._locked_step(operation)
        await self._stored(seq)
        return result

    async def _locked_step(
        self, operation: Callable[[float], T], woken: set[NodeName] | None = None
    ) -> tuple[T, int]:
        """One step under the lock, published (``_publish``); returns its result and its
        number, for the caller to wait until it is stored (``_stored``)."""
        async with self.lock:
            self._guard()
            try:
                result = operation(self._clock.monotonic())
            finally:
                seq = self._publish(woken)
        return result, seq

    def _guard(self) -> None:
        if not self.active:
            raise NoLeader("This replica has just stopped leading; retry shortly.")

    def _seq(self) -> int:
        """What a read waits for: every step that changed more than history (results
        still waiting for their write are in the state, and go within a second)."""
        return self._writer.needed if self._writer is not None else 0

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
        self._steplog.decisions(events.decisions)
        changed = (*events.changed_nodes, *events.removed_nodes)
        if woken is None:
            self._wakeups.wake(changed)
        else:
            woken.update(changed)
        return seq

    # ----------------------------------------------------------- import (export: read)

    async def import_state(
        self,
        document: ImportDocument,
        *,
        mode: ImportMode,
        own_prefixes: tuple[str, ...],
        dry_run: bool = False,
    ) -> ImportOutcome:
        """Imports a validated document (``core.transfer``): plans it and cordons its
        nodes in one step (TooManyChecks there changes nothing), so that its checks are
        not placed on those nodes, then writes its sources through the sources' write
        path (in slices when big); returns once all of it is stored. With ``dry_run``,
        the plan and the counts it would give, and nothing changes."""

        def plan(state: ClusterState) -> ImportPlan:
            return plan_import(
                document,
                mode=mode,
                held=state.held_by_source,
                nodes=state.nodes,
                own_prefixes=own_prefixes,
                max_checks_per_source=state.max_checks_per_source,
            )

        if dry_run:

            def look(state: ClusterState) -> ImportOutcome:
                planned = plan(state)
                limit = state.max_checks_per_source
                changes = preview(planned, held=state.held_by_source, max_checks_per_source=limit)
                return ImportOutcome(planned, changes, dry_run=True)

            return await self.read(look)

        def cordon(now: float) -> ImportPlan:
            planned = plan(self.state)
            for name in planned.cordon:
                self.state.cordon(name)
            return planned

        planned = await self._step(cordon)
        changes = await self.replace_sources(planned.sets) if planned.sets else {}
        log.info(
            "state_imported",
            mode=mode,
            sources=len(planned.sets),
            skipped_sources=len(planned.skipped_sources),
            cordoned=len(planned.cordon),
            skipped_cordons=len(planned.skipped_cordons),
        )
        return ImportOutcome(planned, changes, dry_run=False)


def _always() -> bool:
    return True


DROPS_LOGGED = 20
"""Dropped reports logged one by one per status; the rest are counted in one line (a
rule tightened by an upgrade can make every report of every agent unreadable)."""


def _log_dropped_reports(
    node: NodeName, mismatched: Sequence[RunningConfig], unreadable: Sequence[UnreadableReport]
) -> None:
    for report in mismatched[:DROPS_LOGGED]:
        log.warning(
            "running_config_dropped",
            reason="digest does not match the content",
            node=node,
            digest=report.reported_digest,
            content_digest=report.config.digest,
            check=report.config.name,
        )
    for entry in unreadable[: max(0, DROPS_LOGGED - len(mismatched))]:
        log.warning(
            "running_config_dropped",
            reason="not a check config this dispatcher accepts",
            node=node,
            index=entry.index,
            digest=entry.digest,
            check=entry.check,
            problems=entry.problems,
        )
    dropped = len(mismatched) + len(unreadable)
    if dropped > DROPS_LOGGED:
        log.warning(
            "running_configs_dropped",
            node=node,
            dropped=dropped,
            mismatched=len(mismatched),
            unreadable=len(unreadable),
            logged=DROPS_LOGGED,
        )
