"""`make run`: a standalone dispatcher on the durable default store (sqlite, its data
dir .run/data), three local agents, a small target they probe, and the example checks
of examples/conf.d. Prints which agent runs which check and how it fares until Ctrl-C;
process logs go to .run/.

The agents start once the dispatcher answers ``/readyz``. On a fresh data dir the
dispatcher reads its checks from ``.run/conf.d``, a symbolic link that points at an
empty directory until all three agents have registered and at the example checks from
then on: the dispatcher places a new check on the least loaded agent, so the checks
spread over all three however long the agents take to start (a busy machine can take
seconds), where a fixed warm-up would let the first agent take every check. Started
again on the same data dir, the dispatcher has every check and its agent at once (the
link points at the checks from the start: an empty directory would remove them). The
first table waits (a bounded time) until the checks are placed, so it shows where they
run rather than every check dangling.

Ctrl-C stops the dispatcher first and the agents then, so that the data dir keeps every
agent with its checks: the next run gives each agent back what it ran.

The demo is there to be poked at: an agent that dies (``kill -9 $(cat .run/agent-a.pid)``)
is reported, the dispatcher drops it once it has missed heartbeats for EXPIRY_S, and the
next tables show its checks on the other agents. Only Ctrl-C (SIGINT or SIGTERM) ends the
demo, with exit status 0. If the dispatcher itself dies the demo cannot go on: it says
so, stops the rest and exits 1.

The children run in process groups of their own, so the terminal's Ctrl-C reaches this
script alone, which stops the agents first (they deregister from a dispatcher still
running) and then the dispatcher.

Options (for tests, and for when the usual ports are taken): see ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import aiohttp
from aiohttp import web

from dispatcher import wire
from dispatcher.admin.client import AdminClient, Target, connect, connection_problem, short
from dispatcher.admin.errors import AdminError
from dispatcher.common.clock import Clock, SystemClock

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

HEARTBEAT_S = 2.0
"""Seconds between the agents' heartbeats (the dispatcher tells them)."""
EXPIRY_S = 6.0
"""Seconds without a heartbeat after which the dispatcher drops an agent and gives its
checks to the others."""
WARMUP_S = 1.0
"""The dispatcher's warm-up (it places no check for this long after it starts on an
empty data dir): shorter than its default, so that the first table comes soon. It is not
what spreads the checks (the late link to the config directory is), so a slow start
of the agents does not matter."""
DATA_FILE = "clusterchecks.db"
"""The sqlite store's file in the data dir: there, the data dir holds a state."""
TABLE_EVERY_S = 5.0
READY_TIMEOUT_S = 30.0
"""How long the dispatcher may take to answer /readyz with 200 after it starts."""
REGISTER_TIMEOUT_S = 20.0
"""How long the first table waits for every agent to register and the checks placed.
Past it, the checks are given to the agents registered by then."""
STOP_GRACE_S = 10.0
"""How long each group of children (agents, then the dispatcher) may take to stop after
SIGTERM before it is killed."""
PLACE_WAIT_S = 5.0
"""How long the first table waits, once every agent registered and the warm-up is over,
for the dispatcher to read the checks (it scans its config directory every second) and
place them (on its tick, at least once a second); checks that no agent can take dangle."""
POLL_S = 0.5
"""How often the children are looked at between tables (a death is reported this soon)."""
REQUEST_TIMEOUT_S = 2.0

AGENTS = [("agent-a", "zone=a"), ("agent-b", "zone=b"), ("agent-c", "zone=a")]
DEFAULT_PORT = 5005
DEFAULT_AGENT_PORTS = (5016, 5017, 5018)
DEFAULT_TARGET_PORT = 8099


class DemoFailed(Exception):
    """The demo cannot go on (the dispatcher died or never became ready)."""


