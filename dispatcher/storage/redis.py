"""The shared Redis store: the leader's persisted state in four hashes, fenced by epoch.

Layout under ``<name>:store``: ``:epoch`` (the claimant's epoch, the fencing token),
``:configs`` (digest -> config JSON), ``:sources`` (source -> JSON list of digests),
``:placement`` (digest -> node) and ``:nodes`` (node -> labels, capacity, cordon);
``:history:<digest>``, each check's history as a capped stream.

- claim: one Lua script sets the fencing token to the new epoch unless a higher one
  holds it; only then is the state loaded, so no older leader can write in between.
- write: one Lua script per chunk first compares the token with the writer's epoch and
  refuses the whole chunk when another epoch holds it ("FENCED") or when there is no
  token at all ("LOST": Redis restarted empty or was flushed; the leader claims it
  again and re-writes its whole state); then HSET / HDEL. An empty delta still sends
  one call, that only checks the token: the writer's way to find a loss while idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from dispatcher.common.redisconn import redis_client
from dispatcher.core.history import HistoryEntry
from dispatcher.core.model import Digest, NodeName
from dispatcher.core.snapshot import Snapshot, StateDelta
from dispatcher.errors import Fenced, StoreError, StoreLost
from dispatcher.storage.codec import DECODE_ERRORS, describe
from dispatcher.storage.codec import config_in as _config_in
from dispatcher.storage.codec import config_out as _config_out
from dispatcher.storage.codec import history_in as _history_in
from dispatcher.storage.codec import history_out as _history_out
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

# Every write script starts so: KEYS[1] is the store's epoch, ARGV[1] the writer's.
_FENCE = """
local current = redis.call('GET', KEYS[1])
if not current then
  return redis.error_reply('LOST the store holds no epoch: its data is gone')
end
if current ~= ARGV[1] then
  return redis.error_reply('FENCED claimed by epoch ' .. current)
end
"""

# ARGV: epoch, then for each hash in KEYS[2..]: number of sets, number of deletes,
# the field/value pairs, the fields to delete.
_WRITE = (
    _FENCE
    + """
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
)

# KEYS: the epoch, then the history streams of deleted checks, then those appended to.
# ARGV: epoch, max entries per stream, max age in ms, number of deleted streams, then
# for each appended stream one argument: its entries' JSON joined by newlines (compact
# JSON has none of its own: orjson escapes them in strings). One argument per stream
# rather than per result: redis-py packs each argument in Python, and that packing was
# most of what the history cost the leader with this store.
_HISTORY = (
    _FENCE
    + """
local dropped = tonumber(ARGV[4])
for k = 2, dropped + 1 do
  redis.call('DEL', KEYS[k])
end
local t = redis.call('TIME')
local oldest = tonumber(t[1]) * 1000 - tonumber(ARGV[3])
local i = 5
for k = dropped + 2, #KEYS do
  for e in string.gmatch(ARGV[i], '[^\\n]+') do
    redis.call('XADD', KEYS[k], '*', 'e', e)
  end
  i = i + 1
  redis.call('XTRIM', KEYS[k], 'MAXLEN', ARGV[2])
  redis.call('XTRIM', KEYS[k], 'MINID', '~', string.format('%d', oldest))
end
return 1
"""
)

# KEYS: history streams. Returns, in the order of KEYS, each one's entries as one flat
# list: id, the entry's JSON (field ``e``; nil when missing), id, JSON, ... (empty when
# the stream does not exist). Flat: XRANGE's own reply nests two lists in each entry,
# three times the objects for the client to build at 500,000 results.
_HISTORY_LOAD = """
local out = {}
for i, key in ipairs(KEYS) do
  local flat = {}
  for _, entry in ipairs(redis.call('XRANGE', key, '-', '+')) do
    local fields = entry[2]
    local value = false
    for j = 1, #fields - 1, 2 do
      if fields[j] == 'e' then value = fields[j + 1] end
    end
    flat[#flat + 1] = entry[1]
    flat[#flat + 1] = value
  end
  out[i] = flat
end
return out
"""

