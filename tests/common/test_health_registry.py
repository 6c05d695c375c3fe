"""HealthRegistry: transitions, worst-of status, observers outside the lock, liveness
(grace, required), readiness (standby), probes (sync, async, raising, periodic, stop).
All on a FakeClock: the periodic probes wait on it, so no test waits on real time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from dispatcher.common.clock import FakeClock
from dispatcher.common.health import (
    Component,
    HealthRegistry,
    ProbeResult,
    Status,
    Transition,
)

JOIN_TIMEOUT_S = 2.0


def make(*names: str, required: bool = True) -> tuple[HealthRegistry, FakeClock]:
    clock = FakeClock()
    registry = HealthRegistry(clock=clock)
    for name in names:
        registry.register(name, required=required)
    return registry, clock


def recorder(registry: HealthRegistry) -> list[Transition]:
    seen: list[Transition] = []
    registry.observe(seen.append)
    return seen


def run_in_thread(fn: Callable[[], object]) -> None:
    """Runs fn in a daemon thread; fails (instead of hanging) if it deadlocks."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(JOIN_TIMEOUT_S)
    assert not thread.is_alive(), "report() deadlocked: observer ran under the lock"
    if errors:
        raise errors[0]


# (1) only real transitions propagate ------------------------------------------------


def test_new_component_starts_unspecified_and_required() -> None:
    registry, _ = make("a")
    assert registry.components() == {"a": Component(name="a")}
    assert registry.components()["a"].status is Status.UNSPECIFIED
    assert registry.components()["a"].required is True


def test_register_twice_keeps_the_state() -> None:
    registry, _ = make("a")
    registry.report("a", Status.HEALTHY, "up")
    registry.register("a", required=False)
    component = registry.components()["a"]
    assert (component.status, component.message, component.required) == (
        Status.HEALTHY,
        "up",
        True,
    )


def test_same_status_and_message_propagates_nothing() -> None:
    registry, _ = make("a")
    seen = recorder(registry)
    registry.report("a", Status.DEGRADED, "slow")
    assert seen == [Transition("a", Status.UNSPECIFIED, Status.DEGRADED, "slow")]
    registry.report("a", Status.DEGRADED, "slow")
    registry.report("a", Status.DEGRADED, "slow")
    assert len(seen) == 1
    assert registry.components()["a"].message == "slow"


def test_metadata_only_update_keeps_status_and_does_not_notify() -> None:
    registry, _ = make("a")
    registry.report("a", Status.HEALTHY, "ok", metadata={"v": 1})
    seen = recorder(registry)
    registry.report("a", Status.HEALTHY, "ok", metadata={"v": 2})
    assert seen == []
    component = registry.components()["a"]
    assert component.status is Status.HEALTHY
    assert component.message == "ok"
    assert dict(component.metadata) == {"v": 2}


def test_no_metadata_keeps_the_old_metadata() -> None:
    registry, _ = make("a")
    registry.report("a", Status.HEALTHY, "ok", metadata={"v": 1})
    registry.report("a", Status.DEGRADED, "slow")
    assert dict(registry.components()["a"].metadata) == {"v": 1}


def test_metadata_is_copied_not_aliased() -> None:
    registry, _ = make("a")
    meta = {"v": 1}
    registry.report("a", Status.HEALTHY, "ok", metadata=meta)
    meta["v"] = 99
    assert dict(registry.components()["a"].metadata) == {"v": 1}


def test_message_only_change_is_recorded_but_observer_fires_on_status_change_only() -> None:
    registry, _ = make("a")
    registry.report("a", Status.DEGRADED, "slow")
    seen = recorder(registry)
    registry.report("a", Status.DEGRADED, "slower")
    assert registry.components()["a"].message == "slower"
    assert seen == []
    registry.report("a", Status.HEALTHY, "")
    assert seen == [Transition("a", Status.DEGRADED, Status.HEALTHY, "")]


# (2) overall status is the worst component ------------------------------------------


