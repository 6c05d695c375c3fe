"""The Redis lease backend: one key holds the lease record with a TTL, another the
epoch counter. Every operation is one Lua script, so it is atomic in Redis:

- acquire: when the lease key is absent, INCR the epoch (floored at Redis's clock in
  milliseconds, so a Redis that lost its data still gives a higher epoch) and SET NX PX
  the record;
- renew (compare-and-extend): PEXPIRE only when the record's holder is the caller;
- release (compare-and-delete): DEL only when the record's holder is the caller.

The pool is a BlockingConnectionPool (a plain pool raises at once past its size) and
every call has a socket timeout; the elector bounds each attempt again on top.
"""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dispatcher.common.redisconn import redis_client
from dispatcher.election.base import LeaseRecord
from dispatcher.errors import LeaseBackendError

_ACQUIRE_OR_RENEW = """
local current = redis.call('GET', KEYS[1])
if current then
  local record = cjson.decode(current)
  if record['holder'] == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return current
end
-- The epoch grows with every term and never falls below Redis's clock in milliseconds,
-- so that a Redis that lost its data (restart without persistence) still hands out
-- epochs higher than any that agents have seen; agents ignore lower ones.
local epoch = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if epoch < floor then
  epoch = floor
  redis.call('SET', KEYS[2], string.format('%d', epoch))
end
local record = cjson.encode({holder = ARGV[1], url = ARGV[2], epoch = string.format('%d', epoch)})
redis.call('SET', KEYS[1], record, 'NX', 'PX', ARGV[3])
return record
"""

_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['holder'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLeaseBackend:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        name: str = "clusterchecks-dispatcher",
    ) -> None:
        self._client = client
        self.lease_key = f"{name}:lease"
        self.epoch_key = f"{name}:epoch"
        self._acquire = client.register_script(_ACQUIRE_OR_RENEW)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(
        cls, url: str, *, name: str = "clusterchecks-dispatcher", timeout_s: float = 2.0
    ) -> RedisLeaseBackend:
        return cls(redis_client(url, timeout_s=timeout_s), name=name)

    async def acquire_or_renew(
        self, *, identity: str, url: str, lease_duration_s: float
    ) -> LeaseRecord | None:
        try:
            raw = await self._acquire(
                keys=[self.lease_key, self.epoch_key],
                args=[identity, url, max(1, int(lease_duration_s * 1000))],
            )
        except RedisError as exc:
            raise LeaseBackendError(f"redis: {exc}") from exc
        return _record(raw)

    async def release(self, *, identity: str) -> None:
        try:
            await self._release(keys=[self.lease_key], args=[identity])
        except RedisError as exc:
            raise LeaseBackendError(f"redis: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)


def _record(raw: bytes | str | None) -> LeaseRecord | None:
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
        return LeaseRecord(
            holder=str(data["holder"]), url=str(data["url"]), epoch=int(data["epoch"])
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LeaseBackendError(f"redis: the lease record is not readable: {raw!r:.200}") from exc
