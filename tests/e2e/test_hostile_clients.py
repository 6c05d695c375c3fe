"""End to end: hostile and broken clients against a real ``clusterchecks-dispatcher``
process, over real sockets (issue 13, point 6).

Before the connection layer, idle and slow sockets were never closed: enough of them
used every file descriptor, ``/healthz`` stopped answering and asyncio logged a
traceback for each failed accept. Timeouts here are seconds (flags), and every timing
assertion is a bound of seconds derived from them, with room for a busy machine.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from dispatcher.common.fdlimits import LISTEN_BACKLOG
from tests.e2e.harness import API, DispatcherProcess, call, wait_until
from tests.processes import Proc, dispatcher_argv, free_port, wait_http_ok

pytestmark = pytest.mark.e2e

HEADER_S = 2.0
BODY_S = 2.0
IDLE_S = 4.0
SLACK_S = 5.0
"""Room for a busy machine on top of a timeout: a timer fires late, never early."""
DRIP_S = 0.2
"""A byte per DRIP_S: a client far too slow to finish in any timeout here."""


# ------------------------------------------------------------------ helpers


def limited(argv: list[str], nofile: tuple[int, int] | None) -> list[str]:
    """``argv`` run with RLIMIT_NOFILE set to (soft, hard): a small Python step sets the
    limit and replaces itself with the command (no preexec_fn in a threaded parent)."""
    if nofile is None:
        return argv
    script = (
        "import os, resource, sys; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
        "os.execv(sys.argv[3], sys.argv[3:])"
    )
    return [sys.executable, "-c", script, str(nofile[0]), str(nofile[1]), *argv]


Start = Callable[..., DispatcherProcess]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    procs: list[Proc] = []

    def run(
        *extra: str, nofile: tuple[int, int] | None = None, env: dict[str, str] | None = None
    ) -> DispatcherProcess:
        port = free_port()
        proc = Proc(
            f"dispatcher-{port}",
            limited(dispatcher_argv(port, *extra), nofile),
            tmp_path / f"dispatcher-{port}.log",
            dict(env or {}),
        )
        procs.append(proc)
        proc.start()
        dispatcher = DispatcherProcess(proc, port, tmp_path)
        wait_http_ok(dispatcher.url("/healthz"), timeout_s=20, proc=proc)
        return dispatcher

    yield run
    for proc in procs:
        proc.stop(timeout_s=10)


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DispatcherProcess]:
    """One dispatcher with short timeouts (the idle one through its variable)."""
    port = free_port()
    log_dir = tmp_path_factory.mktemp("short")
    proc = Proc(
        f"dispatcher-{port}",
        dispatcher_argv(port, "--header-timeout", str(HEADER_S), "--body-timeout", str(BODY_S)),
        log_dir / "dispatcher.log",
        {"CLUSTERCHECKS_IDLE_TIMEOUT": str(IDLE_S)},
    )
    proc.start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout_s=20, proc=proc)
        yield DispatcherProcess(proc, port, log_dir)
    finally:
        proc.stop(timeout_s=10)


def connect(port: int, timeout_s: float = 2.0) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def open_idle(port: int, count: int) -> list[socket.socket]:
    """Up to ``count`` connections that send nothing (a refused or stuck connect is
    skipped: past the listen backlog the kernel drops handshakes)."""
    socks = []
    for _ in range(count):
        sock = connect(port, timeout_s=1.0)
        if sock is not None:
            socks.append(sock)
    return socks


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed its end (EOF, or reset)."""
    try:
        ready, _, _ = select.select([sock], [], [], 0)
        if not ready:
            return False
        return sock.recv(65536, socket.MSG_PEEK) == b"" or _drain_to_eof(sock)
    except OSError:
        return True


def _drain_to_eof(sock: socket.socket) -> bool:
    """A response came before the close (408, 503): read it; closed if EOF follows."""
    sock.setblocking(False)
    try:
        while chunk := sock.recv(65536):
            del chunk
        return True
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def healthz(d: DispatcherProcess, timeout_s: float = 3.0) -> int | None:
    try:
        return call("GET", d.url("/healthz"), timeout_s=timeout_s).status
    except OSError:
        return None