@pytest.mark.parametrize(
    ("reports", "expected"),
    [
        ([], Status.HEALTHY),  # no component registered below: see test body
        ([("a", Status.UNHEALTHY), ("b", Status.HEALTHY)], Status.UNHEALTHY),
        ([("b", Status.HEALTHY), ("a", Status.UNHEALTHY)], Status.UNHEALTHY),
        ([("a", Status.DEGRADED), ("b", Status.HEALTHY)], Status.DEGRADED),
        ([("a", Status.HEALTHY), ("b", Status.HEALTHY)], Status.HEALTHY),
        ([("a", Status.HEALTHY)], Status.UNSPECIFIED),  # b never reported
        ([("a", Status.DEGRADED), ("b", Status.UNHEALTHY)], Status.UNHEALTHY),
        ([("a", Status.UNHEALTHY), ("a", Status.HEALTHY), ("b", Status.HEALTHY)], Status.HEALTHY),
    ],
)
def test_overall_status_is_worst_not_last_writer(
    reports: list[tuple[str, Status]], expected: Status
) -> None:
    registry, _ = make() if not reports else make("a", "b")
    for name, status in reports:
        registry.report(name, status, "")
    assert registry.liveness().status is expected
    assert registry.readiness().status is expected


def test_non_required_component_still_counts_in_overall_status() -> None:
    registry, _ = make("a")
    registry.register("opt", required=False)
    registry.report("a", Status.HEALTHY)
    registry.report("opt", Status.UNHEALTHY, "down")
    verdict = registry.liveness()
    assert verdict.status is Status.UNHEALTHY
    assert verdict.ok is True


# (3) observers run outside the lock ---------------------------------------------------


def test_observer_may_read_the_registry_and_sees_new_state() -> None:
    registry, _ = make("a", "b")
    registry.report("b", Status.HEALTHY)
    snapshots: list[tuple[Status, bool, bool]] = []

    def observer(t: Transition) -> None:
        snapshots.append(
            (
                registry.components()[t.name].status,
                registry.liveness().ok,
                registry.readiness().ok,
            )
        )

    registry.observe(observer)
    run_in_thread(lambda: registry.report("a", Status.UNHEALTHY, "boom"))
    assert snapshots == [(Status.UNHEALTHY, False, False)]


def test_observer_may_report_from_inside() -> None:
    registry, _ = make("a", "b")
    seen = recorder(registry)

    def cascade(t: Transition) -> None:
        if t.name == "a" and t.new is Status.UNHEALTHY:
            registry.report("b", Status.DEGRADED, "a is down")

    registry.observe(cascade)
    run_in_thread(lambda: registry.report("a", Status.UNHEALTHY, "boom"))
    assert registry.components()["b"].status is Status.DEGRADED
    assert registry.components()["b"].message == "a is down"
    assert [(t.name, t.new) for t in seen] == [
        ("a", Status.UNHEALTHY),
        ("b", Status.DEGRADED),
    ]


async def test_observer_reading_registry_from_async_code_does_not_deadlock() -> None:
    registry, _ = make("a")
    seen: list[dict[str, Component]] = []
    registry.observe(lambda _t: seen.append(registry.components()))
    async with asyncio.timeout(JOIN_TIMEOUT_S):  # fails instead of hanging on a deadlock
        await asyncio.to_thread(registry.report, "a", Status.HEALTHY)
    assert seen
    assert seen[0]["a"].status is Status.HEALTHY


def test_raising_observer_does_not_break_reporting_or_other_observers() -> None:
    registry, _ = make("a")

    def bad(_t: Transition) -> None:
        raise RuntimeError("observer bug")

    registry.observe(bad)
    seen = recorder(registry)
    registry.report("a", Status.UNHEALTHY, "boom")
    assert registry.components()["a"].status is Status.UNHEALTHY
    assert seen == [Transition("a", Status.UNSPECIFIED, Status.UNHEALTHY, "boom")]
    registry.report("a", Status.HEALTHY, "")
    assert registry.components()["a"].status is Status.HEALTHY
    assert len(seen) == 2


# (4) liveness -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("required", "status", "live"),
    [
        (True, Status.UNSPECIFIED, True),
        (True, Status.HEALTHY, True),
        (True, Status.DEGRADED, True),
        (True, Status.UNHEALTHY, False),
        (False, Status.UNHEALTHY, True),
        (False, Status.DEGRADED, True),
    ],
)
def test_liveness_fails_only_on_unhealthy_required(
    required: bool, status: Status, live: bool
) -> None:
    registry, _ = make("c", required=required)
    registry.report("c", status, "x")
    assert registry.liveness().ok is live


def test_liveness_with_no_components_passes() -> None:
    registry, _ = make()
    verdict = registry.liveness()
    assert verdict.ok is True
    assert verdict.components == {}


