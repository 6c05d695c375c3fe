"""Check loops: one run's result, stats, limits, scheduling and the capacity cap.

Everything runs on a ``FakeClock``: the fake check sleeps on it, so durations, timeouts
and the schedule are exact fake times (how late runs start on a real machine is a
question of speed: ``python -m tests.bench``'s runner benchmark)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import pytest
from pydantic import Field

from dispatcher import wire
from dispatcher.common.clock import FakeClock
from node_agent.checks import CheckKind, InstanceModel, Outcome, RunContext, validate_instance
from node_agent.checks.tcp import TcpCheck
from node_agent.metrics import AgentMetrics
from node_agent.runner import CheckLoop, CheckSpec

DIGEST = "0123456789abcdef"
T = TypeVar("T")


class FakeInstance(InstanceModel):
    sleep_s: float = 0.0
    errors: list[str] = Field(default_factory=list)
    output: str = ""
    crash: str | None = None


class FakeKind:
    """Does what its instance says, sleeping on the fake clock; counts runs and how many
    run at the same time."""

    def __init__(self, clock: FakeClock, script: Iterable[FakeInstance] = ()) -> None:
        self.clock = clock
        self.script = list(script)
        self.runs = 0
        self.current = 0
        self.max_concurrent = 0
        self.starts: list[float] = []
        self.contexts: list[RunContext] = []

    def parse(self, instance: dict[str, Any], init_config: dict[str, Any]) -> FakeInstance:
        parsed: FakeInstance = validate_instance(FakeInstance, instance)
        return parsed

    async def run(self, instance: FakeInstance, context: RunContext) -> Outcome:
        if self.script:
            instance = self.script.pop(0)
        self.runs += 1
        self.starts.append(self.clock.monotonic())
        self.contexts.append(context)
        self.current += 1
        self.max_concurrent = max(self.max_concurrent, self.current)
        try:
            if instance.sleep_s:
                await self.clock.sleep(instance.sleep_s)
            if instance.crash is not None:
                raise ValueError(instance.crash)
            return Outcome(errors=list(instance.errors), output=instance.output)
        finally:
            self.current -= 1


def spec(
    *instances: dict[str, Any],
    name: str = "fake",
    interval_s: float = 15.0,
    timeout_s: float = 5.0,
    digest: str = DIGEST,
) -> CheckSpec:
    return CheckSpec(
        digest=digest,
        name=name,
        instances=instances or ({},),
        init_config={},
        interval_s=interval_s,
        timeout_s=timeout_s,
    )


class Loops:
    def __init__(self, *, capacity: int = 8) -> None:
        self.clock = FakeClock()
        self.capacity = asyncio.Semaphore(capacity)
        self.metrics = AgentMetrics()
        self.emitted: list[dict[str, Any]] = []
        self.kind = FakeKind(self.clock)
        self.kinds: dict[str, CheckKind] = {"fake": self.kind, "tcp": TcpCheck()}

    def make(self, check: CheckSpec) -> CheckLoop:
        return CheckLoop(
            check,
            kinds=self.kinds,
            capacity=self.capacity,
            emit=self.emitted.append,
            clock=self.clock,
            metrics=self.metrics,
            rng=random.Random(7),
        )


async def on_fake_time(clock: FakeClock, work: Awaitable[T]) -> T:
    """Awaits ``work``, moving the fake clock on from one timer to the next whenever
    everything waits on it."""
    task = asyncio.ensure_future(work)
    while True:
        await clock.settle()
        if task.done():
            return task.result()
        due = clock.next_deadline()
        assert due is not None, "the run waits on something other than the clock"
        clock.advance(due - clock.monotonic())


def assert_valid_on_the_wire(result: dict[str, Any]) -> None:
    """What the agent emits must pass the dispatcher's results model."""
    wire.CheckResultIn.model_validate(result)


async def test_an_ok_result_has_every_field() -> None:
    loops = Loops()
    loop = loops.make(spec({"output": "fine"}))
    result = await loop.run_once()
    assert result["ok"] is True
    assert result["errors"] == []
    assert result["digest"] == DIGEST
    assert result["output"] == "fine"
    assert result["started_at"] == loops.clock.time()
    assert result["duration_s"] == 0.0  # no time passed on the clock
    assert len(result["run_id"]) == 32
    assert loops.emitted == [result]
    assert_valid_on_the_wire(result)
    second = await loop.run_once()
    assert second["run_id"] != result["run_id"]  # a fresh id for every run
    ctx = loops.kind.contexts[-1]
    assert ctx.run_id == second["run_id"]
    assert ctx.deadline_unix_s == pytest.approx(second["started_at"] + 5.0)


