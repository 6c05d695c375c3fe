"""The Kubernetes lease backend through kubernetes-asyncio and HTTP, against a stand-in
API server that checks what a real one checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from kubernetes_asyncio.client import (
    ApiClient,
    Configuration,
    CoordinationV1Api,
    V1Lease,
    V1LeaseSpec,
    V1ObjectMeta,
)
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException

from dispatcher.common.clock import Clock, FakeClock
from dispatcher.election.base import LeaderInfo, LeaseRecord
from dispatcher.election.elector import Elector
from dispatcher.election.kubernetes import (
    EPOCH_ANNOTATION,
    URL_ANNOTATION,
    KubernetesLeaseBackend,
    MicroTime,
)
from dispatcher.errors import ConfigurationError, LeaseBackendError
from dispatcher.settings import ElectionSettings
from tests.k8s_api import LEASES, FakeKubernetesApi
from tests.processes import free_port

NS = "clusterchecks"
NAME = "clusterchecks-dispatcher"
PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
SETTINGS = ElectionSettings(lease_duration_s=15, renew_deadline_s=10, retry_period_s=2)
CALL_TIMEOUT_S = 5.0
GUARD_S = 10.0
"""Only keeps a broken test from hanging on real HTTP to the stand-in; never a measure."""
START = FakeClock().time()
START_MS = 1_763_700_000_000
"""The epoch of a first term taken on a FakeClock that has not moved: its wall time in ms."""

MakeBackend = Callable[..., KubernetesLeaseBackend]


def micro_time(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stored(api: FakeKubernetesApi) -> dict[str, Any]:
    return api.store.get(LEASES, NS, NAME)


def ms(clock: Clock) -> int:
    """The wall clock in ms, as the backend floors a new term's epoch."""
    return int(clock.time() * 1000)


def stored_epoch(api: FakeKubernetesApi) -> int:
    """The epoch annotation of the stored Lease."""
    return int(stored(api)["metadata"]["annotations"][EPOCH_ANNOTATION])


def url(identity: str) -> str:
    return f"http://{identity}:5005"


async def take(
    backend: KubernetesLeaseBackend, identity: str, lease_s: float = 15
) -> LeaseRecord | None:
    return await backend.acquire_or_renew(
        identity=identity, url=url(identity), lease_duration_s=lease_s
    )


async def holder(backend: KubernetesLeaseBackend, identity: str) -> str:
    """Who holds the lease after ``identity`` tried to take or renew it."""
    record = await take(backend, identity)
    assert record is not None
    return record.holder


@pytest.fixture
async def make_backend(k8s_api: FakeKubernetesApi) -> AsyncIterator[MakeBackend]:
    """Each backend is a replica of its own, with its own client and connections."""
    made: list[KubernetesLeaseBackend] = []

    def make(clock: Clock, *, call_timeout_s: float = 1.0) -> KubernetesLeaseBackend:
        backend = KubernetesLeaseBackend(
            k8s_api.api_client(), namespace=NS, name=NAME, clock=clock,
            call_timeout_s=call_timeout_s,
        )  # fmt: skip
        made.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in made:
            await backend.close()


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    def on_started(self, epoch: int) -> None:
        self.events.append(f"started:{epoch}")
        self.started.set()

    def on_stopped(self) -> None:
        self.events.append("stopped")
        self.stopped.set()


def elector(
    backend: KubernetesLeaseBackend,
    identity: str,
    clock: Clock,
    settings: ElectionSettings = SETTINGS,
    recorder: Recorder | None = None,
) -> Elector:
    recorder = recorder or Recorder()
    return Elector(
        backend=backend, identity=identity, url=url(identity), settings=settings, clock=clock,
        on_started_leading=recorder.on_started, on_stopped_leading=recorder.on_stopped,
    )  # fmt: skip


# ------------------------------------------------------------------ acquisition