def test_grace_period_suppresses_liveness_until_it_ends() -> None:
    registry, clock = make("a")
    registry.report("a", Status.UNHEALTHY, "boom")
    assert registry.liveness().ok is False
    registry.suppress_liveness(30)
    assert registry.liveness().ok is True
    clock.advance(29.9)
    assert registry.liveness().ok is True
    clock.advance(0.1)  # exactly at the end: grace is over
    assert registry.liveness().ok is False
    clock.advance(100)
    assert registry.liveness().ok is False


def test_grace_period_covers_failures_reported_during_it() -> None:
    registry, clock = make("a")
    registry.suppress_liveness(10)
    registry.report("a", Status.UNHEALTHY, "boom")
    verdict = registry.liveness()
    assert verdict.ok is True
    assert verdict.status is Status.UNHEALTHY  # the status still tells the truth
    clock.advance(11)
    assert registry.liveness().ok is False


def test_shorter_grace_does_not_cut_a_longer_one() -> None:
    registry, clock = make("a")
    registry.report("a", Status.UNHEALTHY, "boom")
    registry.suppress_liveness(60)
    registry.suppress_liveness(5)
    clock.advance(30)
    assert registry.liveness().ok is True
    clock.advance(31)
    assert registry.liveness().ok is False


def test_grace_does_not_make_readiness_pass() -> None:
    registry, _ = make("a")
    registry.report("a", Status.UNHEALTHY, "boom")
    registry.suppress_liveness(30)
    assert registry.readiness().ok is False


# (5) readiness ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "ready"),
    [
        (Status.HEALTHY, True),
        (Status.DEGRADED, True),
        (Status.UNSPECIFIED, False),
        (Status.UNHEALTHY, False),
    ],
)
def test_readiness_of_a_required_component(status: Status, ready: bool) -> None:
    registry, _ = make("a", "b")
    registry.report("b", Status.HEALTHY)
    registry.report("a", status, "x")
    assert registry.readiness().ok is ready


@pytest.mark.parametrize("status", list(Status))
def test_non_required_component_never_fails_readiness(status: Status) -> None:
    registry, _ = make("a")
    registry.register("opt", required=False)
    registry.report("a", Status.HEALTHY)
    registry.report("opt", status, "x")
    assert registry.readiness().ok is True


def test_freshly_registered_required_component_is_not_ready() -> None:
    registry, _ = make("a")
    assert registry.readiness().ok is False


@pytest.mark.parametrize("status", list(Status))
def test_standby_is_ready_whatever_its_components(status: Status) -> None:
    registry, _ = make("a")
    registry.report("a", status, "x")
    registry.set_standby(True)
    assert registry.readiness().ok is True
    registry.set_standby(False)
    assert registry.readiness().ok is (status in (Status.HEALTHY, Status.DEGRADED))


def test_standby_does_not_make_liveness_pass() -> None:
    registry, _ = make("a")
    registry.report("a", Status.UNHEALTHY, "boom")
    registry.set_standby(True)
    assert registry.liveness().ok is False


def test_verdict_components_are_a_sorted_snapshot() -> None:
    registry, _ = make("b", "a")
    verdict = registry.readiness()
    assert list(verdict.components) == ["a", "b"]
    registry.report("a", Status.HEALTHY)
    assert verdict.components["a"].status is Status.UNSPECIFIED


# (6) probes ---------------------------------------------------------------------------


async def test_probe_once_polls_sync_and_async_probes() -> None:
    registry, _ = make()
    calls: list[str] = []

    def sync_probe() -> ProbeResult:
        calls.append("sync")
        return Status.HEALTHY, "fine"

    async def async_probe() -> ProbeResult:
        calls.append("async")
        await asyncio.sleep(0)
        return Status.DEGRADED, "lagging"

    registry.register("s", probe=sync_probe)
    registry.register("y", probe=async_probe)
    registry.register("manual")
    await registry.probe_once()
    assert sorted(calls) == ["async", "sync"]
    components = registry.components()
    assert (components["s"].status, components["s"].message) == (Status.HEALTHY, "fine")
    assert (components["y"].status, components["y"].message) == (Status.DEGRADED, "lagging")
    assert components["manual"].status is Status.UNSPECIFIED


