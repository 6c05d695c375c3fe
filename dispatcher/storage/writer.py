"""Write-through of a leader's changes, in order, without holding the dispatcher's lock.

Each step of the dispatcher submits its delta under the lock (cheap: a dict merge) and
gets a sequence number; one writer task sends everything pending in one call (group
commit), so steps reach the store in the order they happened and a burst of steps
costs one round trip. A reply waits until its step is stored, so nothing that is
answered can be lost by a failover. A refused write (Fenced) ends the term at once; a
failed one is retried, and the waiting replies give up after ``wait_timeout_s``.

A store that lost its data (StoreLost: Redis restarted empty, or was flushed) is
repaired, not abandoned: the writer claims it again with its epoch and writes the
leader's whole state (``snapshot``), which holds every change the store missed. So
that a loss is found even when nothing changes, an idle writer checks the store's claim
every ``verify_s`` with an empty write. Every wait is on the injected clock, so that
tests of retries, checks and timeouts run on fake time.

A step that only adds history (a results post) does not wake the writer: its results
wait up to ``history_flush_s`` to go with the others in one write. Agents post every
second each, so a cluster's results would otherwise cost one commit (and its fsync, its
thread hop, its Redis call) per post; the history benchmark measured that as most of
the history's CPU. Nothing is answered later for it: a results reply does not wait for
the store, and no other step waits for results (``submit`` returns the number of the
last step that changed more), so a heartbeat or a read neither waits for their write nor
brings it forward; a change of anything else takes them along at once, and a planned
stop writes them before the term ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TypeVar

import structlog

from dispatcher.common.clock import Clock, Timer
from dispatcher.common.health import Status
from dispatcher.core.history import HistoryEntry
from dispatcher.core.model import Digest
from dispatcher.core.snapshot import Snapshot, StateDelta
from dispatcher.errors import Fenced, StoreError, StoreLost
from dispatcher.storage.base import StateStore

log = structlog.get_logger(__name__)

K = TypeVar("K")
V = TypeVar("V")

HISTORY_FLUSH_S = 1.0
"""How long a step that only adds history may wait to be written with later ones."""


class StoreWriter:
    def __init__(
        self,
        store: StateStore,
        *,
        epoch: int,
        on_fenced: Callable[[], None],
        clock: Clock,
        on_health: Callable[[Status, str], None] | None = None,
        retry_s: float = 0.5,
        wait_timeout_s: float = 5.0,
        verify_s: float | None = None,
        snapshot: Callable[[], Snapshot] | None = None,
        may_act: Callable[[], bool] | None = None,
        history_flush_s: float = HISTORY_FLUSH_S,
    ) -> None:
        """``snapshot`` returns the leader's persisted state as it is now, for the repair
        to write (None: a lost store cannot be repaired, and ends the term as a fence
        does); ``verify_s`` is how long the writer may stay idle before it checks the
        store's claim (None: never, for a store that cannot lose its data); ``may_act``
        says whether this leader may still act (its lease's local deadline): a repair
        claims the store, so a leader past its deadline must not start one."""
        self._store = store
        self._may_act = may_act or (lambda: True)
        self._epoch = epoch
        self._snapshot = snapshot
        self._on_fenced = on_fenced
        self._clock = clock
        self._on_health = on_health
        self._retry_s = retry_s
        self._wait_timeout_s = wait_timeout_s
        self._verify_s = verify_s
        self._history_flush_s = history_flush_s
        self._history_timer: Timer | None = None
        """Set while steps that only add history wait to be written (``submit``)."""
        self._pending = StateDelta()
        self._submitted = 0
        self._needed = 0
        self._flushed = 0
        self._fenced = False
        self._closed = False
        self._failing: str | None = None
        self._rewrite: dict[str, int] | None = None
        """What the repair under way writes (counts for its log line), until it is stored."""
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self.checks = 0
        """Idle checks of the store's claim so far."""
        self.rewrites = 0
        """Times the whole state was written again after the store lost its data."""

    @property
    def submitted(self) -> int:
        return self._submitted

    @property
    def flushed(self) -> int:
        return self._flushed

    @property
    def needed(self) -> int:
        """The number of the last step that changed more than history: what a caller
        waits for (``wait_flushed``) to know its step is stored."""
        return self._needed

    def submit(self, delta: StateDelta) -> int:
        """Queues a step's changes (call under the dispatcher's lock); returns the number
        to wait for: the step's own, or, for a step with no change of its own or only
        results, that of the last step before it that changed something else. Nobody
        waits for results (their reply does not), so a heartbeat or a read right after
        a results post neither waits for their write nor brings it forward."""
        if delta:
            self._pending.merge(delta)
            self._submitted += 1
            if _history_only(delta):
                if self._history_timer is None:
                    self._history_timer = self._clock.call_later(
                        self._history_flush_s, self._wake.set
                    )
            else:
                self._needed = self._submitted
                self._wake.set()
        return self._needed

    @property
    def history_waiting(self) -> bool:
        """Whether results wait for their timer to be written (no write is under way
        for them yet)."""
        return self._history_timer is not None

    async def wait_flushed(self, seq: int) -> None:
        """Returns once every step up to ``seq`` is stored.

        Raises Fenced when the store refused this term, StoreError when it has not
        confirmed the write within the wait timeout."""
        if self._flushed < seq:
            self._wake.set()  # history waiting for its flush goes now: someone waits for it
        try:
            async with self._clock.timeout(self._wait_timeout_s):
                while self._flushed < seq:
                    if self._fenced:
                        raise Fenced("a newer leader has claimed the shared store")
                    if self._closed:
                        raise StoreError("the term ended before the change was stored")
                    await self._changed.wait()
        except TimeoutError as exc:
            raise StoreError(
                f"the shared store has not confirmed the change within "
                f"{self._wait_timeout_s:g} s ({self._failing or 'no answer yet'})"
            ) from exc

    def close(self) -> None:
        """The term is over: whoever still waits is told at once, and ``run`` returns."""
        self._closed = True
        self._cancel_history_timer()
        self._wake.set()
        self._notify()

    async def run(self) -> None:
        """Writes until closed or cancelled (the end of the term), or fenced."""
        while not self._closed:
            check = not await self._work_or_idle()
            self._wake.clear()
            if check:
                self.checks += 1
            # An idle check is an empty write: the store still checks its claim.
            while (self._pending or check) and not self._closed:
                check = False
                delta, upto = self._pending, self._submitted
                self._pending = StateDelta()
                self._cancel_history_timer()  # what it waited for is in this write
                try:
                    await self._store.write(delta, epoch=self._epoch)
                    _raise_if_cancelling()
                except Fenced as exc:
                    self._fence(exc)
                    return
                except StoreLost as exc:
                    _raise_if_cancelling()
                    if self._snapshot is None:
                        self._fence(exc)
                        return
                    if not await self._repair(exc, self._snapshot):
                        return
                    continue  # the whole state is pending now: write it
                except StoreError as exc:
                    delta.merge(self._pending)  # keep the order: older first, newer wins
                    self._pending = delta
                    self._failed(str(exc))
                    _raise_if_cancelling()
                    await self._clock.sleep(self._retry_s)
                    continue
                self._stored(upto)

    async def _work_or_idle(self) -> bool:
        """Waits for a step to write (True), or ``verify_s`` of idleness (False)."""
        if self._verify_s is None:
            await self._wake.wait()
            return True
        return await self._clock.wait(self._wake, timeout_s=self._verify_s)

    async def _repair(self, lost: StoreLost, snapshot: Callable[[], Snapshot]) -> bool:
        """Claims the lost store again and queues the whole state as the next write;
        False when the term cannot go on (fenced, or closed meanwhile)."""
        log.warning("store_lost", epoch=self._epoch, error=str(lost))
        self._report(Status.DEGRADED, "lost its data; writing the whole state again")
        while not self._closed:
            if not self._may_act():
                # Past its deadline another replica may lead already: claiming the
                # store with this older epoch would fence it and write a stale state.
                log.warning("store_lost_not_repaired", epoch=self._epoch)
                self.close()
                return False
            try:
                stored = await self._store.claim(epoch=self._epoch)
                _raise_if_cancelling()
            except Fenced as exc:
                self._fence(exc)
                return False
            except StoreError as exc:
                self._failed(f"claiming the lost store again: {exc}")
                _raise_if_cancelling()
                await self._clock.sleep(self._retry_s)
                continue
            if self._ended():
                return False  # the term ended while claiming: its state is not to be written
            if not self._may_act():
                self.close()  # the deadline passed while claiming: a newer epoch fences it
                return False
            # Why the failed write and every pending step may be dropped: a step changes
            # the state and submits its delta with no await in between, so the state now
            # holds every change submitted so far. Writing it whole stores them all, and
            # the steps up to now count as stored once that write is confirmed (``run``
            # takes their number with this delta, with no await in between either).
            # Steps submitted after this are merged on top, newer values winning.
            state = snapshot()
            self._pending = _rewrite(state, stored)
            self._rewrite = {
                "configs": len(state.configs),
                "sources": len(state.sources),
                "placements": len(state.placement),
                "nodes": len(state.nodes),
                "deleted": _deletions(self._pending),
            }
            return True
        return False

    def _cancel_history_timer(self) -> None:
        if self._history_timer is not None:
            self._history_timer.cancel()
            self._history_timer = None

    def _ended(self) -> bool:
        """Whether the term has ended (a method: it may change across an await)."""
        return self._closed

    def _stored(self, upto: int) -> None:
        if self._rewrite is not None:
            self.rewrites += 1
            log.warning("store_lost_rewritten", epoch=self._epoch, **self._rewrite)
            rewritten = ", ".join(f"{n} {what}" for what, n in self._rewrite.items())
            self._rewrite = None
            self._failing = None
            self._report(
                Status.HEALTHY,
                f"lost its data; written again by epoch {self._epoch} ({rewritten})",
            )
        elif self._failing is not None:
            log.info("store_write_recovered")
            self._failing = None
            self._report(Status.HEALTHY, "writes confirmed")
        self._flushed = max(self._flushed, upto)
        self._notify()

    def _failed(self, problem: str) -> None:
        if self._failing is None:
            log.warning("store_write_failed", error=problem)
        self._failing = problem
        self._report(Status.UNHEALTHY, f"writes failing: {problem}")

    def _fence(self, exc: StoreError) -> None:
        log.error("store_write_fenced", epoch=self._epoch, error=str(exc))
        self._fenced = True
        self._notify()
        self._on_fenced()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _report(self, status: Status, message: str) -> None:
        if self._on_health is not None:
            self._on_health(status, message)


def _rewrite(state: Snapshot, stored: Snapshot) -> StateDelta:
    """The writes that make a store holding ``stored`` hold exactly ``state``: every
    record of the state, and a deletion of each stored record the state lacks (a store
    that lost only part of its data may keep records the leader has deleted since)."""
    return StateDelta(
        configs=_replace(state.configs, stored.configs),
        sources=_replace(state.sources, stored.sources),
        placement=_replace(state.placement, stored.placement),
        nodes=_replace(state.nodes, stored.nodes),
        history=_missing_history(state, stored),
    )


def _missing_history(state: Snapshot, stored: Snapshot) -> dict[Digest, list[HistoryEntry]]:
    """The results the leader keeps that the store lacks (what a partial loss kept is
    not appended twice)."""
    missing: dict[Digest, list[HistoryEntry]] = {}
    for digest, entries in state.history.items():
        kept = set(stored.history.get(digest, ()))
        new = [entry for entry in entries if entry not in kept]
        if new:
            missing[digest] = new
    return missing


def _replace(records: Mapping[K, V], stored: Mapping[K, V]) -> dict[K, V | None]:
    changes: dict[K, V | None] = {key: None for key in stored if key not in records}
    changes.update(records)
    return changes


def _deletions(delta: StateDelta) -> int:
    return sum(
        value is None
        for part in (delta.configs, delta.sources, delta.placement, delta.nodes)
        for value in part.values()
    )


def _raise_if_cancelling() -> None:
    """Re-raises a cancellation that a client library swallowed.

    redis-py wraps socket writes in ``asyncio.wait_for``, which on Python 3.11 can drop a
    cancellation that arrives as the inner call completes; the writer would then wait
    for work forever and hold up the end of its term.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _history_only(delta: StateDelta) -> bool:
    """Whether ``delta`` adds history and changes no other record."""
    return bool(delta.history) and not (
        delta.configs or delta.sources or delta.placement or delta.nodes
    )
