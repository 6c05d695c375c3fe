"""The leadership handler with in-process replicas.

Every replica is a full dispatcher built by ``service.build`` (the handler path: an
elected backend), sharing one in-memory lease backend and, for the shared-store tests,
one in-memory state store, exactly as several processes would share Redis.

Every test runs on a FakeClock: leases, renew deadlines, the electors' retries and
timeouts, warm-up and node expiry are all judged on fake time that moves only when a
test says so (``Cluster.leader`` moves it one retry period at a time until one replica
leads). So "at once" means: with no time passed on the clock, and time bounds are exact
bounds of fake time derived from the settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from dispatcher.common.clock import Clock, FakeClock
from dispatcher.common.health import Status
from dispatcher.core.history import HistoryEntry
from dispatcher.core.model import (
    CheckConfig,
    CheckResult,
    Digest,
    NodeName,
    SourceName,
    make_config,
)
from dispatcher.core.snapshot import StateDelta
from dispatcher.core.state import ClusterState
from dispatcher.election.base import LeaderInfo, LeaseRecord
from dispatcher.election.memory import MemoryLeaseBackend
from dispatcher.engine import Dispatcher
from dispatcher.errors import NoLeader, StoreError
from dispatcher.leadership import THREAD_MIN_RECORDS, LeadershipHandler, Role
from dispatcher.service import DispatcherService, build
from dispatcher.settings import (
    DispatchSettings,
    ElectionSettings,
    ServerSettings,
    Settings,
    StoreSettings,
)
from dispatcher.storage.memory import MemoryStateStore
from tests.node_agent.helpers import eventually
from tests.processes import free_port

API_PATH = "/v1/api/clusterchecks"
SOURCE = SourceName("api")
N1, N2, N3 = NodeName("n1"), NodeName("n2"), NodeName("n3")
GUARD_S = 10.0
"""Only keeps a broken test from hanging on real I/O (a loopback request); never a measure."""

# Leases long enough that a test may move the clock by a node's expiry (30 s) in one
# jump, which no elector renews during, and keep its lease.
FAKE_TIME = ElectionSettings(
    backend="redis", lease_duration_s=60.0, renew_deadline_s=40.0, retry_period_s=1.0
)


def check(label: str, node_selector: dict[str, str] | None = None) -> CheckConfig:
    return make_config(
        name="http", instances=[{"url": f"http://{label}/healthz"}], node_selector=node_selector
    )


class GatedStore(MemoryStateStore):
    """The in-memory store, whose writes can be held in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def write(self, delta: StateDelta, *, epoch: int) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().write(delta, epoch=epoch)


class HistoryGatedStore(MemoryStateStore):
    """The in-memory store, whose ``load_history`` can be held (a big history being read
    while the new leader already serves)."""

    def __init__(self) -> None:
        super().__init__()
        self.history_gate = asyncio.Event()
        self.history_gate.set()
        self.history_reads = 0
        self.history_failures = 0
        """Reads that fail (StoreError) before one succeeds."""
        self.history_read_at: list[float] = []
        self.clock: FakeClock | None = None

    async def load_history(self) -> dict[Digest, list[HistoryEntry]]:
        await self.history_gate.wait()
        self.history_reads += 1
        self.history_read_at.append(self.clock.monotonic() if self.clock else 0.0)
        if self.history_failures:
            self.history_failures -= 1
            raise StoreError("history row 7 is not readable")
        return await super().load_history()


async def history_installed(dispatcher: Dispatcher) -> None:
    """Waits (no fake time passing) until the store's history is in the state: it is put
    in order in a worker thread, so this polls on real time (``eventually``)."""
    await eventually(lambda: not dispatcher.state.history.loading)


