"""Replica status: each dispatcher replica's health, role and URL, shared with the others.

Every replica writes its own record every few seconds with a time-to-live, so a replica
that dies drops out of the list by itself and one that stops gracefully removes its
record at once. Any replica can list them (the leader answers ``/replicas``).

- ``RedisReplicaDirectory``: one key per replica under ``<name>:replica:`` with a TTL and
  an index set; the report time is Redis's clock, and so is the age a reader computes,
  so replicas with skewed clocks still agree on how stale a record is.
- ``LocalReplicaDirectory``: no shared store (memory store without Redis election): the
  list holds this replica alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast, get_args

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from dispatcher import wire
from dispatcher.common.clock import Clock
from dispatcher.common.redisconn import redis_client
from dispatcher.errors import StoreError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    identity: str
    role: wire.ReplicaRole
    url: str
    status: wire.HealthStatus
    ready: bool
    epoch: int


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    status: ReplicaStatus
    reported_at: float
    """Unix seconds when the record was written."""
    age_s: float
    """Seconds since then, by the directory's clock."""


class ReplicaDirectory(Protocol):
    async def publish(self, status: ReplicaStatus, *, ttl_s: float) -> None:
        """Writes this replica's record; it lapses after ``ttl_s`` unless written again."""
        ...

    async def remove(self, identity: str) -> None:
        """Drops a record at once (a replica that stops gracefully)."""
        ...

    async def list(self) -> list[ReplicaRecord]:
        """Every live, readable record, sorted by identity (an unreadable one is logged
        and left out). Raises StoreError when the directory cannot be read."""
        ...

    async def close(self) -> None: ...


# KEYS: index, record key. ARGV: identity, JSON, ttl in ms.
_PUBLISH = """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], 'status', ARGV[2], 'at_ms', ms)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
return ms
"""

# KEYS: index. ARGV: record key prefix. Returns now_ms, then id, status, at_ms triples;
# ids whose record lapsed are dropped from the index on the way.
_LIST = """
local t = redis.call('TIME')
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local rec = redis.call('HMGET', ARGV[1] .. id, 'status', 'at_ms')
  if rec[1] then
    table.insert(out, id)
    table.insert(out, rec[1])
    table.insert(out, rec[2])
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
"""


class RedisReplicaDirectory:
    def __init__(self, client: aioredis.Redis, *, name: str = "clusterchecks-dispatcher") -> None:
        self._client = client
        self.index_key = f"{name}:replicas"
        self._record_prefix = f"{name}:replica:"
        self._publish = client.register_script(_PUBLISH)
        self._list = client.register_script(_LIST)

    @classmethod
    def from_url(cls, url: str, *, name: str, timeout_s: float) -> RedisReplicaDirectory:
        return cls(redis_client(url, timeout_s=timeout_s, max_connections=2), name=name)

    async def publish(self, status: ReplicaStatus, *, ttl_s: float) -> None:
        body = orjson.dumps(
            {
                "identity": status.identity,
                "role": status.role,
                "url": status.url,
                "status": status.status,
                "ready": status.ready,
                "epoch": status.epoch,
            }
        )
        try:
            await self._publish(
                keys=[self.index_key, self._record_prefix + status.identity],
                args=[status.identity, body, max(1, round(ttl_s * 1000))],
            )
        except RedisError as exc:
            raise StoreError(f"cannot publish the replica status: {exc}") from exc

    async def remove(self, identity: str) -> None:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._record_prefix + identity)
                pipe.srem(self.index_key, identity)
                await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"cannot remove the replica status: {exc}") from exc

    async def list(self) -> list[ReplicaRecord]:
        try:
            raw = await self._list(keys=[self.index_key], args=[self._record_prefix])
        except RedisError as exc:
            raise StoreError(f"cannot read the replica statuses: {exc}") from exc
        now_ms = int(raw[0])
        records = []
        for i in range(1, len(raw) - 2, 3):
            identity, body, at_ms = _decode(raw[i]), raw[i + 1], int(raw[i + 2])
            try:
                records.append(_record(identity, body, at_ms=at_ms, now_ms=now_ms))
            except StoreError as exc:
                # One unreadable record (another version's, during a rolling upgrade)
                # must not hide every replica: it lapses by itself.
                log.warning("replica_record_unreadable", identity=identity, error=str(exc))
        return sorted(records, key=lambda r: r.status.identity)

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(identity: str, body: bytes | str, *, at_ms: int, now_ms: int) -> ReplicaRecord:
    try:
        data = orjson.loads(body)
        role, health = data["role"], data["status"]
        if role not in get_args(wire.ReplicaRole) or health not in get_args(wire.HealthStatus):
            raise ValueError(f"unknown role {role!r} or status {health!r}")
        status = ReplicaStatus(
            identity=identity,
            role=cast(wire.ReplicaRole, role),
            url=str(data["url"]),
            status=cast(wire.HealthStatus, health),
            ready=bool(data["ready"]),
            epoch=int(data["epoch"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"replica record {identity!r} is corrupt: {exc}") from exc
    return ReplicaRecord(
        status=status, reported_at=at_ms / 1000, age_s=max(0.0, (now_ms - at_ms) / 1000)
    )


class LocalReplicaDirectory:
    """Without a shared store a replica knows only itself."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._record: tuple[ReplicaStatus, float, float] | None = None

    async def publish(self, status: ReplicaStatus, *, ttl_s: float) -> None:
        self._record = (status, self._clock.time(), ttl_s)

    async def remove(self, identity: str) -> None:
        if self._record is not None and self._record[0].identity == identity:
            self._record = None

    async def list(self) -> list[ReplicaRecord]:
        if self._record is None:
            return []
        status, at, ttl_s = self._record
        age = max(0.0, self._clock.time() - at)
        if age > ttl_s:
            return []
        return [ReplicaRecord(status=status, reported_at=at, age_s=age)]

    async def close(self) -> None:
        return None