def read_response(sock: socket.socket, timeout_s: float) -> tuple[int, dict[str, Any]]:
    """Reads until the server closes; returns (status, JSON body)."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), data
    return int(head.split()[1]), json.loads(body)


def drip(sock: socket.socket, data: bytes) -> tuple[bytes, float]:
    """Sends ``data`` a byte per DRIP_S until the server answers or closes; returns what
    it sent back and the seconds since the call."""
    started = time.monotonic()
    received = b""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break  # closed on us: what it said is in the receive buffer
        ready, _, _ = select.select([sock], [], [], DRIP_S)
        if ready:
            break
    sock.settimeout(SLACK_S)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received, time.monotonic() - started


def log_events(d: DispatcherProcess, event: str) -> list[dict[str, Any]]:
    return [r for r in d.log_records() if r.get("event") == event]


# ---------------------------------------------------- idle sockets and fds


def test_idle_sockets_past_the_cap_leave_healthz_answering_and_are_closed_in_time(
    start: Start,
) -> None:
    cap = 20
    d = start("--max-connections", str(cap), "--header-timeout", str(HEADER_S))
    socks = open_idle(d.port, 100)
    try:
        assert len(socks) == 100
        assert healthz(d) == 200, d.tail()
        # Each connection past the cap closed the one idle the longest: all but the
        # newest ones are closed already (before /healthz was answered).
        early = sum(closed_by_server(s) for s in socks)
        assert early >= 100 - cap, f"{early} closed\n{d.tail()}"
        # The rest never sent a byte: closed by the header timeout.
        wait_until(
            lambda: all(closed_by_server(s) for s in socks),
            timeout_s=HEADER_S + SLACK_S,
            what="every idle socket closed by the server",
            context=d.tail,
        )
    finally:
        close_all(socks)
    [at_limit, *_] = log_events(d, "connection_limit_reached")
    assert at_limit["max_connections"] == cap
    assert d.proc.alive()


def test_the_default_cap_fits_a_low_file_descriptor_limit(start: Start) -> None:
    """1,024 open files, not raisable: the cap is derived from it and leaves room for
    four bursts of accepts (a burst per loop turn until the evicted sockets close), so
    1,500 idle sockets never exhaust the descriptors and /healthz answers at once."""
    d = start(nofile=(1024, 1024))
    [limits] = log_events(d, "connection_limits")
    assert limits["fd_limit"] == 1024
    assert limits["max_connections"] + 4 * LISTEN_BACKLOG + 64 <= 1024
    socks = open_idle(d.port, 1500)
    try:
        assert healthz(d) == 200, d.tail()
    finally:
        close_all(socks)
    assert log_events(d, "accept_failed") == [], d.tail()
    assert log_events(d, "connection_limit_reached"), d.tail()


def test_the_soft_file_descriptor_limit_is_raised_to_the_hard_one_at_start(
    start: Start,
) -> None:
    d = start(nofile=(256, 2048))
    [fd] = log_events(d, "fd_limit")
    assert (fd["before"], fd["soft"], fd["hard"]) == (256, 2048, 2048), fd
    socks = open_idle(d.port, 400)  # more than the soft limit it started with
    try:
        assert healthz(d) == 200, d.tail()
        assert sum(closed_by_server(s) for s in socks) == 0, "no need to close any"
    finally:
        close_all(socks)
    assert log_events(d, "accept_failed") == [], d.tail()


def test_running_out_of_file_descriptors_is_survived_and_logged_once_per_interval(
    start: Start,
) -> None:
    """A cap set above what 128 open files allow: accepts fail with EMFILE. The
    process lives on, closes the idle sockets after the header timeout, answers
    /healthz again, and logs the failures once per interval (not a traceback each)."""
    interval_s = 60.0
    d = start(
        "--max-connections", "1000",
        "--header-timeout", str(HEADER_S),
        "--accept-error-log-interval", str(interval_s),
        nofile=(128, 128),
    )  # fmt: skip
    assert log_events(d, "max_connections_above_fd_limit"), d.tail()
    started = time.monotonic()
    socks = open_idle(d.port, 300)
    try:
        wait_until(
            lambda: log_events(d, "accept_failed") or None,
            timeout_s=SLACK_S,
            what="accepts failing with EMFILE",
            context=d.tail,
        )
        wait_until(
            lambda: healthz(d) == 200 or None,
            timeout_s=6 * HEADER_S + 4 * SLACK_S,
            what="/healthz answers again",
            context=d.tail,
        )
    finally:
        close_all(socks)
    elapsed = time.monotonic() - started
    failed = log_events(d, "accept_failed")
    assert 1 <= len(failed) <= 1 + elapsed / interval_s, failed
    assert failed[0]["error"] == "EMFILE", failed
    output = d.proc.output()
    assert "Traceback" not in output, d.tail()
    assert "out of system resource\n" not in output, "asyncio's own per-attempt log"
    assert d.proc.alive()


# ------------------------------------------------------------ slow clients


def test_a_head_sent_a_byte_at_a_time_is_cut_off_after_the_header_timeout(
    short: DispatcherProcess,
) -> None:
    sock = connect(short.port)
    assert sock is not None
    with sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: dispatcher\r\nX-Slow: " + b"a" * 200
        received, took = drip(sock, head)
    assert received.startswith(b"HTTP/1.1 408"), received
    assert json.loads(received.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    assert HEADER_S - 0.5 <= took <= HEADER_S + SLACK_S, took
    assert healthz(short) == 200


def test_a_body_sent_a_byte_at_a_time_is_cut_off_after_the_body_timeout(
    short: DispatcherProcess,
) -> None:
    sock = connect(short.port)
    assert sock is not None
    with sock:
        sock.sendall(
            f"POST {API}/status/slow-node HTTP/1.1\r\nHost: dispatcher\r\n"
            "Content-Type: application/json\r\nContent-Length: 300\r\n\r\n".encode()
        )
        received, took = drip(sock, b'{"last_change": -1' + b" " * 280 + b"}")
    assert received.startswith(b"HTTP/1.1 408"), received
    assert json.loads(received.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    assert BODY_S - 0.5 <= took <= BODY_S + SLACK_S, took
    nodes = short.get(API).body["nodes"]
    assert "slow-node" not in [n["name"] for n in nodes], "the handler never ran its change"


def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(
    short: DispatcherProcess,
) -> None:
    sock = connect(short.port)
    assert sock is not None
    with sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: dispatcher\r\n\r\n")
        sock.settimeout(SLACK_S)
        assert sock.recv(12) == b"HTTP/1.1 200"
        answered = time.monotonic()
        _, took = wait_until(
            lambda: closed_by_server(sock) or None,
            timeout_s=IDLE_S + SLACK_S,
            what="the idle connection closed",
            context=short.tail,
            interval_s=0.1,
        )
    idle_for = time.monotonic() - answered
    # Longer than the header timeout: it is the idle timeout that closed it.
    assert HEADER_S + 1 <= idle_for <= IDLE_S + SLACK_S, (idle_for, took)


def test_a_long_poll_outlives_the_header_and_idle_timeouts(short: DispatcherProcess) -> None:
    node = "long-poller"
    assert call("POST", short.url(f"{API}/status/{node}"), {"last_change": 0}).status == 200
    configs = short.get(f"{API}/configs/{node}")
    assert configs.status == 200, configs
    wait_s = HEADER_S + IDLE_S
    started = time.monotonic()
    reply = short.get(
        f"{API}/configs/{node}?since={configs.body['last_change']}&wait_s={wait_s:g}",
        timeout_s=wait_s + SLACK_S,
    )
    took = time.monotonic() - started
    assert reply.status == 200, reply
    assert took >= wait_s - 1, "it waited its wait_s, not cut by a timeout"


def test_malformed_http_is_answered_with_the_json_error_body(short: DispatcherProcess) -> None:
    for request, status, code in (
        (b"GET /healthz HTTP/1.1\r\nHost: d\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431,
         "headers_too_large"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "invalid_request"),
    ):  # fmt: skip
        sock = connect(short.port)
        assert sock is not None
        with sock:
            sock.sendall(request)
            got_status, body = read_response(sock, timeout_s=SLACK_S)
        assert (got_status, body["error"]["code"]) == (status, code), body


# ------------------------------------------------------- clients that never read


def open_fds(d: DispatcherProcess) -> int:
    return len(list(Path(f"/proc/{d.proc.pid}/fd").iterdir()))


def settled_fds(d: DispatcherProcess) -> int:
    """The open fds once the count holds still (a probe's connection just closed by the
    client may not be closed by the server yet)."""

    def same_twice() -> int | None:
        first = open_fds(d)
        time.sleep(0.2)
        return first if open_fds(d) == first else None

    return wait_until(same_twice, timeout_s=SLACK_S, what="a settled fd count")[0]


def non_reader(port: int, path: str, count: int) -> socket.socket:
    """A client with a tiny receive buffer that pipelines ``count`` GETs of ``path`` and
    never reads a reply: the replies fill its buffer, the server's socket buffer, then
    the server's transport buffer (past its high-water mark writing pauses)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.settimeout(SLACK_S)
    sock.connect(("127.0.0.1", port))
    request = f"GET {path} HTTP/1.1\r\nHost: dispatcher\r\n\r\n".encode()
    sock.setblocking(False)
    data = request * count
    # Sends what the server takes without blocking: once it stops reading (its replies
    # are stuck), the rest does not matter.
    deadline = time.monotonic() + SLACK_S
    while data and time.monotonic() < deadline:
        try:
            data = data[sock.send(data) :]
        except BlockingIOError:
            time.sleep(0.01)
    return sock


