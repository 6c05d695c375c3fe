"""The agent benchmark's HTTP target: answers 200 on any path and records every hit.

Each hit is kept as (path, ``time.monotonic()``); on Linux that clock is the same in
every process, so the benchmark can compare it with its own window and with the agent's
schedule. The control routes under ``/__bench/`` are not recorded:

- ``GET /__bench/healthz``: 200 once serving;
- ``GET /__bench/hits?since=S&until=U``: ``{"total": n, "hits": {path: [t, ...]}}``,
  the hits with ``S <= t < U`` (monotonic seconds), every path's times in order.

Run: ``python -m tests.bench.target_server --port P [--cpu N]``.
"""

from __future__ import annotations

import time
from collections import defaultdict

import orjson
from aiohttp import web

from tests.bench import serving

CONTROL = "/__bench"
JSON = "application/json"

HITS: defaultdict[str, list[float]] = defaultdict(list)
TOTAL = [0]


async def any_path(request: web.Request) -> web.Response:
    HITS[request.path].append(time.monotonic())
    TOTAL[0] += 1
    return web.Response(body=b"ok\n", content_type="text/plain")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"healthy"}', content_type=JSON)


async def hits(request: web.Request) -> web.Response:
    since = float(request.query.get("since", "-inf"))
    until = float(request.query.get("until", "inf"))
    body = {
        "total": TOTAL[0],
        "hits": {path: [t for t in times if since <= t < until] for path, times in HITS.items()},
    }
    return web.Response(body=orjson.dumps(body), content_type=JSON)


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get(CONTROL + "/healthz", healthz)
    app.router.add_get(CONTROL + "/hits", hits)
    app.router.add_route("*", "/{tail:.*}", any_path)
    return app


if __name__ == "__main__":
    serving.main(make_app, __doc__)
