"""A registry of components and their health, used by the dispatcher and node agents.

Components register (optionally with a probe polled every few seconds) or report their
own state changes. Only real transitions propagate: a report with the same status and
message changes nothing. Observers run outside the lock, so an observer may read the
registry. The overall status is the worst component's, never the last writer's.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any, cast

import structlog

from dispatcher import wire
from dispatcher.common.clock import Clock, SystemClock
from dispatcher.common.tasks import sleep_or_stop

log = structlog.get_logger(__name__)


class Status(IntEnum):
    """Ordered from best to worst, so that the worst is the max."""

    HEALTHY = 0
    UNSPECIFIED = 1
    DEGRADED = 2
    UNHEALTHY = 3

    @property
    def label(self) -> wire.HealthStatus:
        return cast(wire.HealthStatus, self.name.lower())


ProbeResult = tuple[Status, str]
Probe = Callable[[], ProbeResult | Awaitable[ProbeResult]]
Observer = Callable[["Transition"], None]


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    status: Status = Status.UNSPECIFIED
    message: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    required: bool = True


@dataclass(frozen=True, slots=True)
class Transition:
    name: str
    old: Status
    new: Status
    message: str


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    status: Status
    components: dict[str, Component]


def verdict_body(verdict: Verdict) -> wire.HealthOut:
    """The body of /healthz and /readyz (API.md), the same on both processes."""
    return wire.HealthOut(
        status=verdict.status.label,
        components={name: component_body(c) for name, c in verdict.components.items()},
    )


def component_body(component: Component) -> wire.ComponentOut:
    return wire.ComponentOut(
        status=component.status.label,
        message=component.message,
        metadata=dict(component.metadata),
    )


class HealthRegistry:
    def __init__(self, *, clock: Clock | None = None, probe_period_s: float = 5.0) -> None:
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._components: dict[str, Component] = {}
        self._probes: dict[str, Probe] = {}
        self._observers: list[Observer] = []
        self._sinks: list[Callable[[str, Status], None]] = []
        self._grace_until = float("-inf")
        self._standby = False
        self.probe_period_s = probe_period_s

    def register(self, name: str, *, probe: Probe | None = None, required: bool = True) -> None:
        with self._lock:
            new = name not in self._components
            component = self._components.setdefault(name, Component(name=name, required=required))
            if probe is not None:
                self._probes[name] = probe
        if new:
            for sink in list(self._sinks):
                sink(name, component.status)

    def observe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def report(
        self,
        name: str,
        status: Status,
        message: str = "",
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Records a component's state; ignored for an unregistered name."""
        with self._lock:
            current = self._components.get(name)
            if current is None:
                return
            if current.status == status and current.message == message:
                if metadata is not None:
                    self._components[name] = replace(current, metadata=dict(metadata))
                return
            updated = replace(
                current,
                status=status,
                message=message,
                metadata=dict(metadata) if metadata is not None else current.metadata,
            )
            self._components[name] = updated
        transition = Transition(name, current.status, status, message)
        if current.status != status:
            for observer in list(self._observers):
                try:
                    observer(transition)
                except Exception:
                    log.exception("health_observer_failed", component=name)

    def suppress_liveness(self, seconds: float) -> None:
        """Liveness passes for ``seconds`` whatever the components say."""
        with self._lock:
            self._grace_until = max(self._grace_until, self._clock.monotonic() + seconds)

    def set_standby(self, standby: bool) -> None:
        """A follower on standby is ready: it has nothing to serve but forwarding."""
        with self._lock:
            self._standby = standby

    def components(self) -> dict[str, Component]:
        with self._lock:
            return dict(sorted(self._components.items()))

    def liveness(self) -> Verdict:
        components = self.components()
        status = max((c.status for c in components.values()), default=Status.HEALTHY)
        in_grace = self._clock.monotonic() < self._grace_until
        ok = in_grace or not any(
            c.required and c.status == Status.UNHEALTHY for c in components.values()
        )
        return Verdict(ok=ok, status=status, components=components)

    def readiness(self) -> Verdict:
        components = self.components()
        status = max((c.status for c in components.values()), default=Status.HEALTHY)
        ok = self._standby or all(
            c.status in (Status.HEALTHY, Status.DEGRADED) for c in components.values() if c.required
        )
        return Verdict(ok=ok, status=status, components=components)

    async def run_probes(self, stop: asyncio.Event) -> None:
        """Polls every probe each ``probe_period_s`` until ``stop``."""
        while not stop.is_set():
            await self.probe_once()
            if await sleep_or_stop(stop, self.probe_period_s, clock=self._clock):
                return

    def watch(self, set_status: Callable[[str, Status], None]) -> None:
        """The transition observer of a process: logs each transition and hands the new
        status to ``set_status`` (a gauge), which also learns every component registered,
        before or after, so the gauge has a series per component from the start."""
        self._sinks.append(set_status)
        for name, component in self.components().items():
            set_status(name, component.status)

        def observer(transition: Transition) -> None:
            worse = transition.new > transition.old
            (log.warning if worse else log.info)(
                "health_transition",
                component=transition.name,
                old=transition.old.label,
                new=transition.new.label,
                message=transition.message,
            )
            set_status(transition.name, transition.new)

        self.observe(observer)

    async def probe_once(self) -> None:
        for name, probe in list(self._probes.items()):
            try:
                outcome = probe()
                if inspect.isawaitable(outcome):
                    outcome = await outcome
                status, message = outcome
            except Exception as exc:
                status, message = Status.UNHEALTHY, f"probe failed: {exc}"
            self.report(name, status, message)
