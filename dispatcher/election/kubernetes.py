"""The Kubernetes lease backend: a ``coordination.k8s.io/v1`` Lease with client-go's rules.

kubernetes-asyncio's own LeaderElection is not used: it has no per-call timeout, does not
release on cancel, writes local time marked as UTC and fails on float durations.

- Another holder's lease expires only once its record has stayed unchanged for
  ``leaseDurationSeconds`` of this process's own (monotonic) observation; the times the
  holder wrote are never compared with our clock.
- Every write is a replace carrying the resourceVersion that was read: of two replicas
  racing, one wins and the other gets 409 and reports the winner.
- A term is ``leaseTransitions``, raised on every acquisition that is not a renewal by
  this very instance, so a restarted process with the same identity starts a new term.
  Identities must therefore be unique among live replicas (the pod name).
- The epoch agents see is kept in an annotation: the previous epoch + 1, floored at the
  wall clock in milliseconds, so that a deleted and recreated Lease (or a move from the
  standalone election, whose epoch is its start time in ms) never gives an epoch lower
  than one agents have seen; they would ignore that leader.
- The held epoch a leader passes when renewing is not needed here: the API server keeps
  its objects (etcd does not forget them the way a Redis without persistence does), and
  a Lease deleted by hand is created again as a new term, with a new epoch (the elector
  then starts a new term: a shared store is loaded again, a memory store warms up).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TypeVar, cast

import aiohttp
import orjson
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import (
    ApiClient,
    CoordinationV1Api,
    V1Lease,
    V1LeaseSpec,
    V1ObjectMeta,
)
from kubernetes_asyncio.client.exceptions import ApiException

from dispatcher.common.clock import Clock, SystemClock
from dispatcher.common.kubeclient import kube_client
from dispatcher.election.base import LeaseRecord
from dispatcher.errors import LeaseBackendError

URL_ANNOTATION = "clusterchecks.io/leader-url"
"""Holds the leader's advertise URL, which followers forward to."""
EPOCH_ANNOTATION = "clusterchecks.io/epoch"
"""Holds the term's epoch (see the module docstring)."""
DEFAULT_LEASE_NAME = "clusterchecks-dispatcher"
API_VERSION = "coordination.k8s.io/v1"

_T = TypeVar("_T")


class _NotFound(LeaseBackendError):
    """404: the Lease does not exist (yet)."""


class _Conflict(LeaseBackendError):
    """409: another writer changed or created the Lease since we read it."""


class MicroTime(datetime):
    """A UTC datetime serialised as Kubernetes' MicroTime.

    kubernetes-asyncio writes datetimes with ``isoformat()``, which drops a zero
    fraction; the API server parses MicroTime with exactly six digits and refuses that.
    """

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return self.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    @classmethod
    def of(cls, value: datetime) -> MicroTime:
        if value.tzinfo is None:  # the API server sends UTC; a naive value can only be UTC
            value = value.replace(tzinfo=UTC)
        v = value.astimezone(UTC)
        return cls(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, UTC)


