"""Shared fixtures: a real redis-server, the Kubernetes API double and its client.
Every async test fails if it leaves asyncio tasks behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient

from tests.k8s_api import ALL_RESOURCES, FakeKubernetesApi
from tests.processes import free_port
from tests.redis_server import RedisServer


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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, stopped after the test."""
    server = RedisServer(port=free_port(), workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def k8s_api() -> AsyncIterator[FakeKubernetesApi]:
    """The Kubernetes API double serving ``ALL_RESOURCES``."""
    api = FakeKubernetesApi(ALL_RESOURCES)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
async def k8s_client(k8s_api: FakeKubernetesApi) -> AsyncIterator[ApiClient]:
    """A kubernetes-asyncio client for the double."""
    async with k8s_api.api_client() as client:
        yield client