HISTORY_LOAD_KEYS = 1000
"""Streams read per script call at a claim. One XRANGE per check in a pipeline cost the
client more than the Redis side: 100,000 commands packed and 100,000 replies parsed one
by one in Python, about 2 s of a takeover's CPU at 100,000 checks; a script per 1,000
streams is 100 replies, parsed by hiredis, and each call holds Redis for a few ms."""

ENTRY_SEPARATOR = b"\n"
"""Between a stream's entries in its one script argument (never inside compact JSON)."""

CHUNK_RECORDS = 2000
"""Records per script call: a big first load must not stall Redis in one long script."""

K = TypeVar("K", bound=str)
V = TypeVar("V")


class RedisStateStore:
    kind = "redis"
    may_lose_data = True

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        name: str = "clusterchecks-dispatcher",
        history_max_results: int = 2000,
        history_max_age_s: float = 7 * 24 * 3600.0,
    ) -> None:
        self._client = client
        self._history_max_results = history_max_results
        self._history_max_age_s = history_max_age_s
        prefix = f"{name}:store"
        self.history_prefix = f"{prefix}:history:"
        """Each check's history is a capped stream ``<prefix>:history:<digest>`` (one
        entry per result, field ``e``: the entry's JSON), trimmed to the count bound
        exactly after each batch (``XTRIM MAXLEN``: an approximate trim frees only whole
        nodes of about 100 entries, which would keep some 100 results of each check
        whatever its share of ``--history-max-total``) and by age against Redis' clock."""
        self.epoch_key = f"{prefix}:epoch"
        self.hash_keys = tuple(
            f"{prefix}:{part}" for part in ("configs", "sources", "placement", "nodes")
        )
        self._claim = client.register_script(_CLAIM)
        self._write = client.register_script(_WRITE)
        self._history = client.register_script(_HISTORY)
        self._history_load = client.register_script(_HISTORY_LOAD)
        self._streams: set[str] = set()
        """Digests with a history stream, as this store object last claimed and wrote
        (only the claimant writes): a deleted check costs a call only when it has one."""
        self._streams_known = True
        """False from a claim without the history until ``load_history``: meanwhile
        ``_streams`` holds only what this store wrote, and every deleted check's stream
        is deleted, whether or not it has one."""
        self.round_trips = 0
        """Calls to Redis so far (benchmarks count them per operation)."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        name: str = "clusterchecks-dispatcher",
        timeout_s: float = 2.0,
        history_max_results: int = 2000,
        history_max_age_s: float = 7 * 24 * 3600.0,
    ) -> RedisStateStore:
        return cls(
            redis_client(url, timeout_s=timeout_s),
            name=name,
            history_max_results=history_max_results,
            history_max_age_s=history_max_age_s,
        )

    async def claim(self, *, epoch: int, history: bool = True) -> Snapshot:
        try:
            self.round_trips += 1
            await self._claim(keys=[self.epoch_key], args=[str(epoch)])
            async with self._client.pipeline(transaction=True) as pipe:
                for key in self.hash_keys:
                    pipe.hgetall(key)
                self.round_trips += 1
                hashes: list[dict[bytes, bytes]] = await pipe.execute()
            digests = sorted(key.decode(errors="replace") for key in hashes[0])
            streams = await self._read_streams(digests) if history else []
        except RedisError as exc:
            raise _translate(exc) from exc
        # Decoded in a worker thread: at 100,000 checks this is about a second of CPU,
        # and on the event loop it would keep the elector from renewing the lease it
        # just won (a renew deadline of 2 s was missed, the term lost, over and over).
        snapshot = await asyncio.to_thread(
            self._decode_snapshot, hashes, digests if history else [], streams
        )
        self._streams = set(snapshot.history)
        # Without the history, which checks have a stream is not known until it is
        # loaded: a check deleted meanwhile has its stream deleted whether or not.
        self._streams_known = history
        return snapshot

    async def load_history(self) -> dict[Digest, list[HistoryEntry]]:
        try:
            self.round_trips += 1
            keys = await self._client.hkeys(self.hash_keys[0])
            digests = sorted(
                key.decode(errors="replace") if isinstance(key, bytes) else key for key in keys
            )
            streams = await self._read_streams(digests)
        except RedisError as exc:
            raise _translate(exc) from exc
        history = await asyncio.to_thread(self._decode_history, digests, streams)
        # What was appended since the claim is in it too; a stream written after this
        # read was noted by that write.
        self._streams.update(history)
        self._streams_known = True
        return history

    async def _read_streams(self, digests: list[str]) -> list[Any]:
        """Each digest's history stream (empty when it has none), in one pipeline (one
        round trip) of scripts."""
        if not digests:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for start in range(0, len(digests), HISTORY_LOAD_KEYS):
                part = digests[start : start + HISTORY_LOAD_KEYS]
                await self._history_load(keys=[self.history_prefix + d for d in part], client=pipe)
            self.round_trips += 1
            return [stream for chunk in await pipe.execute() for stream in chunk]

    def _decode_snapshot(
        self, hashes: list[dict[bytes, bytes]], digests: list[str], streams: list[Any]
    ) -> Snapshot:
        """The loaded records (the four hashes, in ``hash_keys`` order; each digest's
        stream), decoded; an unreadable one is a StoreError naming it."""
        configs, sources, placement, nodes = hashes
        configs_key, sources_key, placement_key, nodes_key = self.hash_keys
        return Snapshot(
            configs=_decode(configs_key, configs, _config_in),
            sources=_decode(sources_key, sources, _source_in),
            placement=_decode(placement_key, placement, lambda raw: NodeName(raw.decode())),
            nodes=_decode(nodes_key, nodes, _node_in),
            history=self._decode_history(digests, streams),
        )

    def _decode_history(
        self, digests: list[str], streams: list[Any]
    ) -> dict[Digest, list[HistoryEntry]]:
        history: dict[Digest, list[HistoryEntry]] = {}
        for digest, stream in zip(digests, streams, strict=True):
            if stream:
                name = self.history_prefix + digest
                history[Digest(digest)] = [
                    _decode_entry(name, stream[i], stream[i + 1]) for i in range(0, len(stream), 2)
                ]
        return history

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
        await self._write_history(delta, epoch=epoch)

    async def _write_history(self, delta: StateDelta, *, epoch: int) -> None:
        """Drops the streams of deleted checks, then appends the new results: one fenced
        script call per ``CHUNK_RECORDS`` results, never one round trip per result."""
        gone = [
            d
            for d, c in delta.configs.items()
            if c is None and (not self._streams_known or d in self._streams)
        ]
        dropped = [self.history_prefix + d for d in gone]
        if not dropped and not delta.history:
            return
        chunks: list[tuple[list[str], list[str | bytes]]] = [([], [])]
        size = 0
        for digest, entries in delta.history.items():
            for start in range(0, len(entries), CHUNK_RECORDS):
                part = entries[start : start + CHUNK_RECORDS]
                if size + len(part) > CHUNK_RECORDS:
                    chunks.append(([], []))
                    size = 0
                keys, values = chunks[-1]
                keys.append(self.history_prefix + digest)
                values.append(ENTRY_SEPARATOR.join([_history_out(e) for e in part]))
                size += len(part)
        for index, (keys, values) in enumerate(chunks):
            deleted = dropped if index == 0 else []
            args: list[str | bytes] = [
                str(epoch),
                str(delta.history_keep(self._history_max_results)),
                str(int(self._history_max_age_s * 1000)),
                str(len(deleted)),
                *values,
            ]
            try:
                self.round_trips += 1
                await self._history(keys=[self.epoch_key, *deleted, *keys], args=args)
            except RedisError as exc:
                raise _translate(exc) from exc
        self._streams.difference_update(gone)
        self._streams.update(delta.history)

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


def _decode_entry(stream: str, entry_id: bytes, raw: bytes | None) -> HistoryEntry:
    """One stream entry as the load script returns it: its id and its ``e`` field (None
    when it has none)."""
    try:
        return _history_in(raw)  # type: ignore[arg-type]  # None raises TypeError: named
    except DECODE_ERRORS as exc:
        raise StoreError(
            f"redis: the stored state is not readable: entry {entry_id!r} of {stream} "
            f"({describe(exc)}); fix or delete it"
        ) from exc


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