class KubernetesLeaseBackend:
    """A LeaseBackend over one Lease object; it owns ``api_client`` and closes it."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        name: str = DEFAULT_LEASE_NAME,
        clock: Clock,
        call_timeout_s: float = 1.0,
    ) -> None:
        if call_timeout_s <= 0:
            raise ValueError("call_timeout_s must be positive")
        self._client = api_client
        self._api = CoordinationV1Api(api_client)
        self._namespace = namespace
        self._name = name
        self._clock = clock
        self._call_timeout_s = call_timeout_s
        # Our term: leaseTransitions of the record we hold (or last wrote, answer unknown),
        # and when (monotonic) we last wrote it.
        self._term: int | None = None
        self._written_at = float("-inf")
        # The record as last seen, and when (monotonic) it was first seen as such.
        self._observed: tuple[object, ...] | None = None
        self._observed_at = float("-inf")
        # When (monotonic) the lease last found held by another expires by our reading.
        self._free_at: float | None = None

    @classmethod
    async def connect(
        cls,
        *,
        namespace: str,
        name: str = DEFAULT_LEASE_NAME,
        kubeconfig: str | None = None,
        context: str | None = None,
        clock: Clock | None = None,
        call_timeout_s: float = 1.0,
    ) -> KubernetesLeaseBackend:
        """In a pod and without ``kubeconfig``: the service account's credentials;
        otherwise the kubeconfig file (default ``~/.kube/config``) and its context."""
        return cls(
            await kube_client(kubeconfig=kubeconfig, context=context),
            namespace=namespace,
            name=name,
            clock=clock or SystemClock(),
            call_timeout_s=call_timeout_s,
        )

    async def close(self) -> None:
        await self._client.close()

    # ------------------------------------------------------------------ protocol

    async def acquire_or_renew(
        self, *, identity: str, url: str, lease_duration_s: float, held_epoch: int = 0
    ) -> LeaseRecord | None:
        del held_epoch  # see the module docstring: a Lease is not lost
        duration_s = max(1, math.ceil(lease_duration_s))  # the API takes whole seconds
        started = self._clock.monotonic()
        try:
            lease = await self._read()
        except _NotFound:
            self._free_at = None
            lease = V1Lease(
                api_version=API_VERSION,
                kind="Lease",
                metadata=V1ObjectMeta(name=self._name, namespace=self._namespace),
                spec=V1LeaseSpec(lease_transitions=0),
            )
            return await self._take(lease, identity, url, duration_s, started, create=True)
        self._observe(lease)
        self._free_at = None
        spec = _spec(lease)
        holder = spec.holder_identity or ""
        renewing = (
            holder == identity
            and spec.lease_transitions == self._term
            and started - self._written_at < duration_s
        )
        if not renewing and holder and holder != identity and not self._expired(spec, duration_s):
            self._term = None
            self._free_at = self._observed_at + _held_s(spec, duration_s)
            return _record(lease)
        return await self._take(lease, identity, url, duration_s, started, renewing=renewing)

    def free_in_s(self, *, identity: str) -> float | None:
        # One backend per replica: what it last read is the caller's.
        if self._free_at is None:
            return None
        return max(0.0, self._free_at - self._clock.monotonic())

    async def release(self, *, identity: str) -> None:
        term, self._term = self._term, None
        if term is None:
            return  # this instance holds no term
        try:
            lease = await self._read()
        except _NotFound:
            return
        spec = _spec(lease)
        if spec.holder_identity != identity or spec.lease_transitions != term:
            return
        # As client-go: an empty holder, transitions kept, so a successor takes it at once.
        now = self._now()
        spec.holder_identity = ""
        spec.lease_duration_seconds = 1
        spec.acquire_time = now
        spec.renew_time = now
        metadata = _metadata(lease)
        annotations = dict(metadata.annotations or {})
        annotations.pop(URL_ANNOTATION, None)
        metadata.annotations = annotations
        try:
            written = await self._call("release", self._replace(lease))
        except _Conflict:
            return  # changed since our read: no longer ours to release
        self._observe(written)

    # ------------------------------------------------------------------ internals

    async def _take(
        self,
        lease: V1Lease,
        identity: str,
        url: str,
        duration_s: int,
        started: float,
        *,
        renewing: bool = False,
        create: bool = False,
    ) -> LeaseRecord | None:
        """Writes ``lease`` held by ``identity``: renewed, or as a new term."""
        now = self._now()
        spec = _spec(lease)
        transitions = spec.lease_transitions or 0
        metadata = _metadata(lease)
        epoch = _epoch(lease)
        if renewing:
            spec.acquire_time = MicroTime.of(spec.acquire_time) if spec.acquire_time else now
        else:
            transitions += 1
            epoch = max(epoch + 1, int(self._clock.time() * 1000))
            spec.acquire_time = now
        spec.holder_identity = identity
        spec.lease_duration_seconds = duration_s
        spec.lease_transitions = transitions
        spec.renew_time = now
        metadata.annotations = {
            **(metadata.annotations or {}),
            URL_ANNOTATION: url,
            EPOCH_ANNOTATION: str(epoch),
        }
        # Claimed before the answer: if the write lands but its answer is lost, the next
        # read still recognises the record as ours.
        self._term, self._written_at = transitions, started
        try:
            if create:
                written = await self._call(
                    "create",
                    self._api.create_namespaced_lease(
                        self._namespace, lease, _request_timeout=self._call_timeout_s
                    ),
                )
            else:
                written = await self._call("update", self._replace(lease))
        except _Conflict:
            self._term = None
            return await self._winner(identity)
        self._observe(written)
        return LeaseRecord(holder=identity, url=url, epoch=epoch)

    async def _winner(self, identity: str) -> LeaseRecord | None:
        """After losing a race: the record as the winner left it."""
        try:
            lease = await self._read()
        except _NotFound:
            return None
        self._observe(lease)
        record = _record(lease)
        if record is not None and record.holder == identity:
            # Another process with our identity won: its term, not ours to act on.
            raise LeaseBackendError(
                f"kubernetes: lease {self._where} was taken by another process with "
                f"identity {identity!r}; identities must be unique"
            )
        return record

    def _observe(self, lease: V1Lease) -> None:
        spec = _spec(lease)
        seen = (
            _metadata(lease).resource_version,
            spec.holder_identity,
            spec.renew_time,
            spec.lease_transitions,
        )
        if seen != self._observed:
            self._observed = seen
            self._observed_at = self._clock.monotonic()

    def _expired(self, spec: V1LeaseSpec, default_s: int) -> bool:
        return self._clock.monotonic() >= self._observed_at + _held_s(spec, default_s)

    def _now(self) -> MicroTime:
        return MicroTime.fromtimestamp(self._clock.time(), UTC)

    async def _read(self) -> V1Lease:
        return await self._call(
            "read",
            self._api.read_namespaced_lease(
                self._name, self._namespace, _request_timeout=self._call_timeout_s
            ),
        )

    def _replace(self, lease: V1Lease) -> Awaitable[V1Lease]:
        return self._api.replace_namespaced_lease(
            self._name, self._namespace, lease, _request_timeout=self._call_timeout_s
        )

    async def _call(self, what: str, call: Awaitable[_T]) -> _T:
        """Awaits one API call within the call timeout; every failure is a LeaseBackendError."""
        try:
            # On the injected clock (tests move it on); ``_request_timeout`` is the HTTP
            # client's own bound on the socket, in real time, as a second line.
            async with self._clock.timeout(self._call_timeout_s):
                return await call
        except ApiException as exc:
            error = {404: _NotFound, 409: _Conflict}.get(exc.status, LeaseBackendError)
            raise error(
                f"kubernetes: {what} lease {self._where}: {exc.status} {_message(exc)}"
            ) from exc
        except TimeoutError as exc:
            raise LeaseBackendError(
                f"kubernetes: {what} lease {self._where}: "
                f"no answer within {self._call_timeout_s:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise LeaseBackendError(
                f"kubernetes: {what} lease {self._where}: {type(exc).__name__}: {exc}"
            ) from exc
        except (kube_config.ConfigException, OSError) as exc:
            # In a pod the client rereads its rotating service-account token on each call.
            raise LeaseBackendError(
                f"kubernetes: {what} lease {self._where}: credentials: {exc}"
            ) from exc

    @property
    def _where(self) -> str:
        return f"{self._namespace}/{self._name}"


def _held_s(spec: V1LeaseSpec, default_s: int) -> int:
    """The holder's lease duration as it wrote it (ours when it wrote none usable)."""
    held_s = spec.lease_duration_seconds
    if not isinstance(held_s, int) or held_s <= 0:
        return default_s
    return held_s


