"""Desired state (what the dispatcher asks for) against actual state (running check
loops), after the kubelet plugin manager: each pass first stops what is no longer
desired or has changed, then starts what is missing; one operation per digest at a
time; a start that fails backs off exponentially. The actual state changes only when
an operation succeeds.

A pass may face tens of thousands of checks at once (one PUT of a large source, an
agent's first fetch). It never holds the event loop for long: it launches at most
``LAUNCH_SLICE`` operations, or looks at ``LOOK_SLICE`` digests, between two yields, so
that heartbeats, the local server and the signal handlers keep their turn while a big
batch starts or stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping
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
LAUNCH_SLICE = 100
"""Operations launched between two yields: each start or stop then runs in the next
turns of the loop, about 100 of them per turn at most (some milliseconds)."""
LOOK_SLICE = 5_000
"""Digests looked at between two yields when nothing is due (a pass over a steady
state of 100,000 checks)."""


class Spec(Protocol):
    @property
    def digest(self) -> str: ...


S = TypeVar("S", bound=Spec)
H = TypeVar("H")


@dataclass(slots=True)
class _Backoff:
    failures: int
    retry_at: float


class _Handles(Mapping[str, H]):
    """The running handles by digest: a live view, so that counting or reading them
    costs nothing however many checks run."""

    __slots__ = ("_actual",)

    def __init__(self, actual: Mapping[str, tuple[object, H]]) -> None:
        self._actual = actual

    def __getitem__(self, digest: str) -> H:
        return self._actual[digest][1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._actual)

    def __len__(self) -> int:
        return len(self._actual)

    def __contains__(self, digest: object) -> bool:
        return digest in self._actual


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
        self._handles: _Handles[H] = _Handles(self._actual)
        self._operations: dict[str, asyncio.Task[None]] = {}
        self._backoff: dict[str, _Backoff] = {}
        self._wake = asyncio.Event()
        self._generation = 0
        """Moves on with every new desired state: a pass that sees it move starts over."""

    @property
    def desired(self) -> Mapping[str, S]:
        return self._desired

    @property
    def actual(self) -> Mapping[str, H]:
        return self._handles

    def set_desired(self, specs: Mapping[str, S]) -> None:
        self._desired = dict(specs)
        self._generation += 1
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            await self.reconcile()
            await wait_any(self._wake, stop, timeout_s=PASS_PERIOD_S, clock=self._clock)

    def reconcile_once(self) -> None:
        """One pass at once, without yielding: stop first, then start. Operations run as
        tasks, one per digest."""
        for due in self._due():
            if due is not None:
                self._launch(*due)

    async def reconcile(self) -> None:
        """One pass, as ``reconcile_once``, yielding to the loop every ``LAUNCH_SLICE``
        launches or ``LOOK_SLICE`` digests looked at. A new desired state meanwhile
        starts the pass over: the rest of it answered an older state."""
        while True:
            generation = self._generation
            launched = looked = 0
            for due in self._due():
                looked += 1
                if due is not None:
                    self._launch(*due)
                    launched += 1
                if launched >= LAUNCH_SLICE or looked >= LOOK_SLICE:
                    launched = looked = 0
                    await self._clock.sleep(0)
                    if self._generation != generation:
                        break
            else:
                return

    def _due(self) -> Iterator[tuple[str, S | None] | None]:
        """The operations due now, stops first: ``(digest, None)`` stops, ``(digest,
        spec)`` starts, ``None`` for a digest looked at with nothing to do. Each digest is
        judged when reached, as the pass may yield in between."""
        now = self._clock.monotonic()
        for digest in list(self._actual):
            entry = self._actual.get(digest)
            if (
                entry is None
                or digest in self._operations
                or self._backing_off(digest, now)
                or self._desired.get(digest) == entry[0]
            ):
                yield None
            else:
                yield digest, None
        for digest in list(self._desired):
            spec = self._desired.get(digest)
            if (
                spec is None
                or digest in self._actual
                or digest in self._operations
                or self._backing_off(digest, now)
            ):
                yield None
            else:
                yield digest, spec

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
        so that shutdown always ends. The caller bounds the time it may take.
        """
        self._desired = {}
        self._generation += 1
        for _ in range(STOP_ATTEMPTS_ON_SHUTDOWN):
            self._backoff.clear()
            await self.reconcile()
            await self.wait_idle()
            if not self._actual:
                return
        for digest in sorted(self._actual):
            log.error("check_not_stopped", digest=digest, attempts=STOP_ATTEMPTS_ON_SHUTDOWN)
        self._actual.clear()

    async def wait_idle(self) -> None:
        while self._operations:
            await asyncio.gather(*self._operations.values(), return_exceptions=True)

    def _launch(self, digest: str, spec: S | None) -> None:
        """Starts ``spec``, or stops the running ``digest`` when ``spec`` is None."""
        operation = self._do_stop(digest) if spec is None else self._do_start(spec)
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
