"""The API benchmark's load generator, run in its own process (and on its own CPU).

Registers ``--nodes`` node names (a heartbeat, then a config fetch to learn each node's
change counter, as an agent does), then keeps ``--concurrency`` heartbeats in flight over
keep-alive connections: ``--warmup`` seconds unmeasured, then ``--duration`` seconds
measured. Prints one JSON object (``LoadResult``) on stdout.

When given ``--server-pid``, it also reads the server's CPU time from /proc over exactly
the measured window, so a run that is bound by this client rather than by the server
shows as a server below 100 % of one CPU.

Run: ``python -m tests.bench.loadgen --url http://127.0.0.1:P [options]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from dataclasses import dataclass

import aiohttp
import orjson
from yarl import URL

from tests.bench.machine import machine_busy_s, process_cpu_s
from tests.bench.stats import percentile

API = "/v1/api/clusterchecks"
HEADERS = {"Content-Type": "application/json"}
MAX_ERRORS = 1_000  # stop early when the server is gone instead of spinning


@dataclass
class LoadResult:
    url: str
    nodes: int
    concurrency: int
    warmup_s: float
    duration_s: float
    requests: int  # completed 200s started inside the measured window
    errors: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    client_cpu_pct: float
    client_cpu_us_per_request: float | None
    server_cpu_pct: float | None
    server_cpu_us_per_request: float | None
    other_cpu_pct: float | None  # every other process on the machine, in % of one CPU
    up_to_date: bool  # every registered node was up to date after its config fetch


def node_labels(i: int, name: str) -> dict[str, str]:
    return {
        "kubernetes.io/hostname": name,
        "topology.kubernetes.io/zone": f"zone-{i % 3}",
        "node.kubernetes.io/instance-type": "m5.large",
        "kubernetes.io/os": "linux",
    }


async def register(
    session: aiohttp.ClientSession, url: str, names: list[str]
) -> tuple[dict[str, bytes], bool]:
    """Heartbeat-only, fetch configs, then a real heartbeat: what an agent does first."""
    bodies: dict[str, bytes] = {}
    all_up_to_date = True
    for i, name in enumerate(names):
        labels = node_labels(i, name)
        first = orjson.dumps({"last_change": -1, "labels": labels})
        async with session.post(f"{url}{API}/status/{name}", data=first, headers=HEADERS) as r:
            r.raise_for_status()
            await r.read()
        async with session.get(f"{url}{API}/configs/{name}") as r:
            r.raise_for_status()
            last_change = int(orjson.loads(await r.read())["last_change"])
        body = orjson.dumps({"last_change": last_change, "labels": labels})
        async with session.post(f"{url}{API}/status/{name}", data=body, headers=HEADERS) as r:
            r.raise_for_status()
            all_up_to_date = all_up_to_date and bool(orjson.loads(await r.read())["is_up_to_date"])
        bodies[name] = body
    return bodies, all_up_to_date


async def run_load(
    *,
    url: str,
    nodes: int,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    server_pid: int | None,
) -> LoadResult:
    names = [f"bench-node-{i:03d}" for i in range(nodes)]
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60.0)
    timeout = aiohttp.ClientTimeout(total=10.0)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    ) as session:
        bodies, up_to_date = await register(session, url, names)
        # Parsed once: the client should spend its CPU on requests, not on URLs.
        targets = [(URL(f"{url}{API}/status/{name}"), bodies[name]) for name in names]
        latencies: list[float] = []
        errors = 0
        started = time.perf_counter()
        window_start = started + warmup_s
        window_end = window_start + duration_s
        cpu: dict[str, float | None] = {}

        async def worker(first: int) -> None:
            nonlocal errors
            i = first
            while errors < MAX_ERRORS:
                sent = time.perf_counter()
                if sent >= window_end:
                    return
                target, body = targets[i % len(targets)]
                i += concurrency
                try:
                    async with session.post(target, data=body, headers=HEADERS) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                done = time.perf_counter()
                if not ok:
                    errors += 1
                elif sent >= window_start:
                    latencies.append(done - sent)

        async def sampler() -> None:
            await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
            cpu["client0"] = time.process_time()
            cpu["server0"] = process_cpu_s(server_pid) if server_pid else None
            cpu["machine0"] = machine_busy_s()
            cpu["wall0"] = time.perf_counter()
            await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
            cpu["client1"] = time.process_time()
            cpu["server1"] = process_cpu_s(server_pid) if server_pid else None
            cpu["machine1"] = machine_busy_s()
            cpu["wall1"] = time.perf_counter()

        await asyncio.gather(sampler(), *(worker(k) for k in range(concurrency)))

    wall = (cpu["wall1"] or 0.0) - (cpu["wall0"] or 0.0)
    client_cpu = (cpu["client1"] or 0.0) - (cpu["client0"] or 0.0)
    server0, server1 = cpu["server0"], cpu["server1"]
    server_cpu = server1 - server0 if server0 is not None and server1 is not None else None
    machine0, machine1 = cpu["machine0"], cpu["machine1"]
    other_cpu: float | None = None
    if server_cpu is not None and machine0 is not None and machine1 is not None:
        other_cpu = max(0.0, machine1 - machine0 - server_cpu - client_cpu)
    count = len(latencies)
    return LoadResult(
        url=url,
        nodes=nodes,
        concurrency=concurrency,
        warmup_s=warmup_s,
        duration_s=duration_s,
        requests=count,
        errors=errors,
        requests_per_s=count / duration_s,
        p50_ms=percentile(latencies, 50) * 1e3,
        p90_ms=percentile(latencies, 90) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3,
        max_ms=max(latencies, default=float("nan")) * 1e3,
        mean_ms=sum(latencies) / count * 1e3 if count else float("nan"),
        client_cpu_pct=100.0 * client_cpu / wall if wall > 0 else float("nan"),
        client_cpu_us_per_request=client_cpu / count * 1e6 if count else None,
        server_cpu_pct=100.0 * server_cpu / wall if server_cpu is not None and wall > 0 else None,
        server_cpu_us_per_request=server_cpu / count * 1e6
        if server_cpu is not None and count
        else None,
        other_cpu_pct=100.0 * other_cpu / wall if other_cpu is not None and wall > 0 else None,
        up_to_date=up_to_date,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT (loopback only)")
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--cpu", type=int, default=None, help="Pin to this CPU.")
    args = parser.parse_args()
    if not args.url.startswith(("http://127.0.0.1:", "http://localhost:", "http://[::1]:")):
        sys.exit("loadgen: only loopback URLs")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    result = asyncio.run(
        run_load(
            url=args.url,
            nodes=args.nodes,
            concurrency=args.concurrency,
            warmup_s=args.warmup,
            duration_s=args.duration,
            server_pid=args.server_pid,
        )
    )
    sys.stdout.write(orjson.dumps(dataclasses.asdict(result)).decode() + "\n")


if __name__ == "__main__":
    main()
