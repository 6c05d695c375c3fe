"""Server CPU per request of each routine agent route, at fleet size.

A real dispatcher process (memory store, pinned to CPU 0) holds ``--nodes`` nodes and
``--checks-per-node`` checks each; a load generator on CPU 1 (``rawhttp``, keep-alive)
then sends, one route at a time, what a fleet's agents send: heartbeats with a stat per
check held, results posts of ``--results-per-post`` results, and config fetches that
are answered at once. For each it reads the dispatcher's CPU time from /proc over the
measured window and prints microseconds of server CPU per request: the number that
decides how many agents one leader core carries (``fleet.py`` measures the whole).

Run: ``python -m tests.bench.routes [--nodes 10000] [--seconds 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from tests.bench.machine import process_cpu_s
from tests.bench.rawhttp import Client, Pool, Request
from tests.processes import Proc, dispatcher_argv, free_port, wait_http_ok

API = "/v1/api/clusterchecks"
JSON = "application/json"


@dataclass
class RouteCost:
    route: str
    requests: int
    seconds: float
    server_cpu_s: float

    @property
    def us_per_request(self) -> float:
        return self.server_cpu_s / max(1, self.requests) * 1e6

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def _drive(
    pool: Pool,
    make: Callable[[int], bytes],
    *,
    seconds: float,
    concurrency: int,
    pid: int,
    profile: Path | None = None,
) -> tuple[int, float, float]:
    count = 0
    stop = False
    failures = 0

    async def worker(k: int) -> None:
        nonlocal count, failures
        i = k
        while not stop:
            status, _ = await pool.request(make(i), 30.0)
            if status != 200:
                failures += 1
                if failures > 10:
                    raise RuntimeError(f"status {status}")
            count += 1
            i += concurrency

    tasks = [asyncio.create_task(worker(k)) for k in range(concurrency)]
    await asyncio.sleep(1.0)  # warm
    c0, n0, t0 = process_cpu_s(pid) or 0.0, count, time.monotonic()
    spy = None
    if profile is not None:
        spy = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-d",
            str(max(1, round(seconds - 1))), "-r", "500", "-f", "raw", "-o", str(profile),
            "--nonblocking", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    await asyncio.sleep(seconds)
    c1, n1, t1 = process_cpu_s(pid) or 0.0, count, time.monotonic()
    stop = True
    await asyncio.gather(*tasks)
    if spy is not None:
        await spy.wait()
    return n1 - n0, t1 - t0, c1 - c0


class _Fleet:
    """The requests of ``nodes`` agents, each holding ``checks_per_node`` checks."""

    def __init__(self, pool: Pool, args: argparse.Namespace) -> None:
        self.pool = pool
        self.args = args
        host = pool.client.authority
        self.names = [f"node-{i:05d}" for i in range(args.nodes)]
        self.status_req = {n: Request("POST", f"{API}/status/{n}", host, JSON) for n in self.names}
        self.configs_req = {n: Request("GET", f"{API}/configs/{n}", host) for n in self.names}
        self.results_req = {
            n: Request("POST", f"{API}/results/{n}", host, JSON) for n in self.names
        }
        self.labels = {n: orjson.dumps({"zone": f"z{i % 3}"}) for i, n in enumerate(self.names)}
        self.held: dict[str, list[str]] = {}
        self.last_change: dict[str, int] = {}
        self.wall = time.time() - 1.0
        self.rng = random.Random(1)

    async def each(self, call: Callable[[str], Awaitable[None]]) -> None:
        sem = asyncio.Semaphore(self.args.concurrency)

        async def one(n: str) -> None:
            async with sem:
                await call(n)

        await asyncio.gather(*(one(n) for n in self.names))

    async def ok(self, data: bytes, timeout_s: float = 60.0) -> bytes:
        status, raw = await self.pool.request(data, timeout_s)
        if status != 200:
            raise RuntimeError(f"status {status}: {raw[:300]!r}")
        return raw

    async def set_up(self) -> None:
        """Registers every node, puts the checks (sources of 10,000) and fetches each
        node's set, as agents do."""

        async def register(n: str) -> None:
            body = b'{"last_change":-1,"labels":%s,"capacity":1}' % self.labels[n]
            await self.ok(self.status_req[n].encode(body))

        await self.each(register)
        host = self.pool.client.authority
        total = self.args.nodes * self.args.checks_per_node
        for start in range(0, total, 10_000):
            configs = [
                {
                    "name": "http_check",
                    "instances": [{"name": f"svc-{i}", "url": f"http://svc-{i}.svc:8080/"}],
                    "interval_s": 10,
                }
                for i in range(start, min(total, start + 10_000))
            ]
            put = Request("PUT", f"{API}/sources/bench-{start}", host, JSON)
            await self.ok(put.encode(orjson.dumps({"configs": configs})), 600.0)

        async def fetch(n: str) -> None:
            reply = orjson.loads(await self.ok(self.configs_req[n].encode()))
            self.held[n] = [c["digest"] for c in reply["configs"]]
            self.last_change[n] = reply["last_change"]

        await self.each(fetch)

    def pretend_set_up(self) -> None:
        """The bare server keeps nothing: made-up digests, the same request shapes."""
        for i, n in enumerate(self.names):
            self.held[n] = [f"{i:08x}{k:08x}" for k in range(self.args.checks_per_node)]
            self.last_change[n] = 0

    def heartbeat(self, i: int) -> bytes:
        n = self.names[i % len(self.names)]
        # The average run time moves with every heartbeat, as a real agent's does (the
        # leader re-prices the checks).
        avg_s = 0.01 + (i % 97) * 1e-6
        stats = orjson.dumps(
            {
                d: {"avg_execution_s": avg_s, "runs": 5, "errors": 0, "last_run_at": self.wall}
                for d in self.held[n]
            }
        )
        body = b'{"last_change":%d,"labels":%s,"capacity":1,"stats":%s}' % (
            self.last_change[n],
            self.labels[n],
            stats,
        )
        return self.status_req[n].encode(body)

    def results(self, i: int) -> bytes:
        n = self.names[i % len(self.names)]
        digests = self.held[n]
        items = [
            {
                "digest": digests[k % len(digests)],
                "run_id": f"{self.rng.randrange(1 << 32):08x}",
                "ok": True,
                "errors": [],
                "started_at": self.wall + i * 1e-4,
                "duration_s": 0.01,
            }
            for k in range(self.args.results_per_post)
        ]
        return self.results_req[n].encode(orjson.dumps({"results": items}))

    def fetch_now(self, i: int) -> bytes:
        return self.configs_req[self.names[i % len(self.names)]].encode()

    def long_poll(self, i: int) -> bytes:
        """A long poll that nothing wakes: answered when its short wait runs out."""
        n = self.names[i % len(self.names)]
        host = self.pool.client.authority
        target = f"{API}/configs/{n}?since={self.last_change[n]}&wait_s={self.args.poll_wait}"
        return Request("GET", target, host).encode()


