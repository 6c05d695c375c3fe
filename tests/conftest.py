"""Shared fixtures. Every async test fails if it leaves asyncio tasks behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and asyncio.iscoroutinefunction(item.obj):
            # First in the list: set up first, torn down last, after the other fixtures
            # (servers, clients) have cleaned up what they own.
            item.fixturenames.insert(0, "no_leftover_tasks")


@pytest.fixture
async def no_leftover_tasks() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    for task in leftover:
        task.cancel()
    assert not leftover, f"test left tasks running: {[t.get_name() for t in leftover]}"
