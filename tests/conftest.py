"""Shared fixtures: a private Redis server for the whole session, a World per test.

Tests never touch the Redis that may run on the machine already: the session starts its own
``redis-server`` on a free port in a temporary directory, and every test uses a unique key prefix
so tests never see each other's keys.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.support import RedisServer, WorkerProcess
from worker import set_world
from world_redis import RedisWorld


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the test session."""
    server = RedisServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def world(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisWorld]:
    """A RedisWorld on the private server with a key prefix of its own, set as the process World."""
    w = RedisWorld.from_url(redis_server.url, prefix=prefix)
    # the prefix's partition count is stored at first use: done here, so that tests comparing
    # key snapshots see only the keys their own commands write
    await w.check_config()
    set_world(w)
    try:
        yield w
    finally:
        set_world(None)
        await w.close()


@pytest.fixture
async def world_with_partitions(
    redis_server: RedisServer, prefix: str
) -> AsyncIterator[Callable[[int], RedisWorld]]:
    """Build RedisWorlds with a given partition count on the test's prefix; all closed after."""
    made: list[RedisWorld] = []

    def make(partitions: int) -> RedisWorld:
        made.append(RedisWorld.from_url(redis_server.url, prefix=prefix, partitions=partitions))
        return made[-1]

    yield make
    for w in made:
        await w.close()


@pytest.fixture
def worker_env(redis_server: RedisServer, prefix: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WORKFLOW_REDIS_URL=redis_server.url,
        WORKFLOW_PREFIX=prefix,
        WORKFLOW_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def start_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    """Start `wf worker MODULE...` processes as a user would (``queues="default,gpu"`` serves
    those queues, ``deployment="v2"`` sets the deployment id); all are stopped after the test."""
    procs: list[WorkerProcess] = []

    def start(
        *modules: str,
        concurrency: int = 50,
        queues: str | None = None,
        deployment: str | None = None,
        **env: str,
    ) -> WorkerProcess:
        if queues is not None:  # the worker's --queues, through its environment default
            env = {**env, "WORKFLOW_QUEUES": queues}
        if deployment is not None:  # its --deployment, the same way
            env = {**env, "WORKFLOW_DEPLOYMENT_ID": deployment}
        proc = WorkerProcess.start(
            list(modules), {**worker_env, **env}, tmp_path / f"worker{len(procs)}.log", concurrency
        )
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.stop()
