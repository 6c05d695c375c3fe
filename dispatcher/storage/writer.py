"""Write-through of a leader's changes, in order, without holding the dispatcher's lock.

Each step of the dispatcher submits its delta under the lock (cheap: a dict merge) and
gets a sequence number; one writer task sends everything pending in one call (group
commit), so steps reach the store in the order they happened and a burst of steps
costs one round trip. A reply waits until its step is stored, so nothing that is
answered can be lost by a failover. A refused write (Fenced) ends the term at once; a
failed one is retried, and the waiting replies give up after ``wait_timeout_s``. Both
waits are on the injected clock, so that tests of retries and timeouts run on fake time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from dispatcher.common.clock import Clock
from dispatcher.core.snapshot import StateDelta
from dispatcher.errors import Fenced, StoreError
from dispatcher.storage.base import StateStore

log = structlog.get_logger(__name__)


class StoreWriter:
    def __init__(
        self,
        store: StateStore,
        *,
        epoch: int,
        on_fenced: Callable[[], None],
        clock: Clock,
        on_health: Callable[[str | None], None] | None = None,
        retry_s: float = 0.5,
        wait_timeout_s: float = 5.0,
    ) -> None:
        self._store = store
        self._epoch = epoch
        self._on_fenced = on_fenced
        self._clock = clock
        self._on_health = on_health
        self._retry_s = retry_s
        self._wait_timeout_s = wait_timeout_s
        self._pending = StateDelta()
        self._submitted = 0
        self._flushed = 0
        self._fenced = False
        self._closed = False
        self._failing: str | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def submitted(self) -> int:
        return self._submitted

    @property
    def flushed(self) -> int:
        return self._flushed

    def submit(self, delta: StateDelta) -> int:
        """Queues a step's changes (call under the dispatcher's lock); returns its number."""
        if delta:
            self._pending.merge(delta)
            self._submitted += 1
            self._wake.set()
        return self._submitted

    async def wait_flushed(self, seq: int) -> None:
        """Returns once every step up to ``seq`` is stored.

        Raises Fenced when the store refused this term, StoreError when it has not
        confirmed the write within the wait timeout."""
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
        self._wake.set()
        self._notify()

    async def run(self) -> None:
        """Writes until closed or cancelled (the end of the term), or fenced."""
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and not self._closed:
                delta, upto = self._pending, self._submitted
                self._pending = StateDelta()
                try:
                    await self._store.write(delta, epoch=self._epoch)
                    _raise_if_cancelling()
                except Fenced as exc:
                    log.error("store_write_fenced", epoch=self._epoch, error=str(exc))
                    self._fenced = True
                    self._notify()
                    self._on_fenced()
                    return
                except StoreError as exc:
                    delta.merge(self._pending)  # keep the order: older first, newer wins
                    self._pending = delta
                    if self._failing is None:
                        log.warning("store_write_failed", error=str(exc))
                    self._failing = str(exc)
                    self._report(str(exc))
                    _raise_if_cancelling()
                    await self._clock.sleep(self._retry_s)
                    continue
                if self._failing is not None:
                    log.info("store_write_recovered")
                    self._failing = None
                    self._report(None)
                self._flushed = upto
                self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _report(self, problem: str | None) -> None:
        if self._on_health is not None:
            self._on_health(problem)


def _raise_if_cancelling() -> None:
    """Re-raises a cancellation that a client library swallowed.

    redis-py wraps socket writes in ``asyncio.wait_for``, which on Python 3.11 can drop a
    cancellation that arrives as the inner call completes; the writer would then wait
    for work forever and hold up the end of its term.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
