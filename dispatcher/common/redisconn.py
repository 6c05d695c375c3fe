"""One way to reach Redis for the lease and the store: a blocking pool with timeouts.

- ``BlockingConnectionPool``: a plain pool raises at once past its size; this one waits
  up to the timeout for a free connection.
- Every socket operation has a timeout, and the callers bound each call again.
- A call that meets a dead pooled connection (Redis restarted) is retried once, at once,
  on a fresh one: the scripts we send are safe to run twice, and otherwise the first
  call after every Redis restart would fail and cost a retry period.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def redis_client(url: str, *, timeout_s: float, max_connections: int = 4) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
    )
    return aioredis.Redis(connection_pool=pool)