class RecordingLeaseBackend(MemoryLeaseBackend):
    """The in-memory lease backend, noting what each replica's dispatcher was doing at
    the moment it released the lease."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.active_at_release: dict[str, bool] = {}
        self.dispatchers: dict[str, Dispatcher] = {}

    async def release(self, *, identity: str) -> None:
        dispatcher = self.dispatchers.get(identity)
        if dispatcher is not None:
            self.active_at_release[identity] = dispatcher.active
        await super().release(identity=identity)

    def holder(self) -> LeaseRecord | None:
        return self._record


@dataclass
class Replica:
    name: str
    service: DispatcherService
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def handler(self) -> LeadershipHandler:
        handler = self.service.handler
        assert handler is not None, "build() took the embedded path, not the handler"
        return handler

    @property
    def dispatcher(self) -> Dispatcher:
        return self.service.dispatcher

    @property
    def url(self) -> str:
        return self.service.settings.server.url

    def start(self) -> None:
        self.task = asyncio.create_task(self.handler.run(self.stop), name=f"replica-{self.name}")

    async def shutdown(self) -> None:
        """Stops the replica; no time passes on the clock."""
        self.stop.set()
        if self.task is not None:
            await until(self.task.done)
            await self.task


class Cluster:
    """Replicas sharing one lease backend and (optionally) one state store."""

    def __init__(
        self,
        *,
        clock: FakeClock,
        store: MemoryStateStore | None,
        election: ElectionSettings = FAKE_TIME,
        dispatch: DispatchSettings | None = None,
    ) -> None:
        self.clock = clock
        self.backend = RecordingLeaseBackend(clock)
        self.store = store
        self.election = election
        self.dispatch = dispatch or DispatchSettings(node_expiration_timeout_s=30.0)
        self.replicas: list[Replica] = []

    def add(self, name: str, *, url: str | None = None, start: bool = True) -> Replica:
        settings = Settings(
            server=ServerSettings(identity=name, advertise_url=url or f"http://{name}.test:5005"),
            dispatch=self.dispatch,
            election=self.election,
            store=StoreSettings(backend="redis" if self.store is not None else "memory"),
        )
        service = build(settings, clock=self.clock, lease_backend=self.backend, store=self.store)
        replica = Replica(name, service)
        self.backend.dispatchers[name] = replica.dispatcher
        self.replicas.append(replica)
        if start:
            replica.start()
        return replica

    def leaders(self) -> list[Replica]:
        return [r for r in self.replicas if r.handler.is_leader()]

    async def leader(
        self, *, among: Sequence[Replica] | None = None, within_s: float | None = None
    ) -> Replica:
        """Moves the clock on one retry period at a time until exactly one replica leads
        (and its term is served); fails once ``within_s`` of fake time (by default two
        retry periods, jitter included) have passed without one."""
        pool = list(among) if among is not None else self.replicas
        step = self.election.retry_period_s
        limit = self.clock.monotonic() + (within_s if within_s is not None else 2.5 * step)
        while True:
            await self.clock.settle()
            leaders = [r for r in pool if r.handler.is_leader()]
            if len(leaders) == 1:
                return leaders[0]
            if self.clock.monotonic() >= limit:
                raise AssertionError(
                    f"{len(leaders)} replicas lead after {within_s} s of fake time; the "
                    f"lease is held by {self.backend.holder()}, roles "
                    f"{ {r.name: r.handler.role.value for r in pool} }"
                )
            await self.clock.run_for(step)

    async def close(self) -> None:
        for replica in self.replicas:
            replica.stop.set()
        tasks = [r.task for r in self.replicas if r.task is not None]
        await until(lambda: all(task.done() for task in tasks))
        await asyncio.gather(*tasks, return_exceptions=True)
        for replica in self.replicas:
            for close in replica.service.closers:
                await close()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def clusters() -> AsyncIterator[list[Cluster]]:
    """Clusters made by a test are stopped at its end (every replica's task awaited)."""
    made: list[Cluster] = []
    try:
        yield made
    finally:
        for cluster in made:
            await cluster.close()


MakeCluster = Callable[..., Cluster]


@pytest.fixture
def make_cluster(clusters: list[Cluster], fake_clock: FakeClock) -> MakeCluster:
    def make(
        *,
        store: MemoryStateStore | None,
        election: ElectionSettings = FAKE_TIME,
        dispatch: DispatchSettings | None = None,
    ) -> Cluster:
        cluster = Cluster(clock=fake_clock, store=store, election=election, dispatch=dispatch)
        clusters.append(cluster)
        return cluster

    return make


async def configs_of(dispatcher: Dispatcher, node: NodeName) -> list[Digest]:
    _, configs = await dispatcher.node_configs(node)
    return [c.digest for c in configs]


async def renewed(cluster: Cluster) -> None:
    """Lets every elector take a few more steps: a few retry periods of fake time."""
    await cluster.clock.run_for(cluster.election.retry_period_s * 3)


async def until(condition: Callable[[], bool], *, rounds: int = 500) -> None:
    """Yields to the event loop until ``condition()`` holds: for what follows from an
    event with no time passing (a callback, a cancelled task); fails after ``rounds``."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{condition} did not hold with no time passing")


# -------------------------------------------------------------- one leader


async def test_exactly_one_replica_leads_and_only_its_dispatcher_serves(
    make_cluster: MakeCluster,
) -> None:
    store = MemoryStateStore()
    cluster = make_cluster(store=store)
    replicas = [cluster.add(name) for name in ("a", "b", "c")]

    leader = await cluster.leader()
    followers = [r for r in replicas if r is not leader]
    await until(lambda: all(f.handler.role is Role.FOLLOWER for f in followers))
    for _ in range(5):  # and it stays that way while everyone keeps campaigning
        await renewed(cluster)
        assert cluster.leaders() == [leader]

    assert leader.handler.role is Role.LEADER
    assert leader.handler.terms == 1
    epoch = leader.dispatcher.epoch
    assert epoch > 0
    assert store.epoch == epoch, "the leader claimed the store with its term's epoch"
    assert leader.handler.leader() == LeaderInfo(identity=leader.name, url=leader.url, epoch=epoch)
    assert await leader.dispatcher.node_status(N1, last_change=-1) is True
    assert N1 in store.nodes, "the leader's step was written through"

    for follower in followers:
        assert follower.handler.terms == 0
        assert follower.handler.leader() == LeaderInfo(leader.name, leader.url, epoch)
        assert not follower.dispatcher.active
        with pytest.raises(NoLeader):
            await follower.dispatcher.node_status(N2, last_change=-1)
        with pytest.raises(NoLeader):
            await follower.dispatcher.read(lambda state: len(state.nodes))
    assert N2 not in store.nodes


# ------------------------------------------------------ losing the lease


async def test_a_leader_whose_deadline_passes_takes_no_further_step_even_before_its_callback(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    cluster = make_cluster(store=None, dispatch=DispatchSettings(node_expiration_timeout_s=30.0))
    leader = await cluster.leader(among=[cluster.add("a")])
    await leader.dispatcher.node_status(N1, last_change=-1)
    counter, _ = await leader.dispatcher.node_configs(N1)
    poll = asyncio.create_task(leader.dispatcher.node_configs(N1, since=counter, wait_s=10.0))
    await fake_clock.settle()
    assert not poll.done(), "the long poll is waiting"

    cluster.backend.down = True
    fake_clock.advance(FAKE_TIME.renew_deadline_s)  # past the deadline, and past N1's expiry

    # No await has let the elector run yet: its callback has not come, but the
    # dispatcher already refuses to act (may_act is asked before every step).
    assert leader.handler.role is Role.LEADER, "the callback came early; this test proves less"
    assert not leader.dispatcher.active
    assert not leader.handler.is_leader()
    await leader.dispatcher.tick()  # would expire N1 if the deposed leader still acted
    assert N1 in leader.dispatcher.state.nodes
    assert leader.dispatcher.state.take_events().removed_nodes == []
    with pytest.raises(NoLeader):
        await leader.dispatcher.node_status(N2, last_change=-1)

    # The callback follows with no more time passing (the elector wakes for its deadline):
    # the term ends and the long poll with it.
    await until(lambda: leader.handler.role is Role.FOLLOWER)
    await until(poll.done)
    with pytest.raises(NoLeader):
        poll.result()
    assert leader.dispatcher.state.nodes == {}, "the deposed term's state is dropped"
    assert leader.handler.leader() is None
    assert cluster.leaders() == []


async def test_a_lease_backend_outage_makes_the_leader_step_down_by_its_renew_deadline(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    cluster = make_cluster(store=MemoryStateStore())
    replicas = [cluster.add("a"), cluster.add("b")]
    leader = await cluster.leader()
    first_epoch = leader.dispatcher.epoch
    await renewed(cluster)
    down_at = fake_clock.monotonic()
    cluster.backend.down = True

    # An agent heartbeats the leader every quarter second of fake time; every answer is
    # noted with the time it was given (the background tick keeps the node alive).
    accepted: list[float] = []
    refused: list[float] = []
    roles: list[Role] = []
    step_s = 0.25
    while fake_clock.monotonic() < down_at + FAKE_TIME.renew_deadline_s + 2:
        try:
            await leader.dispatcher.node_status(N1, last_change=-1)
            accepted.append(fake_clock.monotonic())
        except NoLeader:
            refused.append(fake_clock.monotonic())
            roles.append(leader.handler.role)
        await fake_clock.run_for(step_s)

    # The deadline is the start of the last successful renewal (at most one retry period
    # before the outage) plus the renew deadline.
    assert accepted, "the agent was never served"
    assert refused, "the agent was never refused"
    assert max(accepted) < min(refused), "a step was accepted after the first refusal"
    deadline = FAKE_TIME.renew_deadline_s
    assert deadline - FAKE_TIME.retry_period_s <= min(refused) - down_at <= deadline
    assert min(refused) - max(accepted) == step_s, "refused from the first step past it"
    # The elector wakes for its deadline: by the first refusal it has stepped down.
    assert set(roles) == {Role.FOLLOWER}
    assert cluster.leaders() == [], "someone leads although no lease can be taken"

    await fake_clock.run_for(FAKE_TIME.lease_duration_s)  # the lease runs out meanwhile
    assert cluster.leaders() == []
    cluster.backend.down = False
    again = await cluster.leader()
    assert again.dispatcher.epoch > first_epoch
    assert again in replicas


# ---------------------------------------------------------- a shared store


async def test_a_new_leader_loads_the_store_keeps_every_placement_and_serves_at_once(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    store = MemoryStateStore()
    # Warm-up is set, to show that a leader that loads a shared store does not use it.
    cluster = make_cluster(
        store=store,
        dispatch=DispatchSettings(node_expiration_timeout_s=30.0, warmup_duration_s=30.0),
    )
    cluster.add("a")
    cluster.add("b")
    first = await cluster.leader()
    # An empty store: the first leader warms up (to rebuild from the agents), then places.
    assert first.dispatcher.warming_up()
    await fake_clock.run_for(30.0)
    assert not first.dispatcher.warming_up()
    old = first.dispatcher
    await old.node_status(N1, last_change=-1, labels={"zone": "a"}, capacity=2)
    await old.node_status(N2, last_change=-1, labels={"zone": "b"})
    await old.node_status(N3, last_change=-1)
    configs = [check(f"c{i}") for i in range(6)]
    configs.append(check("zoned", node_selector={"zone": "b"}))
    await old.replace_source(SOURCE, configs)
    await old.cordon(N3)
    placement = dict(old.state.placement)
    assert set(placement) == {c.digest for c in configs}
    assert set(placement.values()) == {N1, N2, N3}
    before = {n: await configs_of(old, n) for n in (N1, N2, N3)}
    assert dict(store.placement) == placement, "every answered step is in the store"
    old_epoch = old.epoch
    await fake_clock.run_for(5.0)  # the nodes' last heartbeats are 5 s old at the takeover

    await first.shutdown()
    second = await cluster.leader()
    assert second is not first
    new = second.dispatcher

    assert new.epoch > old_epoch
    assert store.epoch == new.epoch
    assert dict(new.state.placement) == placement, "a placement moved on failover"
    assert not new.warming_up()
    assert new.state.dangling == {}
    for node, digests in before.items():
        assert await configs_of(new, node) == digests
    assert new.state.nodes[N3].cordoned
    assert new.state.nodes[N1].capacity == 2
    assert new.state.source_configs(SOURCE)[0].digest == min(c.digest for c in configs)

    # It serves at once: heartbeats answer, and a new check is placed, not held back.
    assert await new.node_status(N1, last_change=-1) is True
    extra = check("extra")
    await new.add_to_source(SOURCE, [extra])
    assert new.state.placement.get(extra.digest) in (N1, N2)
    assert store.placement[extra.digest] == new.state.placement[extra.digest]

    # Every node's expiry clock restarted at the takeover.
    fake_clock.advance(29.0)
    await new.node_status(N1, last_change=-1)
    await new.tick()
    assert set(new.state.nodes) == {N1, N2, N3}
    fake_clock.advance(2.0)
    await new.tick()
    assert set(new.state.nodes) == {N1}
    # A tick answers nobody, so it does not wait for the store; its writes follow.
    await until(lambda: set(store.nodes) == {N1})
    assert dict(store.placement) == dict(new.state.placement)
    assert set(new.state.placement.values()) <= {N1}


async def test_a_new_leader_without_a_shared_store_warms_up_and_adopts_what_agents_run(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    warmup_s = 30.0
    cluster = make_cluster(
        store=None,
        dispatch=DispatchSettings(node_expiration_timeout_s=300.0, warmup_duration_s=warmup_s),
    )
    cluster.add("a")
    cluster.add("b")
    first = await cluster.leader()
    old = first.dispatcher
    assert old.warming_up(), "an elected leader with the memory store starts warming up"
    assert await old.node_status(N1, last_change=12345) is True, "up to date while warming"
    await old.node_status(N2, last_change=-1)
    fake_clock.advance(warmup_s + 1)
    await renewed(cluster)
    assert not old.warming_up()
    configs = [check(f"c{i}") for i in range(4)]
    await old.replace_source(SOURCE, configs)
    placement = dict(old.state.placement)
    assert set(placement.values()) == {N1, N2}
    counters = {n: (await old.node_configs(n))[0] for n in (N1, N2)}
    running = {n: [d for d, where in placement.items() if where == n] for n in (N1, N2)}

    await first.shutdown()
    second = await cluster.leader()
    new = second.dispatcher
    assert new.epoch > old.epoch
    assert new.warming_up()
    assert new.state.configs == {}, "nothing survives a failover without a shared store"

    # Agents re-register with what they run, quoting the old leader's counters: the
    # warming leader tells them they are up to date, so they keep running it.
    for node in (N1, N2):
        assert await new.node_status(node, last_change=counters[node], running=running[node])
    assert new.state.placement == {}

    # The source re-sends its checks (one more besides, that no agent runs).
    extra = check("extra")
    await new.replace_source(SOURCE, [*configs, extra])
    assert {d: new.state.placement.get(d) for d in placement} == placement, "reshuffled"
    assert extra.digest in new.state.dangling, "placed during warm-up without a report"
    assert "reported running" in new.state.explain(configs[0].digest, now=fake_clock.monotonic())

    fake_clock.advance(warmup_s + 1)
    await renewed(cluster)
    await new.tick()
    assert not new.warming_up()
    assert new.state.placement.get(extra.digest) in (N1, N2)
    assert {d: new.state.placement[d] for d in placement} == placement
    stale = counters[N1] - 1
    assert await new.node_status(N1, last_change=stale) is False, "warm-up is over"


async def test_a_fenced_write_makes_the_leader_step_down(make_cluster: MakeCluster) -> None:
    store = MemoryStateStore()
    cluster = make_cluster(store=store)
    leader = await cluster.leader(among=[cluster.add("a")])
    await leader.dispatcher.node_status(N1, last_change=-1)
    assert N1 in store.nodes

    await store.claim(epoch=leader.dispatcher.epoch + 10)  # another term claims the store
    with pytest.raises(NoLeader, match="shared store"):
        await leader.dispatcher.node_status(N2, last_change=-1)

    await until(lambda: leader.handler.role is Role.FOLLOWER)
    assert not leader.dispatcher.active
    assert not leader.handler.is_leader()
    assert leader.handler.leader() is None
    with pytest.raises(NoLeader):
        await leader.dispatcher.node_status(N3, last_change=-1)
    assert set(store.nodes) == {N1}, "the fenced write reached the store"
    assert store.writes == 1


async def test_a_store_that_loses_its_data_is_written_again_and_the_term_goes_on(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    """Redis restarted empty under the leader (lease and store both gone): its next
    write finds the store lost; it claims it again with the same epoch, writes its
    whole state, and answers. No new term, no warm-up, and a later failover finds
    every check in the store."""
    store = MemoryStateStore()
    cluster = make_cluster(store=store)
    cluster.add("a")
    cluster.add("b")
    leader = await cluster.leader()
    await fake_clock.run_for(30.0)  # past the first leader's warm-up (empty store)
    dispatcher = leader.dispatcher
    await dispatcher.node_status(N1, last_change=-1)
    await dispatcher.node_status(N2, last_change=-1)
    configs = [check(f"c{i}") for i in range(4)]
    await dispatcher.replace_source(SOURCE, configs)
    placement = dict(dispatcher.state.placement)
    assert set(placement) == {c.digest for c in configs}
    epoch = dispatcher.epoch

    cluster.backend.lose()
    store.lose()
    started = fake_clock.monotonic()
    assert await dispatcher.node_status(N3, last_change=-1) is True, "refused after the loss"
    assert fake_clock.monotonic() == started, "the repair waited on the clock"
    assert store.epoch == epoch, "claimed again by the same term"
    assert dict(store.placement) == placement
    assert set(store.configs) == set(placement)
    assert set(store.nodes) == {N1, N2, N3}
    assert dict(store.sources) == {SOURCE: frozenset(placement)}

    await renewed(cluster)  # the lease is given back to the same term
    assert cluster.leaders() == [leader]
    assert leader.handler.terms == 1
    assert dispatcher.epoch == epoch
    assert not dispatcher.warming_up()
    assert all(r.handler.terms == 0 for r in cluster.replicas if r is not leader)

    await leader.shutdown()
    second = await cluster.leader()
    assert second is not leader
    assert second.dispatcher.epoch > epoch
    assert dict(second.dispatcher.state.placement) == placement, "a check was lost"
    assert not second.dispatcher.warming_up()


async def test_an_idle_leader_finds_a_lost_store_within_a_retry_period_and_writes_it_again(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    store = MemoryStateStore()
    cluster = make_cluster(store=store)
    cluster.add("a")
    cluster.add("b")
    leader = await cluster.leader()
    dispatcher = leader.dispatcher
    await dispatcher.node_status(N1, last_change=-1)
    await dispatcher.replace_source(SOURCE, [check("one"), check("two")])
    await fake_clock.settle()
    written = store.writes
    epoch = dispatcher.epoch
    await fake_clock.run_for(3 * FAKE_TIME.retry_period_s)
    assert store.writes == written, "an idle leader wrote to the store"

    store.lose()
    cluster.backend.lose()
    lost_at = fake_clock.monotonic()
    await fake_clock.run_for(FAKE_TIME.retry_period_s)
    assert store.epoch == epoch, f"not claimed again within {FAKE_TIME.retry_period_s} s"
    assert dict(store.placement) == dict(dispatcher.state.placement)
    assert len(store.configs) == 2
    assert fake_clock.monotonic() - lost_at == FAKE_TIME.retry_period_s
    component = leader.service.health.components()["store"]
    assert component.status is Status.HEALTHY
    assert f"written again by epoch {epoch}" in component.message, component
    assert cluster.leaders() == [leader]
    assert leader.handler.terms == 1


# ----------------------------------------------------------------- shutdown


async def test_shutdown_ends_the_term_then_releases_the_lease_so_another_takes_over_at_once(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    store = MemoryStateStore()
    cluster = make_cluster(store=store)
    cluster.add("a")
    cluster.add("b")
    first = await cluster.leader()
    await first.dispatcher.node_status(N1, last_change=-1)
    counter, _ = await first.dispatcher.node_configs(N1)
    poll = asyncio.create_task(first.dispatcher.node_configs(N1, since=counter, wait_s=10.0))
    await fake_clock.settle()
    assert not poll.done(), "the long poll is waiting"
    first_epoch = first.dispatcher.epoch

    await first.shutdown()  # the fake clock does not move: the lease cannot expire

    assert first.task is not None
    assert first.task.done()
    assert cluster.backend.active_at_release == {first.name: False}, (
        "the lease was released while the term was still being served"
    )
    assert not first.dispatcher.active
    assert first.handler.role is Role.FOLLOWER
    await until(poll.done)  # ended with the term, not by its wait_s
    with pytest.raises(NoLeader):
        poll.result()
    # Within a retry period or two of fake time, where a lease left to expire would
    # take its whole duration.
    second = await cluster.leader(within_s=2.5 * FAKE_TIME.retry_period_s)
    assert second is not first
    assert second.dispatcher.epoch > first_epoch
    holder = cluster.backend.holder()
    assert holder is not None
    assert holder.holder == second.name
    assert store.epoch == second.dispatcher.epoch
    assert N1 in second.dispatcher.state.nodes


async def test_a_planned_stop_writes_the_results_that_wait_for_their_write_first(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    """Results wait up to a second to share a write; a stop does not drop them: the next
    leader (or a restart) finds the last run in the history."""
    store = MemoryStateStore()
    cluster = make_cluster(store=store, dispatch=DispatchSettings(node_expiration_timeout_s=30.0))
    cluster.add("a")
    first = await cluster.leader()
    dispatcher = first.dispatcher
    await dispatcher.node_status(N1, last_change=-1)
    config = check("last")
    await dispatcher.replace_source(SOURCE, [config])
    result = CheckResult(config.digest, "last-run", True, (), fake_clock.time(), 0.1)
    assert await dispatcher.record_results(N1, [result]) == (1, [])
    assert config.digest not in store.history, "it waits for its timer (no time passed)"

    started = fake_clock.monotonic()
    await first.shutdown()

    assert [e.run_id for e in store.history[config.digest]] == ["last-run"]
    assert fake_clock.monotonic() == started  # written at once, not after the timer


async def test_a_new_leader_serves_its_checks_before_their_history_is_loaded(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    """The history is read once the term serves (at 100,000 checks it is some 500,000
    results): meanwhile the checks are served and results recorded; then the stored
    history goes in before them, but not for a check deleted meanwhile."""
    store = HistoryGatedStore()
    cluster = make_cluster(store=store, dispatch=DispatchSettings(node_expiration_timeout_s=30.0))
    cluster.add("a")
    cluster.add("b")
    first = await cluster.leader()
    kept, dropped = check("kept"), check("dropped")
    await first.dispatcher.node_status(N1, last_change=-1)
    await first.dispatcher.replace_source(SOURCE, [kept, dropped])
    now = fake_clock.time()
    old_runs = [
        CheckResult(c.digest, f"{c.digest[:4]}-old", True, (), now - 30, 0.1)
        for c in (kept, dropped)
    ]
    assert await first.dispatcher.record_results(N1, old_runs) == (2, [])
    store.history_gate.clear()
    await first.shutdown()  # a planned stop writes the results
    assert set(store.history) == {kept.digest, dropped.digest}

    second = await cluster.leader()
    new = second.dispatcher
    assert new.state.history.loading
    assert await configs_of(new, N1) == sorted([kept.digest, dropped.digest])
    assert new.state.history.results(kept.digest, now_wall=now) == []
    new_run = CheckResult(kept.digest, "new", True, (), now - 1, 0.1)
    assert await new.record_results(N1, [new_run]) == (1, [])
    await new.replace_source(SOURCE, [kept])  # "dropped" is deleted before the load

    store.history_gate.set()
    await history_installed(new)

    assert store.history_reads == 1
    got = new.state.history.results(kept.digest, now_wall=now)
    assert [e.run_id for e in got] == ["new", f"{kept.digest[:4]}-old"]
    assert dropped.digest not in new.state.history
    assert second.handler.is_leader()


async def test_a_big_store_is_rebuilt_in_a_worker_thread_and_served_whole(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    """From THREAD_MIN_RECORDS records the state is rebuilt, and the loaded history put
    in order, in a worker thread (the loop stays free to renew the lease): the same
    checks, on the same nodes, with their history, as a small store gets on the loop."""
    count = THREAD_MIN_RECORDS // 2 + 1  # configs and placements: over the threshold
    old = ClusterState(track_changes=True)
    old.node_status(N1, now=0.0, last_change=-1)
    old.node_status(N2, now=0.0, last_change=-1)
    configs = [check(f"big-{i}") for i in range(count)]
    old.replace_source(SOURCE, configs, now=0.0)
    now = fake_clock.time()
    for node in (N1, N2):
        runs = [
            CheckResult(d, f"{d[:6]}-{k}", True, (), now - 30 + k, 0.1)
            for d, on in old.placement.items()
            if on == node
            for k in range(2)
        ]
        old.record_results(node, runs, now_wall=now)
    store = MemoryStateStore()
    await store.claim(epoch=1)
    await store.write(old.take_delta(), epoch=1)
    assert sum(len(e) for e in store.history.values()) == 2 * count >= THREAD_MIN_RECORDS

    cluster = make_cluster(store=store)
    replica = cluster.add("a")
    await eventually(replica.handler.is_leader)  # the rebuild ran on real time
    new = replica.dispatcher
    assert dict(new.state.placement) == dict(old.placement)
    await history_installed(new)
    sample = configs[count // 2].digest
    got = new.state.history.results(sample, now_wall=now)
    assert [e.run_id for e in got] == [f"{sample[:6]}-1", f"{sample[:6]}-0"]
    assert len(new.state.history) == 2 * count


async def test_a_failed_history_read_is_retried_less_and_less_often_while_the_leader_serves(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    """An unreadable stored result fails every read until it is fixed: the leader serves
    all the same, the store's health says why, and the reads thin out (a retry period,
    then twice that, ...); once one succeeds the history is in and the health is back."""
    store = HistoryGatedStore()
    store.clock = fake_clock
    cluster = make_cluster(store=store, dispatch=DispatchSettings(node_expiration_timeout_s=60.0))
    cluster.add("a")
    first = await cluster.leader()
    config = check("kept")
    await first.dispatcher.node_status(N1, last_change=-1)
    await first.dispatcher.replace_source(SOURCE, [config])
    run = CheckResult(config.digest, "old", True, (), fake_clock.time() - 30, 0.1)
    assert await first.dispatcher.record_results(N1, [run]) == (1, [])
    await first.shutdown()
    store.history_failures = 2

    cluster.add("b")
    second = await cluster.leader(among=[cluster.replicas[1]])
    await until(lambda: store.history_reads == 1)
    started = store.history_read_at[0]
    component = second.service.health.components()["store"]
    assert component.status is Status.DEGRADED
    assert "history row 7 is not readable" in component.message
    assert await configs_of(second.dispatcher, N1) == [config.digest], "it serves meanwhile"

    retry = FAKE_TIME.retry_period_s
    await fake_clock.run_for(retry + 2 * retry)
    await history_installed(second.dispatcher)

    assert [t - started for t in store.history_read_at] == [0.0, retry, retry + 2 * retry]
    got = second.dispatcher.state.history.results(config.digest, now_wall=fake_clock.time())
    assert [e.run_id for e in got] == ["old"]
    assert second.service.health.components()["store"].status is Status.HEALTHY


async def test_a_reply_waiting_for_the_store_ends_with_no_leader_when_the_term_ends(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    """Like a long poll, a reply that waits for its step to be stored is pending work of
    the term: when the term ends it must end too (503, retry), not hang until the
    writer's wait timeout (the renew deadline) with nobody left to write."""
    store = GatedStore()
    cluster = make_cluster(store=store)
    cluster.add("a")
    cluster.add("b")
    first = await cluster.leader()
    store.gate.clear()
    reply = asyncio.create_task(first.dispatcher.node_status(N1, last_change=-1))
    try:
        async with asyncio.timeout(GUARD_S):
            await store.entered.wait()
        started = fake_clock.monotonic()
        await first.shutdown()
        assert not first.dispatcher.active
        await until(reply.done)  # not left to the writer's wait timeout (fake time)
        assert fake_clock.monotonic() == started
        with pytest.raises(NoLeader):
            reply.result()
    finally:
        store.gate.set()
        reply.cancel()
        await asyncio.gather(reply, return_exceptions=True)