async def test_an_unknown_check_gives_a_failed_result_that_says_so() -> None:
    loops = Loops()
    loop = loops.make(spec({}, name="nope"))
    result = await loop.run_once()
    assert result["ok"] is False
    assert result["errors"] == ["unknown check 'nope' (this agent runs: fake, tcp)"]
    assert loops.emitted == [result]
    assert loop.stats.errors == 1
    assert_valid_on_the_wire(result)


@pytest.mark.parametrize(
    ("instances", "problem"),
    [
        (({"host": "localhost"},), "tcp: invalid instance: missing field 'port'"),
        (({"host": "localhost", "port": 1, "bogus": 2},), "unknown field 'bogus'"),
        # One bad instance among good ones: the config cannot run, and says why.
        (({"host": "localhost", "port": 1}, {"port": 1}), "missing field 'host'"),
    ],
)
async def test_an_invalid_instance_gives_a_failed_result_naming_the_field(
    instances: tuple[dict[str, Any], ...], problem: str
) -> None:
    loops = Loops()
    loop = loops.make(spec(*instances, name="tcp"))
    result = await loop.run_once()
    assert result["ok"] is False
    assert len(result["errors"]) == 1
    assert problem in result["errors"][0]
    assert_valid_on_the_wire(result)


async def test_a_broken_config_keeps_reporting_instead_of_crashing_its_loop() -> None:
    loops = Loops()
    loop = loops.make(spec({}, name="nope", interval_s=0.05, timeout_s=0.05))
    task = asyncio.create_task(loop.run())
    try:
        await loops.clock.run_for(0.2)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # The first run within the first interval, then one per interval: 4 in 0.2 s.
    assert len(loops.emitted) == 4
    assert all(r["ok"] is False for r in loops.emitted)


async def test_a_run_past_its_timeout_fails_with_timed_out_after() -> None:
    loops = Loops()
    loop = loops.make(spec({"sleep_s": 5.0}, timeout_s=0.2))
    running = asyncio.create_task(loop.run_once())
    await loops.clock.run_for(0.2)
    assert running.done()  # at its timeout, not when the check would have ended
    result = running.result()
    assert result["ok"] is False
    assert result["errors"] == ["fake: timed out after 0.2s"]
    assert result["duration_s"] == 0.2
    assert loops.kind.current == 0  # the run was cancelled, not left behind


async def test_a_crashing_check_gives_a_failed_result() -> None:
    loops = Loops()
    loop = loops.make(spec({"crash": "kaput"}))
    result = await loop.run_once()
    assert result["ok"] is False
    assert result["errors"] == ["fake: ValueError: kaput"]


async def test_a_blank_error_still_fails_with_a_message() -> None:
    loops = Loops()
    result = await loops.make(spec({"errors": ["  "]})).run_once()
    assert result["ok"] is False
    assert result["errors"] == ["unknown error"]
    assert_valid_on_the_wire(result)


async def test_stats_count_runs_errors_and_average_time() -> None:
    loops = Loops()
    clock = loops.clock
    assert isinstance(clock, FakeClock)
    loops.kind.script = [
        FakeInstance(sleep_s=0.1),
        FakeInstance(sleep_s=0.05, errors=["first failure"]),
        FakeInstance(sleep_s=0.0, errors=["second failure", "more"]),
        FakeInstance(sleep_s=0.0),
    ]
    loop = loops.make(spec({}))
    assert loop.stats.to_wire() == {
        "avg_execution_s": 0.0,
        "runs": 0,
        "errors": 0,
        "last_error": None,
        "last_run_at": None,
    }
    results = []
    for _ in range(4):
        results.append(await on_fake_time(clock, loop.run_once()))
        clock.advance(10)
    stats = loop.stats.to_wire()
    assert stats["runs"] == 4
    assert stats["errors"] == 2
    assert stats["last_error"] == "second failure"
    assert stats["last_run_at"] == results[-1]["started_at"] == clock.time() - 10
    assert [r["duration_s"] for r in results] == pytest.approx([0.1, 0.05, 0.0, 0.0])
    assert stats["avg_execution_s"] == pytest.approx(0.15 / 4)
    wire.CheckStatsIn.model_validate(stats)  # the dispatcher takes them as sent
    ok = loops.metrics.registry.get_sample_value(
        "clusterchecks_agent_check_ok", {"digest": DIGEST, "check": "fake"}
    )
    assert ok == 1.0
    failures = loops.metrics.registry.get_sample_value(
        "clusterchecks_agent_check_failures_total", {"digest": DIGEST, "check": "fake"}
    )
    assert failures == 2.0
    runs = loops.metrics.registry.get_sample_value(
        "clusterchecks_agent_check_runs_total", {"digest": DIGEST, "check": "fake"}
    )
    assert runs == 4.0


