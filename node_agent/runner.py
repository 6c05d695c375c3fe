"""One loop per check: schedule with jitter, run under the capacity cap, time out,
measure, emit results.

Every wait (the schedule, the run's timeout) and every duration is on the injected
``Clock``, so that the scheduler runs on a ``FakeClock`` in tests."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from dispatcher.common.clock import Clock
from dispatcher.common.text import truncate_utf8
from node_agent.checks import CheckKind, InstanceError, Outcome, RunContext
from node_agent.metrics import AgentMetrics

log = structlog.get_logger(__name__)

STATS_WINDOW = 20


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """What the dispatcher asks this agent to run (a config, as the agent sees it)."""

    digest: str
    name: str
    instances: tuple[Any, ...]
    init_config: Mapping[str, Any]
    interval_s: float
    timeout_s: float


class CheckStatsRecorder:
    def __init__(self) -> None:
        self.runs = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_run_at: float | None = None
        self._durations: deque[float] = deque(maxlen=STATS_WINDOW)

    def record(self, *, ok: bool, duration_s: float, started_at: float, error: str | None) -> None:
        self.runs += 1
        self._durations.append(duration_s)
        self.last_run_at = started_at
        if not ok:
            self.errors += 1
            self.last_error = error

    def to_wire(self) -> dict[str, Any]:
        avg = sum(self._durations) / len(self._durations) if self._durations else 0.0
        return {
            "avg_execution_s": round(avg, 6),
            "runs": self.runs,
            "errors": self.errors,
            "last_error": self.last_error[:4096] if self.last_error else None,
            "last_run_at": self.last_run_at,
        }


Emit = Callable[[dict[str, Any]], None]


class _Series:
    """One check's metric children."""

    __slots__ = ("duration", "failures", "ok", "runs")

    def __init__(self, metrics: AgentMetrics, spec: CheckSpec) -> None:
        labels = (spec.digest, spec.name)
        self.ok = metrics.check_ok.labels(*labels)
        self.duration = metrics.check_duration.labels(*labels)
        self.runs = metrics.runs.labels(*labels)
        self.failures = metrics.failures.labels(*labels)


class CheckLoop:
    """Runs one check every ``interval_s`` until cancelled."""

    def __init__(
        self,
        spec: CheckSpec,
        *,
        kinds: Mapping[str, CheckKind],
        capacity: asyncio.Semaphore,
        emit: Emit,
        clock: Clock,
        metrics: AgentMetrics,
        rng: random.Random,
    ) -> None:
        self.spec = spec
        self.stats = CheckStatsRecorder()
        self._capacity = capacity
        self._emit = emit
        self._clock = clock
        self._metrics = metrics
        self._rng = rng
        # Label children looked up once, at the first run: a labels() lookup per run adds
        # up at 1,000 runs/s, and four per check at its start would make a batch of
        # thousands of new checks slow to start (the first runs are spread out instead).
        self._series: _Series | None = None
        self._kind = kinds.get(spec.name)
        self._parsed: list[Any] = []
        self._broken: str | None = None
        if self._kind is None:
            known = ", ".join(sorted(kinds))
            self._broken = f"unknown check {spec.name!r} (this agent runs: {known})"
        else:
            try:
                self._parsed = [
                    self._kind.parse(dict(i), dict(spec.init_config)) for i in spec.instances
                ]
            except InstanceError as exc:
                self._broken = f"{spec.name}: invalid instance: {exc}"

    @property
    def ran(self) -> bool:
        """At least one run has ended (its metric series exist)."""
        return self._series is not None

    async def run(self) -> None:
        interval = self.spec.interval_s
        # The first run at a random point of the first interval: a batch of checks started
        # together (an agent's start, one PUT of thousands) spreads over the interval
        # instead of running all at once and then again all at once every interval.
        next_at = self._clock.monotonic() + self._rng.uniform(0, interval)
        while True:
            delay = next_at - self._clock.monotonic()
            if delay > 0:
                await self._clock.sleep(delay)
            async with self._capacity:
                self._metrics.lateness.observe(max(0.0, self._clock.monotonic() - next_at))
                await self.run_once()
            now = self._clock.monotonic()
            next_at += interval
            if next_at <= now:  # a run overran its interval: skip the missed slots
                next_at += ((now - next_at) // interval + 1) * interval

    async def run_once(self) -> dict[str, Any]:
        run_id = uuid.uuid4().hex
        started_at = self._clock.time()
        started = self._clock.monotonic()
        if self._broken is not None:
            outcome = Outcome(errors=[self._broken])
        else:
            outcome = await self._execute(run_id, started_at)
        duration = self._clock.monotonic() - started
        errors = [e if e.strip() else "unknown error" for e in outcome.errors]
        ok = not errors
        result = {
            "digest": self.spec.digest,
            "run_id": run_id,
            "ok": ok,
            "errors": [e[:4096] for e in errors[:100]],
            "started_at": started_at,
            "duration_s": round(duration, 6),
            "output": truncate_utf8(outcome.output),
        }
        self.stats.record(
            ok=ok, duration_s=duration, started_at=started_at, error=errors[0] if errors else None
        )
        series = self._series
        if series is None:
            series = self._series = _Series(self._metrics, self.spec)
        series.ok.set(1 if ok else 0)
        series.duration.set(duration)
        series.runs.inc()
        if not ok:
            series.failures.inc()
        self._emit(result)
        return result

    async def _execute(self, run_id: str, started_at: float) -> Outcome:
        assert self._kind is not None
        kind = self._kind
        timeout = self.spec.timeout_s
        context = RunContext(
            check_name=self.spec.name,
            digest=self.spec.digest,
            run_id=run_id,
            timeout_s=timeout,
            deadline_unix_s=started_at + timeout,
        )
        try:
            async with self._clock.timeout(timeout):
                outcomes = await self._run_instances(kind, context)
        except TimeoutError:
            return Outcome(errors=[f"{self.spec.name}: timed out after {timeout:g}s"])
        except Exception as exc:
            log.exception("check_crashed", digest=self.spec.digest, check=self.spec.name)
            return Outcome(errors=[f"{self.spec.name}: {type(exc).__name__}: {exc}"])
        errors = [e for o in outcomes for e in o.errors]
        output = "\n".join(o.output for o in outcomes if o.output)
        return Outcome(errors=errors, output=output)

    async def _run_instances(self, kind: CheckKind, context: RunContext) -> list[Outcome]:
        """Runs every instance at once in a task group: when one fails or time runs
        out, the others are cancelled too, not left running unowned."""
        if len(self._parsed) == 1:  # the common case needs no extra task
            return [await kind.run(self._parsed[0], context)]
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(kind.run(i, context)) for i in self._parsed]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]