async def test_a_missing_lease_is_created_held_with_an_epoch_of_the_wall_clock_in_ms(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()
    assert ms(clock) == START_MS
    a = make_backend(clock)
    record = await take(a, "a", lease_s=1.5)
    assert record == LeaseRecord(holder="a", url="http://a:5005", epoch=START_MS)
    assert [(r.method, r.path, r.status) for r in k8s_api.requests] == [
        ("GET", f"{PATH}/{NAME}", 404),
        ("POST", PATH, 201),
    ]
    lease = stored(k8s_api)
    assert (lease["kind"], lease["apiVersion"]) == ("Lease", "coordination.k8s.io/v1")
    assert lease["metadata"]["annotations"] == {
        URL_ANNOTATION: "http://a:5005",
        EPOCH_ANNOTATION: str(START_MS),
    }
    spec = lease["spec"]
    assert spec["holderIdentity"] == "a"
    assert spec["leaseTransitions"] == 1
    duration = spec["leaseDurationSeconds"]
    assert type(duration) is int
    assert duration == 2, "1.5 s is rounded up: never promise less than asked"
    # The fake clock's wall time is a whole second: the fraction must still be written.
    assert spec["acquireTime"] == spec["renewTime"] == micro_time(START)
    assert spec["renewTime"] == "2025-11-21T04:40:00.000000Z"


async def test_renewal_keeps_the_term_and_moves_renew_time_with_an_optimistic_update(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()
    a = make_backend(clock)
    first = await take(a, "a")
    before = stored(k8s_api)
    clock.advance(2.5)
    again = await take(a, "a")
    assert again == first
    assert again is not None
    assert again.epoch == START_MS, "a renewal keeps the epoch though the wall clock moved"
    after = stored(k8s_api)
    assert after["spec"]["leaseTransitions"] == 1
    assert after["metadata"]["annotations"][EPOCH_ANNOTATION] == str(START_MS)
    assert after["spec"]["acquireTime"] == micro_time(START), "a renewal keeps acquireTime"
    assert after["spec"]["renewTime"] == micro_time(START + 2.5)
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    put = k8s_api.answered("PUT")[-1]
    assert put.status == 200
    assert put.body is not None
    assert put.body["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def test_a_lease_with_no_holder_is_taken_at_once_keeping_labels_and_annotations(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    k8s_api.store.create(LEASES, NS, {
        "kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
        "metadata": {"name": NAME, "labels": {"team": "sre"}, "annotations": {"note": "keep"}},
        "spec": {"leaseTransitions": 4},
    })  # fmt: skip
    record = await take(make_backend(FakeClock()), "a")
    # No epoch annotation: the previous epoch is leaseTransitions (4), and 4 + 1 is below
    # the wall clock in ms.
    assert record == LeaseRecord(holder="a", url="http://a:5005", epoch=START_MS)
    lease = stored(k8s_api)
    assert lease["spec"]["leaseTransitions"] == 5
    meta = lease["metadata"]
    assert meta["labels"] == {"team": "sre"}
    assert meta["annotations"] == {
        "note": "keep",
        URL_ANNOTATION: "http://a:5005",
        EPOCH_ANNOTATION: str(START_MS),
    }


# -------------------------------------------------------------------- exclusion


async def test_another_identity_is_refused_while_the_record_is_fresh_whatever_its_times(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    # a's wall clock is an hour behind: its renewTime looks an hour old to anyone who
    # would compare it with their own clock. Expiry must not be judged that way.
    skewed = FakeClock(wall=START - 3600)
    a, b = make_backend(skewed), make_backend(FakeClock())
    held = await take(a, "a")
    assert stored(k8s_api)["spec"]["renewTime"] == micro_time(START - 3600)
    writes = len(k8s_api.answered("PUT")) + len(k8s_api.answered("POST"))
    seen = await take(b, "b")
    assert seen == held, "b must report a's record, not take the lease"
    assert len(k8s_api.answered("PUT")) + len(k8s_api.answered("POST")) == writes
    assert stored(k8s_api)["spec"]["holderIdentity"] == "a"


async def test_takeover_after_the_holder_stops_renewing_as_observed_locally(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()
    a, b = make_backend(clock), make_backend(clock)
    await take(a, "a")
    assert a.free_in_s(identity="a") is None, "its own lease"
    assert await holder(b, "b") == "a"  # b first sees the record now
    assert b.free_in_s(identity="b") == 15, "free a lease duration after b saw it"
    clock.advance(10)
    await take(a, "a")  # a renews: the record changes
    clock.advance(10)
    assert await holder(b, "b") == "a", "20 s since b first saw a, but a renewed"
    assert b.free_in_s(identity="b") == 15, "15 s from now, when b first saw a's renewal"
    clock.advance(14.9)
    assert await holder(b, "b") == "a", "not yet 15 s since b saw the record change"
    assert b.free_in_s(identity="b") == pytest.approx(0.1), "15 s after b saw the renewal"
    stale = stored(k8s_api)
    clock.advance(0.2)
    record = await take(b, "b")
    assert record == LeaseRecord(holder="b", url="http://b:5005", epoch=ms(clock))
    assert record.epoch > START_MS
    assert b.free_in_s(identity="b") is None, "b holds it"
    lease = stored(k8s_api)
    assert lease["spec"]["leaseTransitions"] == 2
    assert lease["metadata"]["annotations"][EPOCH_ANNOTATION] == str(record.epoch)
    assert lease["spec"]["acquireTime"] == lease["spec"]["renewTime"] == micro_time(START + 35.1)
    assert lease["metadata"]["annotations"][URL_ANNOTATION] == "http://b:5005"
    put = k8s_api.answered("PUT")[-1]
    assert put.body is not None
    assert put.body["metadata"]["resourceVersion"] == stale["metadata"]["resourceVersion"]
    # a wakes up: it sees b's term and does not write.
    puts = len(k8s_api.answered("PUT"))
    assert await take(a, "a") == record
    assert len(k8s_api.answered("PUT")) == puts


async def test_an_own_lease_left_to_expire_is_taken_again_as_a_new_term(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()
    a = make_backend(clock)
    first = await take(a, "a")
    assert first is not None
    clock.advance(15)  # no renewal for a whole lease: others may have judged it expired
    record = await take(a, "a")
    assert record is not None
    assert record.epoch == ms(clock) == START_MS + 15_000
    assert record.epoch > first.epoch
    assert stored(k8s_api)["spec"]["leaseTransitions"] == 2


async def test_the_same_identity_in_a_fresh_instance_starts_a_higher_term_at_once(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()
    before_restart = make_backend(clock)
    first = await take(before_restart, "a")
    assert first == LeaseRecord(holder="a", url=url("a"), epoch=START_MS)
    after_restart = make_backend(clock)  # no clock advance: the record is fresh
    record = await take(after_restart, "a")
    assert record == LeaseRecord(holder="a", url="http://a:5005", epoch=first.epoch + 1)
    assert stored(k8s_api)["spec"]["leaseTransitions"] == 2


@pytest.mark.parametrize("lease_exists", [False, True], ids=["create", "replace"])
async def test_two_replicas_racing_on_one_resource_version_make_one_leader(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
    lease_exists: bool,
) -> None:
    clock = FakeClock()
    if lease_exists:  # a released lease: both may take it at once
        first = make_backend(clock)
        await take(first, "first")
        await first.release(identity="first")
    write = "PUT" if lease_exists else "POST"
    x, y = elector(make_backend(clock), "x", clock), elector(make_backend(clock), "y", clock)
    k8s_api.hang(methods={write})  # both read the same version before either writes
    count = len(k8s_api.requests)
    steps = [asyncio.create_task(e.step(), name=f"step-{e.identity}") for e in (x, y)]
    async with asyncio.timeout(5):
        await k8s_api.wait_hung(2)
    k8s_api.unhang()
    await asyncio.gather(*steps)  # no exception escapes either elector
    race = k8s_api.requests[count:]
    assert sorted(r.status or 0 for r in race if r.method == write) == [
        200 if lease_exists else 201,
        409,
    ]
    assert [r.method for r in race].count("GET") == 3, "two reads, and the loser's re-read"
    winner = stored(k8s_api)["spec"]["holderIdentity"]
    leaders = [e for e in (x, y) if e.is_leader()]
    assert [e.identity for e in leaders] == [winner], "exactly one leader: the one stored"
    # With a released lease, the epoch before is the first holder's: the clock has not
    # moved since, so the winner's is that + 1.
    epoch = START_MS + 1 if lease_exists else START_MS
    assert stored(k8s_api)["spec"]["leaseTransitions"] == (2 if lease_exists else 1)
    assert stored_epoch(k8s_api) == epoch
    expected = LeaderInfo(winner, url(winner), epoch)
    assert x.leader() == y.leader() == expected, "the loser reports the winner"


async def test_of_two_instances_of_one_identity_racing_the_loser_does_not_lead(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()
    one, two = make_backend(clock), make_backend(clock)
    k8s_api.hang(methods={"POST"})
    attempts = [
        asyncio.create_task(take(b, "a"), name=f"take-{i}") for i, b in enumerate((one, two))
    ]
    async with asyncio.timeout(5):
        await k8s_api.wait_hung(2)
    k8s_api.unhang()
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    won = [o for o in outcomes if isinstance(o, LeaseRecord)]
    lost = [o for o in outcomes if isinstance(o, LeaseBackendError)]
    assert won == [LeaseRecord(holder="a", url=url("a"), epoch=START_MS)]
    assert len(lost) == 1
    assert "another process with identity 'a'" in str(lost[0])


# ----------------------------------------------------------------------- epochs


async def test_the_epoch_is_stored_in_an_annotation_that_renewals_keep(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()
    a = make_backend(clock)
    first = await take(a, "a")
    assert first is not None
    assert stored_epoch(k8s_api) == first.epoch == START_MS
    for _ in range(3):
        clock.advance(2)
        renewed = await take(a, "a")
        assert renewed == first
        lease = stored(k8s_api)
        assert lease["spec"]["renewTime"] == micro_time(clock.time()), "it was renewed"
        assert lease["spec"]["leaseTransitions"] == 1
        assert stored_epoch(k8s_api) == first.epoch
    assert ms(clock) > first.epoch, "renewals keep the epoch, not the clock"


async def test_a_deleted_and_recreated_lease_gives_a_higher_epoch_though_transitions_restart(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()
    a, b = make_backend(clock), make_backend(clock)
    await take(a, "a")
    assert await holder(b, "b") == "a"
    clock.advance(15)
    before = await take(b, "b")  # a stopped renewing: b's term is the second
    assert before is not None
    assert before.holder == "b"
    assert stored(k8s_api)["spec"]["leaseTransitions"] == 2
    k8s_api.store.delete(LEASES, NS, NAME)  # say, kubectl delete lease
    clock.advance(2)
    after = await take(b, "b")  # b's next renewal finds no Lease and creates it
    assert after is not None
    assert after.holder == "b"
    lease = stored(k8s_api)
    assert lease["spec"]["leaseTransitions"] == 1, "a new object counts from 1 again"
    assert after.epoch > before.epoch, "agents would ignore a lower epoch"
    assert after.epoch == ms(clock)
    assert stored_epoch(k8s_api) == after.epoch


@pytest.mark.parametrize(
    "annotations",
    [{}, {EPOCH_ANNOTATION: "not-a-number"}],
    ids=["no-epoch-annotation", "epoch-annotation-not-an-int"],
)
async def test_a_lease_held_by_another_writer_without_our_epoch_is_taken_above_its_transitions(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
    annotations: dict[str, str],
) -> None:
    clock = FakeClock()
    k8s_api.store.create(LEASES, NS, {
        "kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
        "metadata": {"name": NAME, "annotations": {URL_ANNOTATION: url("old"), **annotations}},
        "spec": {
            "holderIdentity": "old", "leaseDurationSeconds": 15, "leaseTransitions": 5,
            "acquireTime": micro_time(START - 60), "renewTime": micro_time(START - 1),
        },
    })  # fmt: skip
    b = make_backend(clock)
    # Until it expires, the holder's epoch is read as its leaseTransitions.
    assert await take(b, "b") == LeaseRecord(holder="old", url=url("old"), epoch=5)
    clock.advance(15)
    record = await take(b, "b")
    assert record is not None
    assert record.holder == "b"
    assert record.epoch >= 6
    assert record.epoch == max(5 + 1, ms(clock)) == ms(clock), "floored at the clock"
    lease = stored(k8s_api)
    assert lease["spec"]["leaseTransitions"] == 6
    assert stored_epoch(k8s_api) == record.epoch


async def test_epochs_grow_strictly_across_terms_while_the_wall_clock_stands_still(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()  # never advanced: every term is taken in the same millisecond
    a, b = make_backend(clock), make_backend(clock)
    epochs: list[int] = []
    transitions: list[int] = []

    async def term(backend: KubernetesLeaseBackend, identity: str) -> None:
        record = await take(backend, identity)
        assert record is not None
        assert record.holder == identity
        assert stored_epoch(k8s_api) == record.epoch
        epochs.append(record.epoch)
        transitions.append(stored(k8s_api)["spec"]["leaseTransitions"])

    await term(a, "a")
    await a.release(identity="a")
    await term(b, "b")
    await b.release(identity="b")
    await term(a, "a")
    await term(make_backend(clock), "a")  # a restarted: a new term for the same identity
    assert ms(clock) == START_MS
    assert epochs == [START_MS, START_MS + 1, START_MS + 2, START_MS + 3]
    assert transitions == [1, 2, 3, 4]


async def test_a_replica_whose_clock_is_behind_still_goes_above_the_previous_epoch(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    ahead = FakeClock(wall=START + 3600)
    a, b = make_backend(ahead), make_backend(FakeClock())
    first = await take(a, "a")
    assert first is not None
    assert first.epoch == START_MS + 3_600_000
    await a.release(identity="a")
    record = await take(b, "b")
    assert record is not None
    assert record.epoch == first.epoch + 1, "previous + 1, not b's clock"


# ---------------------------------------------------------------------- release


async def test_release_empties_the_holder_so_a_successor_takes_over_at_once(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()
    a, b = make_backend(clock), make_backend(clock)
    await take(a, "a")
    assert await holder(b, "b") == "a"
    await a.release(identity="a")
    lease = stored(k8s_api)
    assert lease["spec"]["holderIdentity"] == ""
    assert lease["spec"]["leaseTransitions"] == 1, "release is not a transition"
    assert URL_ANNOTATION not in lease["metadata"]["annotations"]
    assert lease["metadata"]["annotations"][EPOCH_ANNOTATION] == str(START_MS), (
        "release keeps the epoch, so the successor's is higher"
    )
    record = await take(b, "b")  # no clock advance
    assert record == LeaseRecord(holder="b", url="http://b:5005", epoch=START_MS + 1)
    assert stored(k8s_api)["spec"]["leaseTransitions"] == 2
    # a no longer holds anything: its release sends nothing at all.
    count = len(k8s_api.requests)
    await a.release(identity="a")
    assert len(k8s_api.requests) == count


async def test_release_leaves_alone_a_lease_that_another_replica_took(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()
    a, b = make_backend(clock), make_backend(clock)
    await take(a, "a")
    await take(b, "b")
    clock.advance(15)
    await take(b, "b")  # a stopped renewing; b takes over
    await a.release(identity="a")
    assert stored(k8s_api)["spec"]["holderIdentity"] == "b"
    assert k8s_api.requests[-1].method == "GET", "a read, saw b, and wrote nothing"


async def test_an_elector_releases_on_shutdown(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()
    recorder = Recorder()
    a = elector(make_backend(clock), "a", clock, SETTINGS, recorder)
    stop = asyncio.Event()
    running = asyncio.create_task(a.run(stop), name="elector-a")
    async with asyncio.timeout(GUARD_S):  # real HTTP to the stand-in: no fake time needed
        await recorder.started.wait()
    stop.set()
    await running
    assert stored(k8s_api)["spec"]["holderIdentity"] == ""
    epoch = stored_epoch(k8s_api)  # kept by the release
    assert epoch == START_MS, "a first term's epoch is the wall clock in ms"
    assert recorder.events == [f"started:{epoch}", "stopped"]


# ----------------------------------------------------------------------- errors


@pytest.mark.parametrize("code", [500, 503])
async def test_an_error_status_is_a_lease_backend_error(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
    code: int,
) -> None:
    a = make_backend(FakeClock())
    await take(a, "a")
    k8s_api.fail_with = code
    with pytest.raises(LeaseBackendError, match=f"{code} injected failure {code}") as caught:
        await take(a, "a")
    assert isinstance(caught.value.__cause__, ApiException)
    assert caught.value.__cause__.status == code
    with pytest.raises(LeaseBackendError, match=f"read lease {NS}/{NAME}: {code}"):
        await a.release(identity="a")


async def test_an_unreachable_api_server_is_a_lease_backend_error() -> None:
    client = ApiClient(Configuration(host=f"http://127.0.0.1:{free_port()}"))
    backend = KubernetesLeaseBackend(client, namespace=NS, clock=FakeClock(), call_timeout_s=2)
    try:
        with pytest.raises(LeaseBackendError, match="ClientConnectorError") as caught:
            await take(backend, "a")
        assert isinstance(caught.value.__cause__, aiohttp.ClientConnectionError)
    finally:
        await backend.close()


async def test_a_hung_api_server_is_a_lease_backend_error_within_the_call_timeout(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    clock = FakeClock()
    # The call timeout is on the clock; the HTTP client's own bound (the same number of
    # real seconds) is far longer than this test takes, so the clock's fires first.
    a = make_backend(clock, call_timeout_s=CALL_TIMEOUT_S)
    k8s_api.hang()
    attempt = asyncio.create_task(take(a, "a"))
    async with asyncio.timeout(GUARD_S):
        await k8s_api.wait_hung(1)
    await clock.run_for(CALL_TIMEOUT_S - 0.01)
    assert not attempt.done(), "the call ended before its timeout"
    await clock.run_for(0.01)
    assert attempt.done(), "a hung API server held the call past its timeout"
    with pytest.raises(LeaseBackendError, match=r"read lease .*: no answer within 5 s"):
        attempt.result()
    assert k8s_api.hung == 1


async def test_a_failing_credentials_refresh_is_a_lease_backend_error(
    k8s_api: FakeKubernetesApi,
) -> None:
    def unreadable_token(configuration: Configuration) -> None:
        raise ConfigException("Token file exists but empty.")

    configuration = Configuration(host=k8s_api.url, api_key={"BearerToken": "old"})
    configuration.refresh_api_key_hook = unreadable_token  # as in a pod: reread per call
    backend = KubernetesLeaseBackend(
        ApiClient(configuration), namespace=NS, clock=FakeClock(), call_timeout_s=1
    )
    try:
        with pytest.raises(LeaseBackendError, match="credentials: Token file exists but empty"):
            await take(backend, "a")
    finally:
        await backend.close()
    assert k8s_api.requests == [], "nothing was sent without credentials"


async def test_a_leader_steps_down_by_its_renew_deadline_when_the_api_server_hangs(
    k8s_api: FakeKubernetesApi,
    make_backend: MakeBackend,
) -> None:
    """On fake time: the elector's attempts, their timeouts and its deadline all run on
    the clock, while the requests themselves are real HTTP to the stand-in server."""
    clock = FakeClock()
    recorder = Recorder()
    a = elector(make_backend(clock, call_timeout_s=CALL_TIMEOUT_S), "a", clock, SETTINGS, recorder)
    stop = asyncio.Event()
    running = asyncio.create_task(a.run(stop), name="elector-a")
    try:
        async with asyncio.timeout(GUARD_S):
            await recorder.started.wait()
        first_epoch = a.epoch
        recorder.started.clear()
        await clock.wait_for_timers(1)  # renewed at once, it sleeps a retry period
        renewed_at = clock.monotonic()  # the start of its last successful renewal
        k8s_api.hang()
        # Every attempt from now on hangs, and each ends at the elector's own timeout.
        await clock.run_for(SETTINGS.renew_deadline_s - 0.01)
        assert recorder.events == [f"started:{first_epoch}"], "stepped down before the deadline"
        assert a.is_leader()
        await clock.run_for(0.01)
        # It stops exactly at the deadline (it wakes for it), not at the end of an attempt.
        assert clock.monotonic() == renewed_at + SETTINGS.renew_deadline_s
        assert recorder.events == [f"started:{first_epoch}", "stopped"]
        assert not a.is_leader()
        # The process keeps running and campaigning: it tries again at once, and that
        # attempt (its timeout is on the clock, which stands still) is answered once the
        # server answers again.
        assert not running.done()
        assert not a.is_leader()
        k8s_api.unhang()
        async with asyncio.timeout(GUARD_S):
            await recorder.started.wait()
        assert a.is_leader()
        assert a.epoch >= first_epoch
        assert recorder.events[:2] == [f"started:{first_epoch}", "stopped"]
        assert recorder.events[2:] == [f"started:{a.epoch}"]
    finally:
        stop.set()
        await running
    assert stored(k8s_api)["spec"]["holderIdentity"] == "", "released on shutdown"


# ---------------------------------------------------------------- configuration


async def test_connect_reads_a_kubeconfig(
    k8s_api: FakeKubernetesApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters: [{{name: test, cluster: {{server: '{k8s_api.url}'}}}}]\n"
        "users: [{name: test, user: {token: secret}}]\n"
        "contexts: [{name: test, context: {cluster: test, user: test}}]\n"
    )
    backend = await KubernetesLeaseBackend.connect(
        namespace=NS, kubeconfig=str(kubeconfig), clock=FakeClock()
    )
    try:
        record = await take(backend, "a")
        assert record == LeaseRecord(holder="a", url="http://a:5005", epoch=START_MS)
    finally:
        await backend.close()


async def test_connect_without_a_usable_kubeconfig_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigurationError, match="No usable Kubernetes client configuration"):
        await KubernetesLeaseBackend.connect(namespace=NS, kubeconfig=str(tmp_path / "none"))


# --------------------------------------------- the stand-in refuses what the API refuses


def lease_body(**spec: Any) -> V1Lease:
    return V1Lease(
        api_version="coordination.k8s.io/v1", kind="Lease",
        metadata=V1ObjectMeta(name=NAME), spec=V1LeaseSpec(**spec),
    )  # fmt: skip


async def api_error(call: Awaitable[object]) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiException) as caught:
        await call
    return caught.value.status, orjson.loads(caught.value.body or b"")


async def test_the_stand_in_answers_a_missing_lease_with_a_not_found_status(
    k8s_client: ApiClient,
) -> None:
    api = CoordinationV1Api(k8s_client)
    status, body = await api_error(api.read_namespaced_lease(NAME, NS))
    assert status == 404
    assert body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'leases.coordination.k8s.io "{NAME}" not found', "reason": "NotFound",
        "details": {"name": NAME, "group": "coordination.k8s.io", "kind": "leases"},
        "code": 404,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"lease_duration_seconds": 1.5}, "cannot unmarshal 1.5"),
        ({"renew_time": datetime.fromtimestamp(START, UTC)}, "not an RFC 3339 MicroTime"),
        ({"acquire_time": datetime.fromtimestamp(START + 0.5)}, "not an RFC 3339 MicroTime"),
    ],
    ids=["float-duration", "time-without-fraction", "time-without-zone"],
)
async def test_the_stand_in_refuses_what_the_api_server_cannot_decode(
    k8s_client: ApiClient,
    spec: dict[str, Any],
    problem: str,
) -> None:
    api = CoordinationV1Api(k8s_client)
    status, body = await api_error(api.create_namespaced_lease(NS, lease_body(**spec)))
    assert (status, body["reason"]) == (400, "BadRequest")
    assert problem in body["message"]


async def test_microtime_is_what_the_stand_in_accepts(
    k8s_api: FakeKubernetesApi,
    k8s_client: ApiClient,
) -> None:
    api = CoordinationV1Api(k8s_client)
    at = MicroTime.of(datetime.fromtimestamp(START, UTC) - timedelta(hours=1))
    await api.create_namespaced_lease(NS, lease_body(renew_time=at))
    assert stored(k8s_api)["spec"]["renewTime"] == "2025-11-21T03:40:00.000000Z"


async def test_the_stand_in_refuses_stale_and_duplicate_writes(
    k8s_client: ApiClient,
) -> None:
    api = CoordinationV1Api(k8s_client)
    created = await api.create_namespaced_lease(NS, lease_body(holder_identity="a"))
    status, body = await api_error(api.create_namespaced_lease(NS, lease_body()))
    assert (status, body["reason"]) == (409, "AlreadyExists")
    replaced = await api.replace_namespaced_lease(NAME, NS, created)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    assert replaced.metadata.uid == created.metadata.uid
    status, body = await api_error(api.replace_namespaced_lease(NAME, NS, created))
    assert (status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]
    await api.delete_namespaced_lease(NAME, NS)
    status, _ = await api_error(api.read_namespaced_lease(NAME, NS))
    assert status == 404