async def test_output_is_cut_to_4_kib() -> None:
    loops = Loops()
    result = await loops.make(spec({"output": "a" * 10_000})).run_once()
    assert result["output"] == "a" * 4096
    assert_valid_on_the_wire(result)


async def test_output_is_cut_on_a_character_boundary() -> None:
    loops = Loops()
    result = await loops.make(spec({"output": "é" * 3000})).run_once()  # 6000 bytes
    assert result["output"] == "é" * 2048
    assert len(result["output"].encode()) == 4096


async def test_errors_are_cut_to_the_wire_limits() -> None:
    loops = Loops()
    many = [f"error {i}" for i in range(150)]
    result = await loops.make(spec({"errors": ["x" * 5000, *many]})).run_once()
    assert len(result["errors"]) == 100
    assert result["errors"][0] == "x" * 4096
    assert_valid_on_the_wire(result)


async def test_several_instances_are_ok_only_when_all_are() -> None:
    loops = Loops()
    good = {"output": "one"}
    bad = {"errors": ["two is down"], "output": "two"}
    failing = await loops.make(spec(good, bad, good)).run_once()
    assert failing["ok"] is False
    assert failing["errors"] == ["two is down"]
    assert loops.kind.runs == 3  # every instance ran
    passing = await loops.make(spec(good, {"output": "three"})).run_once()
    assert passing["ok"] is True
    assert passing["output"] == "one\nthree"


async def test_instances_share_one_timeout() -> None:
    loops = Loops()
    loop = loops.make(spec({"sleep_s": 0.05}, {"sleep_s": 3.0}, timeout_s=0.3))
    result = await on_fake_time(loops.clock, loop.run_once())
    assert result["errors"] == ["fake: timed out after 0.3s"]
    assert result["duration_s"] == pytest.approx(0.3)
    assert loops.kind.current == 0  # the slow instance was cancelled too


async def run_for(clock: FakeClock, loops: list[CheckLoop], seconds: float) -> None:
    tasks = [asyncio.create_task(loop.run()) for loop in loops]
    try:
        await clock.run_for(seconds)
        assert not any(t.done() for t in tasks)  # no loop crashed
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_loop_runs_at_its_interval() -> None:
    loops = Loops()
    loop = loops.make(spec({}, interval_s=0.2, timeout_s=0.2))
    started = loops.clock.monotonic()
    await run_for(loops.clock, [loop], 1.0)
    starts = loops.kind.starts
    assert 0 <= starts[0] - started < 0.2  # the first run comes within one interval (jitter)
    assert len(starts) == 5, starts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([0.2] * 4), gaps
    # On the fake clock no run starts late.
    lateness = loops.metrics.registry.get_sample_value(
        "clusterchecks_agent_scheduling_lateness_seconds_sum"
    )
    assert lateness == pytest.approx(0.0, abs=1e-9)


async def test_an_overrun_skips_missed_slots_instead_of_bursting() -> None:
    loops = Loops()
    loops.kind.script = [FakeInstance(sleep_s=0.55)]  # only the first run is slow
    loop = loops.make(spec({}, interval_s=0.1, timeout_s=1.0))
    started = loops.clock.monotonic()
    await run_for(loops.clock, [loop], 1.0)
    starts = loops.kind.starts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # No catch-up burst of the five missed slots: the next run is the first slot after
    # the overrun ended (0.6 s after the first start), then one per interval.
    first = starts[0] - started
    expected = [0.6] + [0.1] * sum(1 for k in range(7, 11) if first + k * 0.1 <= 1.0)
    assert gaps == pytest.approx(expected), (first, gaps)


@pytest.mark.parametrize("capacity", [1, 2])
async def test_the_capacity_caps_runs_at_the_same_time(capacity: int) -> None:
    loops = Loops(capacity=capacity)
    checks = [
        loops.make(spec({"sleep_s": 0.1}, interval_s=0.1, timeout_s=1, digest=f"{i:016x}"))
        for i in range(4)
    ]
    await run_for(loops.clock, checks, 0.8)
    assert loops.kind.max_concurrent == capacity
    # The cap holds runs back, it does not lose them: the capacity runs every 0.1 s.
    assert loops.kind.runs >= 7 * capacity
