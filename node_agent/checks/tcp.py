"""``tcp``: a connection opens; optionally ``expect`` is read after ``send``."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from pydantic import Field

from node_agent.checks import InstanceModel, Outcome, RunContext, validate_instance

MAX_READ_BYTES = 64 * 1024


class TcpInstance(InstanceModel):
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    send: str | None = None
    expect: str | None = None


class TcpCheck:
    def parse(self, instance: dict[str, Any], init_config: dict[str, Any]) -> TcpInstance:
        parsed: TcpInstance = validate_instance(TcpInstance, instance)
        return parsed

    async def run(self, instance: TcpInstance, context: RunContext) -> Outcome:
        label = f"tcp {instance.host}:{instance.port}"
        try:
            reader, writer = await asyncio.open_connection(instance.host, instance.port)
        except OSError as exc:
            reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
            return Outcome(errors=[f"{label}: {reason}"])
        try:
            if instance.send is not None:
                writer.write(instance.send.encode())
                await writer.drain()
            if instance.expect is None:
                return Outcome(errors=[], output="connected")
            received = b""
            wanted = instance.expect.encode()
            while wanted not in received and len(received) < MAX_READ_BYTES:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                received += chunk
            if wanted in received:
                return Outcome(errors=[], output=received[:512].decode(errors="replace"))
            shown = received[:200].decode(errors="replace")
            return Outcome(errors=[f"{label}: expected {instance.expect!r}, got {shown!r}"])
        except OSError as exc:
            return Outcome(errors=[f"{label}: {exc.strerror or exc}"])
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
