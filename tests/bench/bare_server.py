"""The baseline for the API benchmark: a bare aiohttp server with the heartbeat's shape.

Same routes the load generator uses (``POST .../status/{node}``, ``GET .../configs/{node}``
and ``GET /healthz``), served the way the dispatcher serves (``AppRunner`` without an
access log, the default event loop), but the handler only parses the JSON body and
answers a small JSON object: no validation, no state, no middleware, no logging.

Run: ``python -m tests.bench.bare_server --port P [--cpu N]``.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from tests.bench import serving

API = "/v1/api/clusterchecks"
JSON = "application/json"


async def post_status(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    up_to_date = isinstance(body, dict) and body.get("last_change") in (-1, 0)
    return web.Response(
        body=orjson.dumps(
            {
                "is_up_to_date": up_to_date,
                "epoch": 1,
                "leader": "bare",
                "heartbeat_interval_s": 10.0,
                "node_expiration_timeout_s": 30.0,
            }
        ),
        content_type=JSON,
    )


async def get_configs(request: web.Request) -> web.Response:
    body = orjson.dumps({"last_change": 0, "epoch": 1, "configs": []})
    return web.Response(body=body, content_type=JSON)


async def get_healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"healthy"}', content_type=JSON)


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post(API + "/status/{node}", post_status)
    app.router.add_get(API + "/configs/{node}", get_configs)
    app.router.add_get("/healthz", get_healthz)
    return app


if __name__ == "__main__":
    serving.main(make_app, __doc__)
