"""The leadership handler: the state machine unknown -> follower <-> leader.

It turns the elector's callbacks into terms of the dispatcher:

- started leading (epoch): claim and load the shared store (or start empty, warming
  up, with the memory store or a store found empty), then begin the term and run what
  only a leader runs: the dispatch tick, the store writer, the config sources; a store
  that loses its data during the term is written again whole by the writer;
- stopped leading (lease lost, deadline passed, store fenced, shutdown): end the term
  first, synchronously, so that nothing more is decided or answered, then cancel the
  term's tasks; the state is dropped.

Callbacks are plain functions called from the elector's task; they never block. The
handler is the ``Leadership`` the API consults: a replica is leader only while its term
is running and its elector still holds the lease by its local deadline.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import structlog

from dispatcher.common.clock import Clock
from dispatcher.common.health import HealthRegistry, Status
from dispatcher.core.history import CheckHistory
from dispatcher.core.snapshot import Snapshot
from dispatcher.core.state import ClusterState
from dispatcher.election.base import LeaderInfo
from dispatcher.election.standalone import StandaloneLeadership
from dispatcher.engine import Dispatcher
from dispatcher.errors import Fenced, NoLeader, StoreError
from dispatcher.settings import ElectionSettings
from dispatcher.storage.base import StateStore
from dispatcher.storage.writer import StoreWriter

log = structlog.get_logger("dispatcher.leadership")

T = TypeVar("T")

THREAD_MIN_RECORDS = 10_000
"""Records from which a new leader rebuilds its state, or orders its loaded history,
in a worker thread (``_off_the_loop``): about 50 ms of CPU on the loop at that size."""

HISTORY_RETRY_MAX_S = 60.0
"""The longest wait between two attempts to read the store's history."""

CLAIM_TIMEOUT_S = 60.0
"""The longest a store's claim (the load of a term's state) may take: see
``LeadershipHandler._claim_timeout_s``."""


class Role(enum.Enum):
    UNKNOWN = "unknown"
    FOLLOWER = "follower"
    LEADER = "leader"


class Campaign(Protocol):
    """An elector as the handler drives it (``Elector``, ``StandaloneCampaign``)."""

    def is_leader(self) -> bool: ...

    def leader(self) -> LeaderInfo | None: ...

    async def run(self, stop: asyncio.Event) -> None: ...

    def resign(self) -> None:
        """Stop leading at once and give the lease up, then campaign again."""
        ...


class TermSource(Protocol):
    """A config source that only the leader runs, from scratch in every term."""

    def reset(self) -> None: ...

    async def run(self, stop: asyncio.Event) -> None: ...


class Callbacks(Protocol):
    """What the handler asks a campaign to call (see ``Elector``)."""

    def started(self, epoch: int) -> None: ...

    def stopped(self) -> None: ...

    def new_leader(self, info: LeaderInfo | None) -> None: ...

    def backend(self, problem: str | None) -> None: ...


CampaignFactory = Callable[[Callbacks], Campaign]