def reset_or_eof(sock: socket.socket) -> bool:
    """True once the server's end is gone: a peek past the unread replies meets EOF or a
    reset (an aborted transport)."""
    try:
        sock.setblocking(False)
        while chunk := sock.recv(1 << 20):
            del chunk
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.parametrize("path", ["/metrics", "/healthz"])
def test_a_client_that_never_reads_its_replies_is_aborted_and_its_fd_released(
    start: Start, path: str
) -> None:
    """Before: the handler waited for the write buffer to drain for ever (the connection
    stayed busy: never timed out nor evicted), and its socket stayed open. The bound is
    the write stall (the body timeout), plus the room of a busy machine."""
    d = start("--body-timeout", str(BODY_S), "--idle-timeout", "300")
    assert healthz(d) == 200
    before = settled_fds(d)
    socks = [non_reader(d.port, path, 20_000) for _ in range(3)]
    try:
        during, _ = wait_until(
            lambda: open_fds(d) >= before + len(socks) and open_fds(d),
            timeout_s=SLACK_S,
            what="the clients accepted",
            context=d.tail,
        )
        started = time.monotonic()
        wait_until(
            lambda: open_fds(d) <= before or None,
            timeout_s=BODY_S + 2 * SLACK_S,
            what=f"the fds of clients that never read released (before {before})",
            context=d.tail,
            interval_s=0.2,
        )
        took = time.monotonic() - started
        assert took <= BODY_S + 2 * SLACK_S, (before, during, took)
        assert all(reset_or_eof(s) for s in socks)
    finally:
        close_all(socks)
    assert [e["reason"] for e in log_events(d, "write_stalled")] != []
    assert healthz(d) == 200
    assert d.proc.alive()


def test_clients_that_never_read_do_not_keep_healthz_from_answering(start: Start) -> None:
    """At a small cap, connections stuck writing replies are busy (never evicted): each
    new connection would get 503 until they are aborted after the write stall."""
    cap = 4
    d = start("--max-connections", str(cap), "--body-timeout", str(BODY_S))
    before = settled_fds(d)
    socks = [non_reader(d.port, "/metrics", 20_000) for _ in range(cap)]
    try:
        wait_until(
            lambda: open_fds(d) >= before + cap or None,
            timeout_s=SLACK_S,
            what="the clients accepted",
            context=d.tail,
        )
        wait_until(
            lambda: healthz(d) == 200 or None,
            timeout_s=BODY_S + 2 * SLACK_S,
            what="/healthz answers beside clients that never read",
            context=d.tail,
            interval_s=0.2,
        )
    finally:
        close_all(socks)
    assert d.proc.alive()
