"""``exec``: an external program, Kuberhealthy-compatible.

The program gets the reporting URL, a run id and its deadline in its environment (both
the CLUSTERCHECKS_ and the KH_ names) and may POST its verdict; otherwise its exit code
decides. Only programs under an ``--allow-exec`` prefix may run; a program still
running at its deadline is killed with its whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from pydantic import Field

from node_agent.checks import (
    InstanceError,
    InstanceModel,
    Outcome,
    RunContext,
    validate_instance,
)
from node_agent.reports import Report, RunRegistry

STDERR_TAIL_LINES = 5
OUTPUT_KEEP_BYTES = 64 * 1024
"""Of each stream only the last 64 KiB is kept: a chatty program cannot fill memory."""


class ExecInstance(InstanceModel):
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)


class ParsedExec:
    def __init__(self, program: Path, args: list[str], env: dict[str, str]) -> None:
        self.program = program
        self.args = args
        self.env = env


class ExecCheck:
    def __init__(self, *, allow: tuple[Path, ...], registry: RunRegistry, report_url: str) -> None:
        self._allow = tuple(Path(os.path.realpath(p)) for p in allow)
        self._registry = registry
        self._report_url = report_url

    def parse(self, instance: dict[str, Any], init_config: dict[str, Any]) -> ParsedExec:
        parsed: ExecInstance = validate_instance(ExecInstance, instance)
        program_name = parsed.command[0]
        found = program_name if "/" in program_name else shutil.which(program_name)
        if found is None:
            raise InstanceError(f"program {program_name!r} not found on PATH")
        program = Path(os.path.realpath(found))
        if not any(program.is_relative_to(prefix) for prefix in self._allow):
            allowed = ", ".join(str(p) for p in self._allow) or "none"
            raise InstanceError(
                f"exec of {program} is not allowed: not under an --allow-exec prefix "
                f"(allowed: {allowed})"
            )
        if not os.access(program, os.X_OK):
            raise InstanceError(f"{program} is not an executable file")
        return ParsedExec(program, parsed.command[1:], parsed.env)

    async def run(self, instance: ParsedExec, context: RunContext) -> Outcome:
        reported = self._registry.open(
            context.run_id, digest=context.digest, deadline_unix_s=context.deadline_unix_s
        )
        deadline = str(int(context.deadline_unix_s))
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            **instance.env,
            "CLUSTERCHECKS_REPORTING_URL": self._report_url,
            "CLUSTERCHECKS_RUN_ID": context.run_id,
            "CLUSTERCHECKS_RUN_DEADLINE": deadline,
            "CLUSTERCHECKS_CHECK_NAME": context.check_name,
            "KH_REPORTING_URL": self._report_url,
            "KH_RUN_UUID": context.run_id,
            "KH_CHECK_RUN_DEADLINE": deadline,
        }
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                str(instance.program),
                *instance.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        )
        try:
            # Shielded: a run stopped (or timed out) while its program starts would have
            # asyncio kill the program alone, leaving its children running.
            process = await asyncio.shield(spawn)
        except OSError as exc:
            self._registry.close(context.run_id)
            return Outcome(errors=[f"exec {instance.program}: {exc.strerror or exc}"])
        except BaseException:
            self._registry.close(context.run_id)
            spawn.add_done_callback(_kill_group_once_started)
            raise
        try:
            assert process.stdout is not None
            assert process.stderr is not None
            stdout, stderr, _ = await asyncio.gather(
                _tail(process.stdout), _tail(process.stderr), process.wait()
            )
        except BaseException:
            # Timed out or stopped: the whole process group goes, not just the leader.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.shield(process.wait())
            raise
        finally:
            report = _take(reported)
            self._registry.close(context.run_id)
        output = stdout.decode(errors="replace")[-1024:]
        if report is not None:
            return Outcome(errors=[] if report.ok else list(report.errors), output=output)
        if process.returncode == 0:
            return Outcome(errors=[], output=output)
        tail = stderr.decode(errors="replace").strip().splitlines()[-STDERR_TAIL_LINES:]
        detail = " | ".join(tail) if tail else "no output on stderr"
        return Outcome(
            errors=[f"{instance.program.name} exited with {process.returncode}: {detail}"],
            output=output,
        )


async def _tail(stream: asyncio.StreamReader) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk
        if len(kept) > 2 * OUTPUT_KEEP_BYTES:
            del kept[:-OUTPUT_KEEP_BYTES]
    return bytes(kept[-OUTPUT_KEEP_BYTES:])


def _kill_group_once_started(spawn: asyncio.Future[asyncio.subprocess.Process]) -> None:
    """Kills the whole process group of a program started for a run that is over."""
    if spawn.cancelled() or spawn.exception() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(spawn.result().pid, signal.SIGKILL)


def _take(future: asyncio.Future[Report]) -> Report | None:
    if future.done() and not future.cancelled():
        return future.result()
    return None