class LeadershipHandler:
    def __init__(
        self,
        *,
        identity: str,
        url: str,
        campaign: CampaignFactory,
        dispatcher: Dispatcher,
        store: StateStore | None,
        health: HealthRegistry,
        clock: Clock,
        election: ElectionSettings,
        sources: Sequence[TermSource] = (),
    ) -> None:
        self._identity = identity
        self._url = url
        self._dispatcher = dispatcher
        self._store = store
        self._health = health
        self._clock = clock
        self._election = election
        self._sources = list(sources)
        self._campaign = campaign(self)
        self._role = Role.UNKNOWN
        self._tasks: asyncio.TaskGroup | None = None
        self._term: asyncio.Task[None] | None = None
        self.terms = 0
        """Terms begun so far (tests and metrics)."""
        dispatcher.end_term()
        health.set_standby(True)
        health.report("election", Status.HEALTHY, "campaigning")
        kind = "memory" if store is None else store.kind
        health.report("store", Status.HEALTHY, f"{kind}: standby until this replica leads")

    # ----------------------------------------------------------------- Leadership

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def role(self) -> Role:
        return self._role

    def is_leader(self) -> bool:
        return self._role is Role.LEADER and self._dispatcher.active and self._campaign.is_leader()

    def leader(self) -> LeaderInfo | None:
        if self.is_leader():
            return LeaderInfo(identity=self._identity, url=self._url, epoch=self._dispatcher.epoch)
        info = self._campaign.leader()
        if info is not None and info.identity == self._identity:
            return None  # our own lease, but no term is being served on it
        return info

    # -------------------------------------------------------------------- running

    async def run(self, stop: asyncio.Event) -> None:
        """Campaigns until ``stop``; a held lease is given up on the way out, after the
        term has ended, and the term ends after what waits to be stored is written (the
        last second's results: ``Dispatcher.flush``)."""
        elector_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            elector = tasks.create_task(self._campaign.run(elector_stop), name="elector")
            stopping = tasks.create_task(stop.wait(), name="leadership_stop")
            await asyncio.wait({elector, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set() and self._role is Role.LEADER:
                await self._dispatcher.flush()
            elector_stop.set()
            stopping.cancel()
        self._tasks = None

    # -------------------------------------------------------------- callbacks
    # Called by the campaign, inline, from its own task: none of them blocks.

    def started(self, epoch: int) -> None:
        assert self._tasks is not None, "callbacks come only from run()"
        self._cancel_term()
        self._term = self._tasks.create_task(self._serve_term(epoch), name=f"term-{epoch}")

    def stopped(self) -> None:
        self._step_down("the elector stopped leading (see its lost_leadership line)")

    def new_leader(self, info: LeaderInfo | None) -> None:
        if info is not None and info.identity != self._identity:
            if self._role is not Role.FOLLOWER:
                log.info("following", leader=info.identity, url=info.url, epoch=info.epoch)
            self._role = Role.FOLLOWER
            self._health.report("election", Status.HEALTHY, f"following {info.identity}")

    def backend(self, problem: str | None) -> None:
        if problem is None:
            status, message = Status.HEALTHY, f"lease backend answering; {self._role.value}"
        else:
            status, message = Status.DEGRADED, f"lease backend failing: {problem}"
        self._health.report("election", status, message)

    def _fenced(self) -> None:
        self._step_down("a newer leader has claimed the shared store")
        # Our lease may still be valid (a store claimed by a stray writer, say a
        # standalone dispatcher on the same Redis): a term that cannot write must not
        # keep the lease, or no replica would lead. (A store that lost its data is not
        # fenced: the writer claims it again and writes the state whole.)
        self._campaign.resign()

    def _step_down(self, reason: str) -> None:
        was_leading = self._role is Role.LEADER
        self._role = Role.FOLLOWER
        self._dispatcher.end_term()  # first: nothing more is decided or answered
        self._cancel_term()
        self._health.set_standby(True)
        self._health.report("election", Status.HEALTHY, f"follower: {reason}")
        if was_leading:
            log.warning("stopped_leading", reason=reason, epoch=self._dispatcher.epoch)

    def _cancel_term(self) -> None:
        if self._term is not None and not self._term.done():
            self._term.cancel()
        self._term = None

    # ------------------------------------------------------------------ a term

    async def _serve_term(self, epoch: int) -> None:
        try:
            await self._lead(epoch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("term_failed", epoch=epoch)
        finally:
            # A term that ends by itself (claim refused, lease lost while loading, a
            # crash) steps down; one ended by _step_down has already been replaced.
            if self._term is asyncio.current_task():
                self._term = None
                self._step_down("the term ended")
                self._campaign.resign()  # or the lease would stay held with no one leading

    async def _lead(self, epoch: int) -> None:
        started = self._clock.monotonic()
        loaded = await self._load(epoch)
        if loaded is None or not self._campaign.is_leader():
            return
        state, writer, history_later = loaded
        self._dispatcher.begin_term(
            state=state, epoch=epoch, writer=writer, may_act=self._campaign.is_leader
        )
        self._role = Role.LEADER
        self.terms += 1
        self._health.set_standby(False)
        self._health.report("election", Status.HEALTHY, f"leader (epoch {epoch})")
        log.info(
            "leading",
            epoch=epoch,
            nodes=len(state.nodes),
            checks=len(state.configs),
            warmup_s=max(0.0, state.warmup_until() - self._clock.monotonic()),
            takeover_ms=round((self._clock.monotonic() - started) * 1000, 1),
        )
        term_stop = asyncio.Event()  # the term ends by cancellation; this never fires
        async with asyncio.TaskGroup() as term:
            term.create_task(self._dispatcher.run(term_stop), name="dispatch_tick")
            if writer is not None:
                term.create_task(writer.run(), name="store_writer")
            if history_later:
                term.create_task(self._load_history(epoch), name="history_load")
            for source in self._sources:
                source.reset()
                term.create_task(source.run(term_stop), name=f"source-{type(source).__name__}")
            await asyncio.Event().wait()  # until cancelled: the term lasts as long as the lease

    async def _load(self, epoch: int) -> tuple[ClusterState, StoreWriter | None, bool] | None:
        """The term's state: loaded from the shared store, or empty and warming up; and
        whether the store's history is still to load (``_load_history``)."""
        if self._store is None:
            self._health.report("store", Status.HEALTHY, "memory")
            return self._dispatcher.new_state(), None, False
        while self._campaign.is_leader():
            try:
                async with self._clock.timeout(self._claim_timeout_s()):
                    # Without the history: the checks are served first (see _load_history).
                    snapshot = await self._store.claim(epoch=epoch, history=False)
            except Fenced as exc:
                log.error("store_claim_fenced", epoch=epoch, error=str(exc))
                self._health.report("store", Status.DEGRADED, str(exc))
                self._campaign.resign()
                return None
            except (StoreError, TimeoutError) as exc:
                message = str(exc) or "the shared store did not answer in time"
                log.warning("store_load_failed", epoch=epoch, error=message)
                self._health.report("store", Status.UNHEALTHY, message)
                await self._clock.sleep(self._election.retry_period_s)
                continue
            kind = self._store.kind
            history_later = bool(snapshot.configs or snapshot.nodes)
            if history_later:
                self._health.report("store", Status.HEALTHY, f"{kind}, claimed by epoch {epoch}")
                # A big state in a worker thread: a new object no one else sees yet, and
                # about half a second of CPU at 100,000 checks, during which the event
                # loop must stay free to renew the lease (and to answer, if only 503).
                state = await _off_the_loop(
                    len(snapshot.configs) + len(snapshot.placement),
                    ClusterState.restore,
                    snapshot,
                    now=self._clock.monotonic(),
                )
                state.history.expect_load()
            else:
                # A fresh data dir, or a Redis that lost its data: warm up and rebuild from
                # what the agents run, as with the memory store, rather than tell every
                # agent it holds nothing. (A store emptied on purpose costs one warm-up.)
                self._health.report(
                    "store", Status.HEALTHY, f"{kind}, claimed by epoch {epoch}; found empty"
                )
                state = self._dispatcher.new_state(track_changes=True)
            writer = StoreWriter(
                self._store,
                epoch=epoch,
                snapshot=self._term_snapshot,
                may_act=self._campaign.is_leader,
                on_fenced=self._fenced,
                clock=self._clock,
                on_health=self._store_health,
                retry_s=min(0.5, self._election.retry_period_s),
                wait_timeout_s=self._election.renew_deadline_s,
                # A store that loses its data while nothing changes is found (and written
                # again) within a retry period, as a lost lease is; a file under this
                # process's lock cannot, and is left alone when idle.
                verify_s=self._election.retry_period_s if self._store.may_lose_data else None,
            )
            return state, writer, history_later
        return None

    async def _load_history(self, epoch: int) -> None:
        """Reads the store's history and installs it, once the term serves.

        The checks do not wait for their history: at 100,000 checks a store keeps some
        500,000 results (the default overall bound), and reading and decoding them
        before serving took seconds. Until it is installed a check's history shows only
        the results recorded in this term; a check deleted meanwhile does not get its
        old history back, and a result this term wrote is not counted twice. A failed
        read is retried after a retry period, then less and less often (at most a
        minute apart); the store's health says so meanwhile."""
        store = self._store
        assert store is not None
        started = self._clock.monotonic()
        failed = False
        delay_s = self._election.retry_period_s
        while True:
            try:
                async with self._clock.timeout(self._claim_timeout_s()):
                    stored = await store.load_history()
                # Put in order in a worker thread, as the state was restored.
                loaded = await _off_the_loop(
                    sum(len(entries) for entries in stored.values()),
                    CheckHistory.prepare,
                    stored,
                )
                break
            except (StoreError, TimeoutError) as exc:
                message = str(exc) or "the shared store did not answer in time"
                log.warning("history_load_failed", epoch=epoch, error=message)
                self._health.report(
                    "store", Status.DEGRADED, f"{store.kind}: the history is not loaded: {message}"
                )
                failed = True
                await self._clock.sleep(delay_s)
                # An unreadable stored result fails every read until an operator fixes
                # it: the retries (and their log lines) thin out to one a minute.
                delay_s = min(2 * delay_s, HISTORY_RETRY_MAX_S)
        try:
            checks = await self._dispatcher.install_history(loaded)
        except NoLeader:
            return  # the term ended: its state, and this history, are gone
        if failed:
            self._health.report("store", Status.HEALTHY, f"{store.kind}, claimed by epoch {epoch}")
        log.info(
            "history_loaded",
            epoch=epoch,
            checks=checks,
            results=loaded.results(),
            load_ms=round((self._clock.monotonic() - started) * 1000, 1),
        )

    def _claim_timeout_s(self) -> float:
        """How long a claim may take before it is abandoned and tried again.

        Loading is not bounded by the renew deadline: at 100,000 checks a load takes
        seconds (more on a busy machine), a load cut off at a 2 s deadline is cut off
        again at every retry, and the leader never serves. The lease is renewed while
        it loads (nothing holds the event loop), and a store that stops answering fails
        each call by itself (Redis: ``--redis-timeout``); this only bounds a store that
        answers too slowly to be of use."""
        return max(self._election.renew_deadline_s, CLAIM_TIMEOUT_S)

    def _term_snapshot(self) -> Snapshot:
        """The persisted part of the state the dispatcher serves now, for a writer that
        must write it whole again. The dispatcher's state, not the one loaded: whatever
        the term serves when the store needs it. The writer is closed when the term
        ends, before the dispatcher drops the state, and then asks for it no more."""
        return self._dispatcher.state.snapshot()

    def _store_health(self, status: Status, message: str) -> None:
        kind = self._store.kind if self._store is not None else "memory"
        self._health.report("store", status, f"{kind}: {message}")


async def _off_the_loop(records: int, work: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``work(*args, **kwargs)``, in a worker thread when it handles at least
    ``THREAD_MIN_RECORDS`` records; a small one runs at once, on the loop, where a few
    milliseconds hold nothing up (and a term begins without waiting on a thread)."""
    if records < THREAD_MIN_RECORDS:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)


class StandaloneCampaign:
    """Standalone election for the handler: leader from the start, epoch = start time in
    milliseconds (used when a standalone dispatcher keeps its state in Redis)."""

    def __init__(
        self,
        *,
        identity: str,
        url: str,
        started_at_s: float,
        on_started_leading: Callable[[int], None],
        on_stopped_leading: Callable[[], None],
        epoch_floor: int = 0,
    ) -> None:
        self._info = StandaloneLeadership(
            identity=identity, url=url, started_at_s=started_at_s, epoch_floor=epoch_floor
        ).leader()
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._leading = False

    def is_leader(self) -> bool:
        return self._leading

    def leader(self) -> LeaderInfo | None:
        return self._info

    def resign(self) -> None:
        # A standalone replica fenced off its store has met a newer standalone replica
        # sharing that store: it stays out (a follower that forwards to no one).
        if self._leading:
            self._leading = False
            log.error("standalone_fenced", epoch=self._info.epoch)

    async def run(self, stop: asyncio.Event) -> None:
        self._leading = True
        self._on_started(self._info.epoch)
        try:
            await stop.wait()
        finally:
            self._leading = False
            self._on_stopped()