def _spec(lease: V1Lease) -> V1LeaseSpec:
    # The stubs declare every field present; the API leaves unset ones out (None).
    spec = cast("V1LeaseSpec | None", lease.spec)
    if spec is None:
        spec = lease.spec = V1LeaseSpec()
    return spec


def _metadata(lease: V1Lease) -> V1ObjectMeta:
    metadata = cast("V1ObjectMeta | None", lease.metadata)
    if metadata is None:
        metadata = lease.metadata = V1ObjectMeta()
    return metadata


def _record(lease: V1Lease) -> LeaseRecord | None:
    spec = _spec(lease)
    if not spec.holder_identity:
        return None  # released, or never held
    annotations = _metadata(lease).annotations or {}
    return LeaseRecord(
        holder=spec.holder_identity,
        url=annotations.get(URL_ANNOTATION, ""),
        epoch=_epoch(lease),
    )


def _epoch(lease: V1Lease) -> int:
    """The epoch of the term the Lease records (0 when none was written)."""
    raw = (_metadata(lease).annotations or {}).get(EPOCH_ANNOTATION, "")
    try:
        return max(0, int(raw))
    except ValueError:
        return _spec(lease).lease_transitions or 0


def _message(exc: ApiException) -> str:
    """The message of the API server's Status body, else the HTTP reason."""
    try:
        status = orjson.loads(exc.body or b"")
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            return str(status["message"])
    except orjson.JSONDecodeError:
        pass
    return exc.reason or "no reason given"