# --------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class Options:
    port: int
    agent_ports: tuple[int, ...]
    target_port: int
    config_dir: Path
    every_s: float
    run_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def parse(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="scripts/demo.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="dispatcher port")
    parser.add_argument(
        "--agent-ports",
        default=",".join(map(str, DEFAULT_AGENT_PORTS)),
        help="three comma-separated ports for the agents' local servers",
    )
    parser.add_argument(
        "--target-port",
        type=int,
        default=DEFAULT_TARGET_PORT,
        help="port of the checks' target; the example checks probe 8099, so give a "
        "--config-dir whose checks probe this one",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=ROOT / "examples" / "conf.d",
        help="check configs (RUN_DIR/conf.d links to it once the agents have registered)",
    )
    parser.add_argument("--every", type=float, default=TABLE_EVERY_S, help="seconds between tables")
    parser.add_argument(
        "--run-dir", type=Path, default=ROOT / ".run", help="logs, pid files, the data dir"
    )
    args = parser.parse_args(argv)
    try:
        agent_ports = tuple(int(p) for p in args.agent_ports.split(","))
    except ValueError:
        parser.error(f"--agent-ports: {args.agent_ports!r} is not a list of ports")
    if len(agent_ports) != len(AGENTS):
        parser.error(f"--agent-ports: give {len(AGENTS)} ports, one per agent")
    if args.every <= 0:
        parser.error("--every: give a positive number of seconds")
    if not args.config_dir.is_dir():
        parser.error(f"--config-dir: {args.config_dir} is not a directory")
    return Options(
        port=args.port,
        agent_ports=agent_ports,
        target_port=args.target_port,
        config_dir=args.config_dir.resolve(),
        every_s=args.every,
        run_dir=args.run_dir.resolve(),
    )


# -------------------------------------------------------------------- children


def exit_text(code: int) -> str:
    """How a child ended, from its return code (negative: the signal that killed it)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return "exited normally" if code == 0 else f"exited with code {code}"


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    pid_file: Path
    exited_at: float | None = None
    """When this script first saw it gone (its monotonic clock)."""

    @property
    def code(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "\n".join(f"    {line[:200]}" for line in text) or "    (empty log)"


def start(name: str, argv: list[str], opts: Options) -> Child:
    log_path = opts.run_dir / f"{name}.log"
    env = {**os.environ, "CLUSTERCHECKS_LOG_FORMAT": "json"}
    with log_path.open("wb") as log:
        # A process group of its own: the terminal's Ctrl-C is for this script, which
        # then stops the children in order.
        popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, process_group=0
        )
    pid_file = opts.run_dir / f"{name}.pid"
    pid_file.write_text(f"{popen.pid}\n")
    return Child(name, popen, log_path, pid_file)


def leftovers(run_dir: Path) -> list[str]:
    """Children of an earlier run that still live (its demo was killed outright)."""
    found = []
    for pid_file in sorted(run_dir.glob("*.pid")):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"clusterchecks" in cmdline:
                found.append(f"{pid_file.stem} (pid {pid})")
    return found


def busy_ports(opts: Options) -> list[str]:
    """The ports the demo needs that something already listens on."""
    wanted = [("dispatcher", opts.port), ("target", opts.target_port)]
    wanted += [(name, port) for (name, _), port in zip(AGENTS, opts.agent_ports, strict=True)]
    busy = []
    for name, port in wanted:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # What the servers set too: a port left in TIME_WAIT is not taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"port {port} ({name})")
    return busy


async def stop_group(children: Sequence[Child], clock: Clock) -> None:
    """SIGTERM, then up to STOP_GRACE_S for all of them, then SIGKILL for the rest."""
    for child in children:
        if child.alive():
            child.popen.send_signal(signal.SIGTERM)
    deadline = clock.monotonic() + STOP_GRACE_S
    while any(c.alive() for c in children) and clock.monotonic() < deadline:
        await clock.sleep(0.1)
    for child in children:
        if child.alive():
            print(f"{child.name} did not stop within {STOP_GRACE_S:g} s of SIGTERM: killed")
            child.popen.kill()
            child.popen.wait()


def point(link: Path, target: Path) -> None:
    """Makes ``link`` a symbolic link to ``target`` in one step (a rename over the old
    link), as a ConfigMap's volume swaps its files: a scan sees the old set or the new."""
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)  # not a link: left by something else than this script
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    tmp.replace(link)


# ---------------------------------------------------------------------- target


async def target(port: int, clock: Clock) -> web.AppRunner:
    hits = count()

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def slow(_: web.Request) -> web.Response:
        await clock.sleep(0.4)
        return web.Response(text="slow but fine")

    async def flaky(_: web.Request) -> web.Response:
        return web.Response(status=503 if next(hits) % 3 == 0 else 200, text="flaky")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/slow", slow)
    app.router.add_get("/flaky", flaky)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


# ------------------------------------------------------------------- rendering


def what(check: wire.CheckDetailOut) -> str:
    instance = check.instances[0] if check.instances else {}
    command = instance.get("command")
    return str(
        instance.get("url")
        or (" ".join(map(str, command)) if isinstance(command, list) else None)
        or instance.get("name")
        or f"{instance.get('host')}:{instance.get('port')}"
    )


