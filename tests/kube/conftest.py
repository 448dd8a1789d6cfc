"""Fixtures for the Kubernetes tests: a fake API server and a metadata source connected to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from obi.backoff import Backoff
from obi.kube.client import KubeConfigSource
from obi.kube.informers import InformerRetry, KubeMetadataSource
from tests.kube.fake_apiserver import FakeApiServer

# Short waits so every test stays within a few seconds.
FAST_RETRY = InformerRetry(Backoff(initial_s=0.05, max_s=0.2, jitter=0.5), forbidden_s=0.3)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until predicate() holds; fail the test after timeout seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def api_server() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def kubeconfig(api_server: FakeApiServer, tmp_path: Path) -> KubeConfigSource:
    return KubeConfigSource("kubeconfig", api_server.write_kubeconfig(str(tmp_path / "kubeconfig")))


class SourceRunner:
    """Starts KubeMetadataSources as tasks and stops them at teardown."""

    def __init__(self) -> None:
        self.running: list[tuple[KubeMetadataSource, asyncio.Task[None]]] = []

    def start(self, config: KubeConfigSource, node_name: str | None = None) -> KubeMetadataSource:
        source = KubeMetadataSource(config, node_name, retry=FAST_RETRY, watch_timeout_s=30, read_timeout_s=5)
        self.running.append((source, asyncio.create_task(source.run())))
        return source

    async def stop_all(self) -> None:
        for source, task in self.running:
            await source.stop()
            await asyncio.wait_for(task, 5)


@pytest.fixture
async def sources() -> AsyncIterator[SourceRunner]:
    runner = SourceRunner()
    yield runner
    await runner.stop_all()