# ---------------------------------------------------------------- forwarding


async def test_a_follower_forwards_to_the_leader_once_and_says_who_leads(
    make_cluster: MakeCluster, aiohttp_server: AiohttpServer
) -> None:
    cluster = make_cluster(store=MemoryStateStore())
    seen: dict[str, list[tuple[str, str | None]]] = {"a": [], "b": []}
    servers = {}
    replicas = []
    for name in ("a", "b"):
        port = free_port()
        replica = cluster.add(name, url=f"http://127.0.0.1:{port}", start=False)
        app = replica.service.app

        async def record(
            request: web.Request, response: web.StreamResponse, name: str = name
        ) -> None:
            seen[name].append((request.path, request.headers.get("X-Clusterchecks-Forwarded")))

        app.on_response_prepare.append(record)
        servers[name] = await aiohttp_server(app, port=port)
        replicas.append(replica)
    for replica in replicas:
        replica.start()
    leader = await cluster.leader()
    [follower] = [r for r in replicas if r is not leader]
    await until(lambda: follower.handler.leader() is not None)
    status_path = f"{API_PATH}/status/node-a"

    async with aiohttp.ClientSession() as session:
        async with session.post(follower.url + status_path, json={"last_change": -1}) as reply:
            body = await reply.json()
            assert reply.status == 200, body
            assert reply.headers["X-Clusterchecks-Leader"] == leader.name
        assert body["leader"] == leader.name, "the leader answered, not the follower"
        assert body["epoch"] == leader.dispatcher.epoch
        assert NodeName("node-a") in leader.dispatcher.state.nodes
        assert (status_path, "1") in seen[leader.name], "the leader saw a forwarded request"
        assert (status_path, None) in seen[follower.name]

        async with session.get(follower.url + API_PATH) as reply:
            assert reply.status == 200
            state = await reply.json()
        assert [n["name"] for n in state["nodes"]] == ["node-a"]

        # A forwarded request that reaches a follower is not forwarded again.
        async with session.post(
            follower.url + status_path,
            json={"last_change": -1},
            headers={"X-Clusterchecks-Forwarded": "1"},
        ) as reply:
            assert reply.status == 508
            assert (await reply.json())["error"]["code"] == "loop_detected"

        # The leader answers its own requests without forwarding.
        forwarded_before = len([s for s in seen[leader.name] if s[1] == "1"])
        async with session.post(leader.url + status_path, json={"last_change": -1}) as reply:
            assert reply.status == 200
            assert reply.headers["X-Clusterchecks-Leader"] == leader.name
        assert len([s for s in seen[leader.name] if s[1] == "1"]) == forwarded_before

        # A leader that does not answer: the follower says so, and when to retry.
        await servers[leader.name].close()
        async with session.post(follower.url + status_path, json={"last_change": -1}) as reply:
            assert reply.status == 503
            assert (await reply.json())["error"]["code"] == "no_leader"
            assert int(reply.headers["Retry-After"]) > 0