def verdict(check: wire.CheckDetailOut) -> str:
    last = check.last_result
    if last is None:
        return "waiting for first run"
    return "ok" if last.ok else "FAILED: " + "; ".join(last.errors)[:60]


def checks(node: wire.NodeOut) -> str:
    return f"{len(node.configs)} check{'' if len(node.configs) == 1 else 's'}"


def agent_rows(
    agents: Sequence[Child], nodes: Mapping[str, wire.NodeOut] | None, now: float
) -> list[str]:
    """One line per agent: its process, and what the dispatcher makes of it."""
    rows = [f"{'AGENT':<10} {'PROCESS':<38} AT THE DISPATCHER"]
    for agent in agents:
        code = agent.code
        if code is None:
            process = f"running (pid {agent.popen.pid})"
        else:
            ago = now - agent.exited_at if agent.exited_at is not None else 0.0
            process = f"{exit_text(code)}, {ago:.0f}s ago"
        node = nodes.get(agent.name) if nodes is not None else None
        if nodes is None:
            seen = "?"
        elif node is not None and code is None:
            seen = f"{checks(node)}, heartbeat {node.heartbeat_age_s:.1f}s ago"
        elif node is not None:
            seen = (
                f"still listed with {checks(node)}: heartbeat "
                f"{node.heartbeat_age_s:.1f}s ago, dropped at {EXPIRY_S:g}s"
            )
        elif code is None:
            seen = "not registered (yet)"
        elif code == 0:
            seen = "gone: it deregistered, its checks went to the others"
        else:
            seen = f"gone: expired ({EXPIRY_S:g}s without heartbeat), its checks went to the others"
        rows.append(f"{agent.name:<10} {process:<38} {seen}")
    return rows


def check_rows(state: wire.StateOut, checks: Mapping[str, wire.CheckDetailOut]) -> list[str]:
    rows = [f"{'NODE':<10} {'CHECK':<7} {'TARGET':<36} LAST RESULT"]
    for node in sorted(state.nodes, key=lambda n: n.name):
        for digest in node.configs:
            check = checks.get(digest)
            if check is not None:
                rows.append(
                    f"{node.name:<10} {check.name:<7} {what(check)[:36]:<36} {verdict(check)}"
                )
    for digest in state.dangling:
        check = checks.get(digest)
        if check is not None:
            rows.append(f"{'(none)':<10} {check.name:<7} {what(check)[:36]:<36} dangling")
    return rows


def placement(checks: Iterable[wire.CheckDetailOut]) -> dict[str, str | None]:
    return {c.digest: c.node for c in checks}


def moved(before: Mapping[str, str | None], checks: Iterable[wire.CheckDetailOut]) -> list[str]:
    """A line per check whose node changed since the last table."""
    lines = []
    for check in sorted(checks, key=lambda c: (c.name, what(c))):
        if check.digest not in before or before[check.digest] == check.node:
            continue
        was, now = before[check.digest], check.node
        name = f"{check.name} {what(check)} ({short(check.digest)})"
        if was is None:
            lines.append(f"placed: {name} on {now}")
        elif now is None:
            lines.append(f"dangling: {name}, was on {was}")
        else:
            lines.append(f"moved: {name}: {was} -> {now}")
    return lines


# ------------------------------------------------------------------------ demo