async def test_raising_probe_makes_component_unhealthy_with_the_error() -> None:
    registry, _ = make()
    seen = recorder(registry)

    def broken() -> ProbeResult:
        raise ConnectionError("redis unreachable")

    async def broken_async() -> ProbeResult:
        raise ValueError("bad answer")

    registry.register("sync", probe=broken)
    registry.register("async", probe=broken_async)
    registry.register("ok", probe=lambda: (Status.HEALTHY, ""))
    await registry.probe_once()
    components = registry.components()
    assert components["sync"].status is Status.UNHEALTHY
    assert "redis unreachable" in components["sync"].message
    assert components["async"].status is Status.UNHEALTHY
    assert "bad answer" in components["async"].message
    # A raising probe does not stop the others.
    assert components["ok"].status is Status.HEALTHY
    # A second identical failure is not a transition.
    count = len(seen)
    await registry.probe_once()
    assert len(seen) == count


async def test_probe_recovers_after_failure() -> None:
    registry, _ = make()
    failing = [True]

    def probe() -> ProbeResult:
        if failing[0]:
            raise OSError("down")
        return Status.HEALTHY, "up"

    registry.register("p", probe=probe)
    await registry.probe_once()
    assert registry.components()["p"].status is Status.UNHEALTHY
    failing[0] = False
    await registry.probe_once()
    assert registry.components()["p"].status is Status.HEALTHY
    assert registry.components()["p"].message == "up"


async def test_run_probes_polls_every_period_and_stops() -> None:
    clock = FakeClock()
    registry = HealthRegistry(clock=clock, probe_period_s=5.0)
    calls: list[float] = []

    def probe() -> ProbeResult:
        calls.append(clock.monotonic())
        return Status.HEALTHY, ""

    registry.register("p", probe=probe)
    stop = asyncio.Event()
    task = asyncio.create_task(registry.run_probes(stop))
    await clock.run_for(20.0)
    # At once, then every period of the clock: 0, 5, 10, 15, 20.
    assert [round(t - calls[0], 6) for t in calls] == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert registry.components()["p"].status is Status.HEALTHY
    stop.set()
    await task
    after = len(calls)
    await clock.run_for(20.0)
    assert len(calls) == after


async def test_run_probes_stops_at_once_while_sleeping() -> None:
    clock = FakeClock()
    registry = HealthRegistry(clock=clock, probe_period_s=30.0)
    calls: list[int] = []

    def probe() -> ProbeResult:
        calls.append(1)
        return Status.HEALTHY, ""

    registry.register("p", probe=probe)
    stop = asyncio.Event()
    task = asyncio.create_task(registry.run_probes(stop))
    await clock.wait_for_timers(1)
    assert calls == [1]  # first poll happens at once, then it sleeps 30 s
    stop.set()
    await task  # no time passes on the clock: the stop ends the sleep
    assert clock.pending_timers() == 0
    assert task.done()
    assert task.exception() is None


async def test_run_probes_with_stop_already_set_polls_nothing() -> None:
    clock = FakeClock()
    registry = HealthRegistry(clock=clock, probe_period_s=5.0)
    calls: list[int] = []

    def probe() -> ProbeResult:
        calls.append(1)
        return Status.HEALTHY, ""

    registry.register("p", probe=probe)
    stop = asyncio.Event()
    stop.set()
    started = clock.monotonic()
    await registry.run_probes(stop)  # returns without waiting: no time passes
    assert calls == []
    assert clock.monotonic() == started
    assert clock.pending_timers() == 0


async def test_run_probes_survives_a_raising_probe() -> None:
    clock = FakeClock()
    registry = HealthRegistry(clock=clock, probe_period_s=5.0)
    calls: list[float] = []

    def probe() -> ProbeResult:
        calls.append(clock.monotonic())
        raise RuntimeError("flaky")

    registry.register("p", probe=probe)
    stop = asyncio.Event()
    task = asyncio.create_task(registry.run_probes(stop))
    await clock.run_for(10.0)
    # Every raise was caught: the loop kept its period (at once, 5 s, 10 s).
    assert [round(t - calls[0], 6) for t in calls] == [0.0, 5.0, 10.0]
    assert not task.done()
    stop.set()
    await task
    assert registry.components()["p"].status is Status.UNHEALTHY
    assert "flaky" in registry.components()["p"].message


# (7) unregistered names ---------------------------------------------------------------


def test_report_on_unregistered_name_is_ignored() -> None:
    registry, _ = make("a")
    seen = recorder(registry)
    registry.report("ghost", Status.UNHEALTHY, "boo", metadata={"x": 1})
    assert list(registry.components()) == ["a"]
    assert seen == []
    assert registry.liveness().ok is True
    assert registry.liveness().status is Status.UNSPECIFIED
