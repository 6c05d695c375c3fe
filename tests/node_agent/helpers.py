"""Small helpers shared by the node agent tests."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable


async def eventually(check: Callable[[], bool], *, within_s: float = 2.0) -> None:
    """Waits until ``check()`` holds; fails the test after ``within_s``."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within_s} s")
        await asyncio.sleep(0.01)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