async def measure(port: int, pid: int, args: argparse.Namespace) -> list[RouteCost]:
    client = Client("127.0.0.1", port)
    sweeper = asyncio.create_task(client.sweep())
    fleet = _Fleet(Pool(client, args.concurrency), args)
    if args.bare:
        fleet.pretend_set_up()
    else:
        await fleet.set_up()
    routes: list[tuple[str, Callable[[int], bytes]]] = [
        ("status", fleet.heartbeat),
        ("results", fleet.results),
        ("configs", fleet.fetch_now),
        ("longpoll", fleet.long_poll),
    ]
    out = []
    for route, make in routes:
        if (args.only and route not in args.only) or (
            args.bare and route in ("results", "longpoll")
        ):
            continue
        n, secs, cpu = await _drive(
            fleet.pool,
            make,
            seconds=args.seconds,
            concurrency=args.concurrency,
            pid=pid,
            profile=args.profile / f"{route}.txt" if args.profile else None,
        )
        out.append(RouteCost(route, n, secs, cpu))
    sweeper.cancel()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.routes", description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--checks-per-node", type=int, default=10)
    parser.add_argument("--results-per-post", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--poll-wait", type=float, default=0.05, help="longpoll's wait_s")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy folded stacks here")
    parser.add_argument("--bare", action="store_true", help="a bare aiohttp server instead")
    args = parser.parse_args()
    port = free_port()
    if args.bare:
        argv = [sys.executable, "-m", "tests.bench.bare_server", "--port", str(port)]
    else:
        argv = dispatcher_argv(
            port, "--log-level", args.log_level, "--heartbeat-interval", "10",
            "--node-expiration-timeout", "600",
        )  # fmt: skip
    log_path = Path(tempfile.mkdtemp(prefix="routes-")) / "dispatcher.log"
    proc = Proc("dispatcher", ["taskset", "-c", "0", *argv], log_path).start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout_s=30.0, proc=proc)
        os.sched_setaffinity(0, {1})
        costs = asyncio.run(measure(port, proc.pid, args))
    finally:
        proc.stop()
    for c in costs:
        print(
            f"{c.route:8} {c.us_per_request:7.1f} us/request  {c.rate:8.0f} req/s"
            f"  ({c.requests} requests, server CPU {c.server_cpu_s:.2f} s)"
        )


if __name__ == "__main__":
    main()