@dataclass
class Demo:
    opts: Options
    clock: Clock
    stop: asyncio.Event
    dispatcher: Child | None = None
    agents: list[Child] = field(default_factory=list)
    placed: dict[str, str | None] = field(default_factory=dict)

    def dispatcher_alive(self) -> None:
        assert self.dispatcher is not None
        code = self.dispatcher.code
        if code is not None:
            raise DemoFailed(
                f"the dispatcher {exit_text(code)}: the demo cannot go on without it. "
                f"The end of {rel(self.dispatcher.log)}:\n{self.dispatcher.tail()}"
            )

    def notice_exits(self) -> None:
        for agent in self.agents:
            if agent.exited_at is None and not agent.alive():
                agent.exited_at = self.clock.monotonic()
                code = agent.code
                assert code is not None
                print(
                    f"{time.strftime('%H:%M:%S')}  {agent.name} {exit_text(code)}; the demo "
                    f"goes on. The dispatcher gives its checks to the other agents when it "
                    f"deregisters or has missed heartbeats for {EXPIRY_S:g}s "
                    f"(log: {rel(agent.log)})"
                )

    async def pause(self, seconds: float) -> bool:
        """Waits ``seconds``, watching the children; True when asked to stop."""
        deadline = self.clock.monotonic() + seconds
        while True:
            self.dispatcher_alive()
            self.notice_exits()
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return False
            if await self.clock.wait(self.stop, timeout_s=min(POLL_S, left)):
                return True

    async def wait_ready(self) -> bool:
        """Polls /readyz until 200; False when asked to stop first."""
        started = self.clock.monotonic()
        last = "no answer yet"
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while self.clock.monotonic() - started < READY_TIMEOUT_S:
                try:
                    async with session.get(self.opts.url + "/readyz") as reply:
                        if reply.status == 200:
                            return True
                        last = f"answered {reply.status}: {(await reply.text())[:200]}"
                except aiohttp.ClientError as exc:
                    last = connection_problem(exc)
                except TimeoutError:
                    last = f"no reply within {REQUEST_TIMEOUT_S:g}s"
                if await self.pause(0.2):
                    return False
        assert self.dispatcher is not None
        raise DemoFailed(
            f"the dispatcher did not become ready within {READY_TIMEOUT_S:g}s "
            f"(GET {self.opts.url}/readyz: {last}). The end of {rel(self.dispatcher.log)}:\n"
            f"{self.dispatcher.tail()}"
        )

    def unregistered(self, state: wire.StateOut | None) -> list[str]:
        names = {n.name for n in state.nodes} if state is not None else set()
        return [a.name for a in self.agents if a.alive() and a.name not in names]

    @property
    def conf_link(self) -> Path:
        """The dispatcher's config directory: a link to the checks (on a fresh data dir,
        to an empty directory until the agents have registered)."""
        return self.opts.run_dir / "conf.d"

    @property
    def data_dir(self) -> Path:
        return self.opts.run_dir / "data"

    @property
    def fresh(self) -> bool:
        """Whether the dispatcher starts on a data dir with no state in it."""
        return not (self.data_dir / DATA_FILE).exists()

    async def wait_placed(self, client: AdminClient) -> None:
        """Until every running agent is registered, then links the dispatcher's config
        directory to the checks (when it pointed at an empty one) and waits until it has
        read and placed them, so that the first table shows where they run. Bounded:
        REGISTER_TIMEOUT_S for the agents (then the checks go to those registered),
        PLACE_WAIT_S for the placing."""
        deadline = self.clock.monotonic() + REGISTER_TIMEOUT_S
        state: wire.StateOut | None = None
        while self.clock.monotonic() < deadline:
            with contextlib.suppress(AdminError):
                state = (await client.state()).model
            if state is not None and not self.unregistered(state):
                break
            if await self.pause(0.2):
                return
        missing = self.unregistered(state)
        if missing:
            print(f"not registered within {REGISTER_TIMEOUT_S:g}s: {', '.join(missing)}")
        point(self.conf_link, self.opts.config_dir)
        deadline = self.clock.monotonic() + PLACE_WAIT_S + WARMUP_S
        while self.clock.monotonic() < deadline:
            with contextlib.suppress(AdminError):
                state = (await client.state()).model
                totals = state.totals
                if not state.warmup and totals.checks > 0 and totals.dangling == 0:
                    return
            if await self.pause(0.2):
                return

    def start_dispatcher(self) -> None:
        opts = self.opts
        if self.fresh:
            empty = opts.run_dir / "conf.empty"
            empty.mkdir(exist_ok=True)
            point(self.conf_link, empty)
        else:
            point(self.conf_link, opts.config_dir)
        self.dispatcher = start("dispatcher", [
            str(BIN / "clusterchecks-dispatcher"), "--config-dir", str(self.conf_link),
            "--store", "sqlite", "--data-dir", str(self.data_dir),
            "--port", str(opts.port), "--heartbeat-interval", f"{HEARTBEAT_S:g}",
            "--node-expiration-timeout", f"{EXPIRY_S:g}", "--identity", "demo",
            "--warmup-duration", f"{WARMUP_S:g}",
        ], opts)  # fmt: skip

    def start_agents(self) -> None:
        opts = self.opts
        for (name, labels), port in zip(AGENTS, opts.agent_ports, strict=True):
            self.agents.append(start(name, [
                str(BIN / "clusterchecks-agent"), "--name", name, "--port", str(port),
                "--dispatcher-url", opts.url, "--labels", labels,
                "--allow-exec", str(ROOT / "examples" / "checks"),
                "--allow-exec", "/bin", "--allow-exec", "/usr/bin",
            ], opts))  # fmt: skip

    def banner(self, ready_after: float) -> None:
        opts, url = self.opts, self.opts.url
        admin = rel(BIN / "clusterchecks-dispatcher")
        if opts.port != DEFAULT_PORT:
            admin += f" --url {url}"
        agents = ", ".join(f"{a.name} (pid {a.popen.pid})" for a in self.agents)
        ports = f"{min(opts.agent_ports)}-{max(opts.agent_ports)}"
        print(
            f"dispatcher  {url}  ready after {ready_after:.1f}s   (state: {url}{wire.API_PREFIX})"
        )
        print(f"dashboard   {url}/ui/   (open it in a browser: live, no token on loopback)")
        print(f"agents      {agents}")
        print(f"status page {url}{wire.API_PREFIX}/results")
        print(f"metrics     {url}/metrics   agents: 127.0.0.1:{ports}/metrics")
        print(f"admin       {admin} state   (also checks, results, rebalance --dry-run, ...)")
        print(
            f"try         kill -9 $(cat {rel(opts.run_dir / 'agent-a.pid')})   its checks "
            f"move to the others after {EXPIRY_S:g}s without heartbeat"
        )
        print(f"logs        {rel(opts.run_dir)}/*.log   Ctrl-C stops everything")

    async def show(self, client: AdminClient) -> None:
        now = self.clock.monotonic()
        stamp = time.strftime("%H:%M:%S")
        try:
            state = (await client.state()).model
            listing = (await client.checks()).model.checks
        except AdminError as exc:
            print(f"\n{stamp}  the dispatcher is not answering: {exc.message}")
            print("\n".join(agent_rows(self.agents, None, now)))
            return
        totals = state.totals
        print(
            f"\n{stamp}  leader {state.leader or 'none'}, {totals.nodes} agents registered, "
            f"{totals.checks} checks ({totals.dispatched} running, {totals.dangling} dangling)"
        )
        print("\n".join(agent_rows(self.agents, {n.name: n for n in state.nodes}, now)))
        print()
        print("\n".join(check_rows(state, {c.digest: c for c in listing})))
        for line in moved(self.placed, listing):
            print(line)
        self.placed = placement(listing)

    async def run(self) -> None:
        opts = self.opts
        self.start_dispatcher()
        started = self.clock.monotonic()
        if not await self.wait_ready():
            return
        ready_after = self.clock.monotonic() - started
        self.start_agents()
        self.banner(ready_after)
        target_ = Target(url=opts.url, token=None, timeout_s=REQUEST_TIMEOUT_S)
        async with connect(target_) as client:
            await self.wait_placed(client)
            while not self.stop.is_set():
                await self.show(client)
                if await self.pause(opts.every_s):
                    break

    async def shutdown(self) -> None:
        # The dispatcher first: agents that left it would take their checks off its
        # store, and the next run would start with every check dangling rather than on
        # the agent that ran it. Each agent's final status then finds no dispatcher.
        if self.dispatcher is not None:
            await stop_group([self.dispatcher], self.clock)
        await stop_group(self.agents, self.clock)
        for child in [*self.agents, *([self.dispatcher] if self.dispatcher else [])]:
            child.pid_file.unlink(missing_ok=True)