# ------------------------------------------------------------------ metrics


def samples(replica: Replica, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric family of the replica's /metrics, by label set."""
    registry = replica.service.metrics.registry
    found = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == family:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


async def test_a_replica_that_loses_leadership_resets_its_state_gauges_at_once(
    make_cluster: MakeCluster, fake_clock: FakeClock
) -> None:
    cluster = make_cluster(store=None)
    leader = await cluster.leader(among=[cluster.add("a")])
    dispatcher = leader.dispatcher
    await dispatcher.node_status(N1, last_change=-1)
    await dispatcher.replace_source(SOURCE, [check("one"), check("two")])
    digest, _ = await configs_of(dispatcher, N1)
    await dispatcher.record_results(
        N1,
        [CheckResult(digest=digest, run_id="r1", ok=False, errors=("boom",), started_at=5.0,
                     duration_s=0.25)],
    )  # fmt: skip

    assert samples(leader, "clusterchecks_leader") == {(): 1}
    assert samples(leader, "clusterchecks_epoch") == {(): dispatcher.epoch}
    assert samples(leader, "clusterchecks_nodes_reporting") == {(): 1}
    assert samples(leader, "clusterchecks_checks_dispatched") == {(("node", "n1"),): 2}
    assert samples(leader, "clusterchecks_checks") == {(): 2}
    labels = (("check", "http"), ("digest", digest), ("node", "n1"))
    assert samples(leader, "clusterchecks_check_ok") == {labels: 0}
    assert samples(leader, "clusterchecks_check_consecutive_failures") == {labels: 1}
    assert samples(leader, "clusterchecks_check_duration_seconds") == {labels: 0.25}
    assert samples(leader, "clusterchecks_check_last_run_timestamp_seconds") == {labels: 5.0}

    cluster.backend.down = True
    fake_clock.advance(FAKE_TIME.renew_deadline_s)  # the lease is lost at this deadline

    # Reset before the elector's callback even comes: the gauges follow ``is_leader``.
    assert samples(leader, "clusterchecks_leader") == {(): 0}
    for family in ("clusterchecks_nodes_reporting", "clusterchecks_checks"):
        assert samples(leader, family) == {(): 0}, family
    for family in ("clusterchecks_checks_dispatched", "clusterchecks_check_ok"):
        assert samples(leader, family) == {}, family
    await until(lambda: leader.handler.role is Role.FOLLOWER)
    assert samples(leader, "clusterchecks_leader") == {(): 0}
    assert samples(leader, "clusterchecks_check_ok") == {}
    # Counters are never reset: the decisions of the lost term stay counted.
    decisions = samples(leader, "clusterchecks_dispatch_decisions_total")
    assert sum(decisions.values()) >= 2, decisions
