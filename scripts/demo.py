"""`make run`: a standalone dispatcher (in-memory state), three local agents, a small
target they probe, and the example checks of examples/conf.d. Prints where checks run
and how they fare until Ctrl-C; process logs go to .run/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from itertools import count
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUN = ROOT / ".run"
DISPATCHER = "http://127.0.0.1:5005"
TARGET_PORT = 8099
AGENTS = [("agent-a", 5016, "zone=a"), ("agent-b", 5017, "zone=b"), ("agent-c", 5018, "zone=a")]


async def target() -> web.AppRunner:
    hits = count()

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(0.4)
        return web.Response(text="slow but fine")

    async def flaky(_: web.Request) -> web.Response:
        return web.Response(status=503 if next(hits) % 3 == 0 else 200, text="flaky")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/slow", slow)
    app.router.add_get("/flaky", flaky)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", TARGET_PORT).start()
    return runner


def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    log = (RUN / f"{name}.log").open("wb")
    env = {**os.environ, "CLUSTERCHECKS_LOG_FORMAT": "json"}
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def get(path: str) -> dict[str, object]:
    with urllib.request.urlopen(DISPATCHER + path, timeout=2) as response:
        data: dict[str, object] = json.load(response)
        return data


def show() -> None:
    state = get("/v1/api/clusterchecks")
    checks = {c["digest"]: c for c in get("/v1/api/clusterchecks/checks")["checks"]}  # type: ignore[index]
    print(f"\n{'node':<10} {'check':<7} {'target':<36} {'last result'}")
    for node in state["nodes"]:  # type: ignore[attr-defined]
        for digest in node["configs"]:
            check = checks[digest]
            instance = check["instances"][0]
            what = (
                instance.get("url")
                or " ".join(instance.get("command", []))
                or instance.get("name")
                or (f"{instance.get('host')}:{instance.get('port')}")
            )
            last = check.get("last_result")
            verdict = (
                "waiting for first run"
                if not last
                else ("ok" if last["ok"] else "FAILED: " + "; ".join(last["errors"])[:60])
            )
            print(f"{node['name']:<10} {check['name']:<7} {str(what)[:36]:<36} {verdict}")
    for digest in state["dangling"]:  # type: ignore[attr-defined]
        print(f"{'(none)':<10} {checks[digest]['name']:<7} dangling")


async def main() -> None:
    RUN.mkdir(exist_ok=True)
    runner = await target()
    procs = [
        start("dispatcher", [
            str(BIN / "clusterchecks-dispatcher"), "--config-dir", "examples/conf.d",
            "--heartbeat-interval", "2", "--node-expiration-timeout", "6", "--identity", "demo",
        ]),
    ]  # fmt: skip
    for name, port, labels in AGENTS:
        procs.append(start(name, [
            str(BIN / "clusterchecks-agent"), "--name", name, "--port", str(port),
            "--labels", labels, "--allow-exec", str(ROOT / "examples" / "checks"),
            "--allow-exec", "/bin", "--allow-exec", "/usr/bin",
        ]))  # fmt: skip
    print(f"dispatcher  {DISPATCHER}   (state: {DISPATCHER}/v1/api/clusterchecks)")
    print(f"status page {DISPATCHER}/v1/api/clusterchecks/results")
    print(f"metrics     {DISPATCHER}/metrics   agents: 127.0.0.1:5016-5018/metrics")
    print(f"logs        {RUN}/*.log            Ctrl-C stops everything")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5)
            if stop.is_set():
                break
            dead = [p.args[0] for p in procs if p.poll() is not None]
            if dead:
                print(f"a process exited: {dead}; see {RUN}/*.log")
                break
            try:
                show()
            except OSError as exc:
                print(f"dispatcher not answering yet: {exc}")
    finally:
        # Agents first, so that they can deregister from a dispatcher still running.
        for group in (procs[1:], procs[:1]):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        await runner.cleanup()
        print("stopped")


if __name__ == "__main__":
    asyncio.run(main())