def rel(path: Path) -> str:
    """A path as the reader would type it from the project directory."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


async def main(argv: Sequence[str]) -> int:
    opts = parse(argv)
    opts.run_dir.mkdir(parents=True, exist_ok=True)
    clock = SystemClock()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # An earlier run's dispatcher would answer /readyz in place of the new one, and its
    # agents hold the ports: refuse to start rather than show a confusing mix.
    stale = leftovers(opts.run_dir)
    if stale:
        print(
            f"error: processes of an earlier run still live: {', '.join(stale)}; "
            f"stop them with: kill $(cat {rel(opts.run_dir)}/*.pid)",
            file=sys.stderr,
        )
        return 1
    taken = busy_ports(opts)
    if taken:
        print(
            f"error: {', '.join(taken)} in use: is another `make run` running? "
            "(scripts/demo.py --help: other ports)",
            file=sys.stderr,
        )
        return 1
    try:
        runner = await target(opts.target_port, clock)
    except OSError as exc:
        print(
            f"error: cannot listen on 127.0.0.1:{opts.target_port} for the checks' target: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    demo = Demo(opts, clock, stop)
    code = 0
    try:
        await demo.run()
    except DemoFailed as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        code = 1
    finally:
        await demo.shutdown()
        await runner.cleanup()
        print("stopped" if code == 0 else "stopped (the dispatcher failed)")
    return code


if __name__ == "__main__":
    # Tables go to a pipe too (tests, `| tee`): one line at a time.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.exit(asyncio.run(main(sys.argv[1:])))
