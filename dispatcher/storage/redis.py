"""The shared Redis store: the leader's persisted state in four hashes, fenced by epoch.

Layout under ``<name>:store``: ``:epoch`` (the claimant's epoch, the fencing token),
``:configs`` (digest -> config JSON), ``:sources`` (source -> JSON list of digests),
``:placement`` (digest -> node) and ``:nodes`` (node -> labels, capacity, cordon).

- claim: one Lua script sets the fencing token to the new epoch unless a higher one
  holds it; only then is the state loaded, so no older leader can write in between.
- write: one Lua script per chunk first compares the token with the writer's epoch and
  refuses the whole chunk when another epoch holds it ("FENCED") or when there is no
  token at all ("LOST": Redis restarted empty or was flushed; the leader claims it
  again and re-writes its whole state); then HSET / HDEL. An empty delta still sends
  one call, that only checks the token: the writer's way to find a loss while idle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from dispatcher.common.redisconn import redis_client
from dispatcher.core.model import NodeName
from dispatcher.core.snapshot import Snapshot, StateDelta
from dispatcher.errors import Fenced, StoreError, StoreLost
from dispatcher.storage.codec import DECODE_ERRORS, describe
from dispatcher.storage.codec import config_in as _config_in
from dispatcher.storage.codec import config_out as _config_out
from dispatcher.storage.codec import node_in as _node_in
from dispatcher.storage.codec import node_out as _node_out
from dispatcher.storage.codec import source_in as _source_in

_CLAIM = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) < current then
  return redis.error_reply('FENCED claimed by epoch ' .. current)
end
redis.call('SET', KEYS[1], ARGV[1])
return current
"""

# ARGV: epoch, then for each hash in KEYS[2..]: number of sets, number of deletes,
# the field/value pairs, the fields to delete.
_WRITE = """
local current = redis.call('GET', KEYS[1])
if not current then
  return redis.error_reply('LOST the store holds no epoch: its data is gone')
end
if current ~= ARGV[1] then
  return redis.error_reply('FENCED claimed by epoch ' .. current)
end
local i = 2
for h = 2, #KEYS do
  local sets = tonumber(ARGV[i])
  local dels = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, sets do
    redis.call('HSET', KEYS[h], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  for _ = 1, dels do
    redis.call('HDEL', KEYS[h], ARGV[i])
    i = i + 1
  end
end
return 1
"""

CHUNK_RECORDS = 2000
"""Records per script call: a big first load must not stall Redis in one long script."""

K = TypeVar("K", bound=str)
V = TypeVar("V")


class RedisStateStore:
    kind = "redis"

    def __init__(self, client: aioredis.Redis, *, name: str = "clusterchecks-dispatcher") -> None:
        self._client = client
        prefix = f"{name}:store"
        self.epoch_key = f"{prefix}:epoch"
        self.hash_keys = tuple(
            f"{prefix}:{part}" for part in ("configs", "sources", "placement", "nodes")
        )
        self._claim = client.register_script(_CLAIM)
        self._write = client.register_script(_WRITE)
        self.round_trips = 0
        """Calls to Redis so far (benchmarks count them per operation)."""

    @classmethod
    def from_url(
        cls, url: str, *, name: str = "clusterchecks-dispatcher", timeout_s: float = 2.0
    ) -> RedisStateStore:
        return cls(redis_client(url, timeout_s=timeout_s), name=name)

    async def claim(self, *, epoch: int) -> Snapshot:
        try:
            self.round_trips += 1
            await self._claim(keys=[self.epoch_key], args=[str(epoch)])
            async with self._client.pipeline(transaction=True) as pipe:
                for key in self.hash_keys:
                    pipe.hgetall(key)
                self.round_trips += 1
                configs, sources, placement, nodes = await pipe.execute()
        except RedisError as exc:
            raise _translate(exc) from exc
        configs_key, sources_key, placement_key, nodes_key = self.hash_keys
        return Snapshot(
            configs=_decode(configs_key, configs, _config_in),
            sources=_decode(sources_key, sources, _source_in),
            placement=_decode(placement_key, placement, lambda raw: NodeName(raw.decode())),
            nodes=_decode(nodes_key, nodes, _node_in),
        )

    async def write(self, delta: StateDelta, *, epoch: int) -> None:
        """Writes ``delta`` in chunks; raises Fenced (another epoch holds the store),
        StoreLost (no epoch does: Redis lost its data) or StoreError. An empty delta
        costs one call that only checks the token."""
        for chunk in _chunks(delta) if delta else [delta]:
            args: list[str | bytes] = [str(epoch)]
            args.extend(_encode(chunk.configs, _config_out))
            args.extend(_encode(chunk.sources, lambda held: orjson.dumps(sorted(held))))
            args.extend(_encode(chunk.placement, lambda node: node))
            args.extend(_encode(chunk.nodes, _node_out))
            try:
                self.round_trips += 1
                await self._write(keys=[self.epoch_key, *self.hash_keys], args=args)
            except RedisError as exc:
                raise _translate(exc) from exc

    async def stored_epoch(self) -> int:
        """The epoch that holds the store (0: never claimed)."""
        try:
            raw = await self._client.get(self.epoch_key)
        except RedisError as exc:
            raise _translate(exc) from exc
        return int(raw or 0)

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)


def _translate(exc: RedisError) -> StoreError:
    if isinstance(exc, ResponseError) and "FENCED" in str(exc):
        return Fenced(f"redis: {exc}")
    if isinstance(exc, ResponseError) and str(exc).startswith("LOST"):
        return StoreLost(f"redis: {exc}")
    return StoreError(f"redis: {exc}")


def _chunks(delta: StateDelta) -> Iterator[StateDelta]:
    chunk = StateDelta()
    for name in ("configs", "sources", "placement", "nodes"):
        items: dict[Any, Any] = getattr(delta, name)
        for key, value in items.items():
            getattr(chunk, name)[key] = value
            if len(chunk) >= CHUNK_RECORDS:
                yield chunk
                chunk = StateDelta()
    if chunk:
        yield chunk


def _encode(changes: Mapping[K, V | None], encode: Callable[[V], str | bytes]) -> list[str | bytes]:
    sets: list[str | bytes] = []
    dels: list[str | bytes] = []
    for key, value in changes.items():
        if value is None:
            dels.append(key)
        else:
            sets.extend((key, encode(value)))
    return [str(len(sets) // 2), str(len(dels)), *sets, *dels]


def _decode(hash_key: str, raw: dict[bytes, bytes], decode: Callable[[bytes], V]) -> dict[Any, V]:
    """Every record of a hash, decoded; an unreadable one is a StoreError naming it."""
    decoded: dict[Any, V] = {}
    for key, value in raw.items():
        try:
            decoded[key.decode()] = decode(value)
        except DECODE_ERRORS as exc:
            raise StoreError(
                f"redis: the stored state is not readable: record "
                f"{key.decode(errors='replace')!r} of {hash_key} ({describe(exc)}); "
                "fix or delete it"
            ) from exc
    return decoded
