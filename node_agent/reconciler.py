"""Desired state (what the dispatcher asks for) against actual state (running check
loops), after the kubelet plugin manager: each pass first stops what is no longer
desired or has changed, then starts what is missing; one operation per digest at a
time; a start that fails backs off exponentially. The actual state changes only when
an operation succeeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import structlog

from dispatcher.common.clock import Clock
from dispatcher.common.tasks import wait_any

log = structlog.get_logger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 60.0
PASS_PERIOD_S = 1.0
STOP_ATTEMPTS_ON_SHUTDOWN = 3


class Spec(Protocol):
    @property
    def digest(self) -> str: ...


S = TypeVar("S", bound=Spec)
H = TypeVar("H")


@dataclass(slots=True)
class _Backoff:
    failures: int
    retry_at: float


class Reconciler(Generic[S, H]):
    def __init__(
        self,
        *,
        start: Callable[[S], Awaitable[H]],
        stop: Callable[[H], Awaitable[None]],
        clock: Clock,
    ) -> None:
        self._start = start
        self._stop = stop
        self._clock = clock
        self._desired: dict[str, S] = {}
        self._actual: dict[str, tuple[S, H]] = {}
        self._operations: dict[str, asyncio.Task[None]] = {}
        self._backoff: dict[str, _Backoff] = {}
        self._wake = asyncio.Event()

    @property
    def desired(self) -> Mapping[str, S]:
        return self._desired

    @property
    def actual(self) -> Mapping[str, H]:
        return {digest: handle for digest, (_, handle) in self._actual.items()}

    def set_desired(self, specs: Mapping[str, S]) -> None:
        self._desired = dict(specs)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            self.reconcile_once()
            await wait_any(self._wake, stop, timeout_s=PASS_PERIOD_S, clock=self._clock)

    def reconcile_once(self) -> None:
        """One pass: stop first, then start. Operations run as tasks, one per digest."""
        now = self._clock.monotonic()
        for digest in sorted(self._actual):
            spec, _ = self._actual[digest]
            if digest in self._operations or self._backing_off(digest, now):
                continue
            if self._desired.get(digest) != spec:
                self._launch(digest, self._do_stop(digest))
        for digest in sorted(self._desired):
            if digest in self._actual or digest in self._operations:
                continue
            if self._backing_off(digest, now):
                continue
            self._launch(digest, self._do_start(self._desired[digest]))

    def lost(self, digest: str, handle: H) -> None:
        """A running check died by itself: forget it and start it again after a backoff."""
        current = self._actual.get(digest)
        if current is not None and current[1] is handle:
            del self._actual[digest]
            self._fail(digest)
            self._wake.set()

    async def stop_all(self) -> None:
        """Stops every running check and waits for every operation (shutdown).

        A stop that keeps failing is tried a few times, then given up with an error log,
        so that shutdown always ends.
        """
        self._desired = {}
        for _ in range(STOP_ATTEMPTS_ON_SHUTDOWN):
            self._backoff.clear()
            self.reconcile_once()
            await self.wait_idle()
            if not self._actual:
                return
        for digest in sorted(self._actual):
            log.error("check_not_stopped", digest=digest, attempts=STOP_ATTEMPTS_ON_SHUTDOWN)
        self._actual.clear()

    async def wait_idle(self) -> None:
        if self._operations:
            await asyncio.gather(*self._operations.values(), return_exceptions=True)

    def _launch(self, digest: str, operation: Awaitable[None]) -> None:
        task = asyncio.ensure_future(operation)
        task.set_name(f"reconcile:{digest}")
        self._operations[digest] = task
        task.add_done_callback(lambda _: self._finished(digest, task))

    def _finished(self, digest: str, task: asyncio.Task[None]) -> None:
        if self._operations.get(digest) is task:
            del self._operations[digest]
        self._wake.set()

    async def _do_start(self, spec: S) -> None:
        try:
            handle = await self._start(spec)
        except Exception as exc:
            delay = self._fail(spec.digest)
            log.warning("check_start_failed", digest=spec.digest, error=str(exc), retry_in_s=delay)
            return
        self._backoff.pop(spec.digest, None)
        self._actual[spec.digest] = (spec, handle)

    async def _do_stop(self, digest: str) -> None:
        _, handle = self._actual[digest]
        try:
            await self._stop(handle)
        except Exception as exc:
            # Still running as far as we know: keep it in the actual state (it is still
            # reported as running) and try again after a backoff.
            delay = self._fail(digest)
            log.warning("check_stop_failed", digest=digest, error=str(exc), retry_in_s=delay)
            return
        self._backoff.pop(digest, None)
        del self._actual[digest]

    def _fail(self, digest: str) -> float:
        previous = self._backoff.get(digest)
        failures = previous.failures + 1 if previous else 1
        delay: float = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** (failures - 1))
        self._backoff[digest] = _Backoff(failures, self._clock.monotonic() + delay)
        return delay

    def _backing_off(self, digest: str, now: float) -> bool:
        backoff = self._backoff.get(digest)
        return backoff is not None and now < backoff.retry_at
