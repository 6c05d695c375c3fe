"""The Redis lease backend: one key holds the lease record with a TTL, another the
epoch counter. Every operation is one Lua script, so it is atomic in Redis:

- acquire: when the lease key is absent (or released), INCR the epoch (floored at
  Redis's clock in milliseconds, so a Redis that lost its data still gives a higher
  epoch) and SET the record with its TTL;
- renew (compare-and-extend): PEXPIRE only when the record's holder is the caller;
- give back: a leader renewing passes the epoch of its term; when Redis has lost the
  record (restarted empty, flushed), the record is re-created for it with that same
  epoch, and the counter raised to it, so its term goes on (nothing is dropped) and
  later terms still get higher epochs;
- release (compare-and-mark): the holder's record becomes a released record (no
  holder) for the rest of its TTL, which anyone may take at once. A key that is simply
  gone before its TTL ran out was lost, not released: a follower leaves it to its
  holder for a while (``HolderView``), so that the leader, not a follower with an
  empty store, carries on after Redis loses its data.

The pool is a BlockingConnectionPool (a plain pool raises at once past its size) and
every call has a socket timeout; the elector bounds each attempt again on top.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dispatcher.common.clock import Clock, SystemClock
from dispatcher.common.redisconn import redis_client
from dispatcher.election.base import HolderView, LeaseRecord
from dispatcher.errors import LeaseBackendError

# KEYS: the lease, the epoch counter. ARGV: identity, url, lease ms, held epoch (0: the
# caller leads no term), may take a missing lease ('1' or '0').
# Returns {the record as it stands (false: none), its remaining time-to-live in ms}.
_ACQUIRE_OR_RENEW = """
local current = redis.call('GET', KEYS[1])
local held = tonumber(ARGV[4])
if current then
  local record = cjson.decode(current)
  local holder = record['holder']
  if holder ~= '' and holder ~= ARGV[1] then
    return {current, redis.call('PTTL', KEYS[1])}
  end
  if holder == ARGV[1] and (held == 0 or tonumber(record['epoch']) >= held) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return {current, tonumber(ARGV[3])}
  end
  -- Released (no holder): free at once. Ours with an epoch below the term we lead:
  -- Redis went back in time (an old dump); given back below.
elseif held == 0 and ARGV[5] ~= '1' then
  -- Gone before its TTL ran out, as the caller read it: lost, not expired; its holder
  -- may still lead and give it back.
  return {false, 0}
end
local epoch
if held > 0 then
  -- The caller leads the term ``held`` and Redis lost its record: the same term goes
  -- on; later terms must still get higher epochs.
  epoch = held
  if tonumber(redis.call('GET', KEYS[2]) or '0') < held then
    redis.call('SET', KEYS[2], string.format('%d', held))
  end
else
  -- The epoch grows with every term and never falls below Redis's clock in
  -- milliseconds, so that a Redis that lost its data (restart without persistence)
  -- still hands out epochs higher than any that agents have seen; agents ignore lower
  -- ones.
  epoch = redis.call('INCR', KEYS[2])
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if epoch < floor then
    epoch = floor
    redis.call('SET', KEYS[2], string.format('%d', epoch))
  end
end
local record = cjson.encode({holder = ARGV[1], url = ARGV[2], epoch = string.format('%d', epoch)})
redis.call('SET', KEYS[1], record, 'PX', ARGV[3])
return {record, tonumber(ARGV[3])}
"""

# A released record keeps the rest of the TTL: followers that read the lease before
# leave a missing key alone until then (HolderView), but take a released one at once.
_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current then
  local record = cjson.decode(current)
  if record['holder'] == ARGV[1] then
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl <= 0 then
      return redis.call('DEL', KEYS[1])
    end
    local released = cjson.encode({holder = '', url = '', epoch = record['epoch']})
    redis.call('SET', KEYS[1], released, 'PX', ttl)
    return 1
  end
end
return 0
"""


class RedisLeaseBackend:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        name: str = "clusterchecks-dispatcher",
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._clock = clock or SystemClock()
        self.lease_key = f"{name}:lease"
        self.epoch_key = f"{name}:epoch"
        self._acquire = client.register_script(_ACQUIRE_OR_RENEW)
        self._release = client.register_script(_RELEASE)
        self._view = HolderView()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        name: str = "clusterchecks-dispatcher",
        timeout_s: float = 2.0,
        clock: Clock | None = None,
    ) -> RedisLeaseBackend:
        return cls(redis_client(url, timeout_s=timeout_s), name=name, clock=clock)

    async def acquire_or_renew(
        self, *, identity: str, url: str, lease_duration_s: float, held_epoch: int = 0
    ) -> LeaseRecord | None:
        started = self._clock.monotonic()
        may_take = held_epoch > 0 or self._view.may_take(started)
        try:
            raw = await self._acquire(
                keys=[self.lease_key, self.epoch_key],
                args=[
                    identity,
                    url,
                    max(1, int(lease_duration_s * 1000)),
                    max(0, held_epoch),
                    "1" if may_take else "0",
                ],
            )
        except RedisError as exc:
            raise LeaseBackendError(f"redis: {exc}") from exc
        found, ttl_ms = _answer(raw)
        if found is None and not may_take:
            return self._view.vanished(now=started, lease_duration_s=lease_duration_s)
        record = _record(found)
        self._view.read(record, identity=identity, now=started, ttl_s=ttl_ms / 1000)
        return record

    def free_in_s(self, *, identity: str) -> float | None:
        # One backend per replica: its view is the caller's.
        return self._view.free_in_s(self._clock.monotonic())

    async def release(self, *, identity: str) -> None:
        try:
            await self._release(keys=[self.lease_key], args=[identity])
        except RedisError as exc:
            raise LeaseBackendError(f"redis: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)


def _answer(raw: Any) -> tuple[bytes | str | None, int]:
    """The script's answer: the record (None: no key) and its remaining TTL in ms."""
    try:
        found, ttl_ms = raw
        return (found or None), int(ttl_ms)
    except (TypeError, ValueError) as exc:
        raise LeaseBackendError(
            f"redis: unexpected answer from the lease script: {raw!r:.200}"
        ) from exc


def _record(raw: bytes | str | None) -> LeaseRecord | None:
    """The lease record; None when there is none or it was released (no holder)."""
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
        holder = str(data["holder"])
        if not holder:
            return None
        return LeaseRecord(holder=holder, url=str(data["url"]), epoch=int(data["epoch"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LeaseBackendError(f"redis: the lease record is not readable: {raw!r:.200}") from exc
