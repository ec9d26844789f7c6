"""Replica acknowledgement (``replica_acks`` / ``WORKFLOW_REPLICA_ACKS``) against real Redis
replication: a master and one replica, each a ``redis-server`` of the test's own, the replica
paused with SIGSTOP to make it miss its acknowledgements. Each test runs on both single-server
paths of a World: the raw "lean" connections (``LeanRedis.execute_together``) and redis-py's
pipeline (``WORKFLOW_REDIS_LEAN=0``, ``RedisCore._pipelined_wait``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.workflows import add_ten
from tests.integration.helpers import new_run_id
from tests.support import (
    RedisServer,
    WorkerProcess,
    eventually,
    wait_for,
    worker_environment,
)
from worker import ReplicaAckTimeoutError, start
from worker.world import WorldUnavailableError
from world_redis import RedisWorld

TIMEOUT_MS = 300  # the acknowledgement timeout of the tests that expect too few

# what the ``worlds`` fixture gives: make a World on the master (or ``on=`` another server)
MakeWorld = Callable[..., RedisWorld]


@dataclass
class Replicated:
    """A master and its one replica."""

    master: RedisServer
    replica: RedisServer

    def info(self, server: RedisServer, section: str) -> dict[str, str]:
        """``INFO section`` of one server, as a dict of text."""
        client = server.client(decode_responses=True, socket_timeout=5)
        try:
            return {k: str(v) for k, v in client.info(section).items()}
        finally:
            client.close()

    def linked(self) -> bool:
        return (
            self.info(self.master, "replication").get("connected_slaves") == "1"
            and self.info(self.replica, "replication").get("master_link_status") == "up"
        )

    def acknowledging(self) -> bool:
        """A write on the master is acknowledged by the replica (WAIT 1 answers 1). Needed on top
        of ``linked``: the master counts a new replica in WAIT only once it is "online", after
        the replica's first REPLCONF ACK, which may come up to a second after the link is up."""
        client = self.master.client(decode_responses=True, socket_timeout=5)
        try:
            client.set("replica-acks-test:probe", time.monotonic())
            return int(client.execute_command("WAIT", 1, 100)) == 1
        finally:
            client.close()

    def reset_stats(self) -> None:
        client = self.master.client(socket_timeout=5)
        try:
            client.config_resetstat()
        finally:
            client.close()

    def wait_calls(self) -> int:
        """How many WAIT commands the master has served."""
        client = self.master.client(decode_responses=True, socket_timeout=5)
        try:
            stats = client.info("commandstats").get("cmdstat_wait")
        finally:
            client.close()
        return 0 if stats is None else int(stats["calls"])

    @contextlib.contextmanager
    def replica_paused(self) -> Iterator[None]:
        """The replica stopped (SIGSTOP) for the block: it acknowledges nothing, and its link
        stays open; continued (SIGCONT) after, whatever happens."""
        self.replica.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.replica.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def replicated() -> Iterator[Replicated]:
    """A master and a replica on free ports, each in a temp dir of its own, linked."""
    # the first full sync of an empty master at once (Redis 7 waits 5 s for more replicas)
    master = RedisServer.start("--repl-diskless-sync-delay", "0")
    replica = None
    try:
        replica = RedisServer.start("--replicaof", "127.0.0.1", str(master.port))
        pair = Replicated(master, replica)
        wait_for(pair.linked, 15, what="the replica linked to its master")
        wait_for(pair.acknowledging, 15, what="the replica acknowledging the master's writes")
        pair.reset_stats()  # wait_calls() counts the test's WAITs alone
        yield pair
    finally:
        for server in (replica, master):
            if server is not None:
                with contextlib.suppress(ProcessLookupError):
                    server.proc.send_signal(signal.SIGCONT)  # a stopped one cannot terminate
                server.stop()
                shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(params=["lean", "pipeline"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which single-server path the test's Worlds take (set before any World is made)."""
    monkeypatch.setenv("WORKFLOW_REDIS_LEAN", "1" if request.param == "lean" else "0")
    # the settings come from the tests' arguments alone
    monkeypatch.delenv("WORKFLOW_REPLICA_ACKS", raising=False)
    monkeypatch.delenv("WORKFLOW_REPLICA_ACK_TIMEOUT_MS", raising=False)
    # were a short acknowledgement retried as a lost connection, fail in seconds, not 30
    monkeypatch.setenv("WORKFLOW_REDIS_RETRY_SECONDS", "3")
    return str(request.param)


@pytest.fixture
def prefix() -> str:
    return f"ra{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def worlds(replicated: Replicated, prefix: str) -> AsyncIterator[MakeWorld]:
    """Make RedisWorlds on the test's prefix (``on``: the master, default, or the replica);
    all closed after."""
    made: list[RedisWorld] = []

    def make(on: RedisServer | None = None, **settings: Any) -> RedisWorld:
        server = on or replicated.master
        made.append(RedisWorld.from_url(server.url, prefix=prefix, **settings))
        return made[-1]

    yield make
    for w in made:
        await w.close()


def assert_path(world: RedisWorld, path: str) -> None:
    """The World took ``path`` (checked once its first call has resolved its client)."""
    assert (world.core.lean is not None) == (path == "lean"), path


async def test_a_worker_runs_a_workflow_whose_every_write_the_replica_acknowledged(
    replicated: Replicated, worlds: MakeWorld, prefix: str, path: str, tmp_path: Path
) -> None:
    """With WORKFLOW_REPLICA_ACKS=1 and the replica healthy: start() returns, a `wf worker`
    process with the same setting runs the run to completion (its writes WAITed for: the
    master's count of WAIT grows), and the replica itself holds the finished run."""
    world = worlds(replica_acks=1)
    run = await start(add_ten, 1, world=world)
    assert_path(world, path)
    waits_after_start = replicated.wait_calls()
    assert waits_after_start >= 1  # the start itself was acknowledged
    env = worker_environment(replicated.master.url, prefix, None)
    env.pop("WORKFLOW_REDIS_RETRY_SECONDS", None)  # the worker rides out blips as usual
    env.update(
        WORKFLOW_REPLICA_ACKS="1",
        WORKFLOW_REPLICA_ACK_TIMEOUT_MS="5000",
        WORKFLOW_REDIS_LEAN=os.environ["WORKFLOW_REDIS_LEAN"],
    )
    proc = WorkerProcess.start(["tests.e2e.workflows"], env, tmp_path / "worker.log")
    try:
        assert await run.result(timeout=30) == 11
    finally:
        code = proc.stop()
    assert code == 0, proc.output()
    assert "Traceback" not in proc.output(), proc.output()
    # the worker's commits (three steps and the run's end at least) each waited for the replica
    assert replicated.wait_calls() >= waits_after_start + 4
    # the replica holds the finished run: read there, with nothing of the master's
    on_replica = worlds(on=replicated.replica)
    info = await on_replica.get_run(run.run_id)
    assert info is not None and info.status == "completed"
    events = await on_replica.read_events(run.run_id)
    tags = [e.__struct_config__.tag for e in events]
    assert tags[0] == "run_created" and tags[-1] == "run_completed", tags
    assert tags.count("step_completed") == 3, tags


async def test_start_fails_when_the_replica_does_not_acknowledge_and_a_repeat_succeeds(
    replicated: Replicated, worlds: MakeWorld, path: str
) -> None:
    """The replica stopped: start() raises ReplicaAckTimeoutError after the timeout, naming the
    run; once the replica goes on, the same start() answers the same run, which the replica
    holds."""
    world = worlds(replica_acks=1, replica_ack_timeout_ms=TIMEOUT_MS)
    await world.check_config()  # (the first call's setup, outside the timed part)
    assert_path(world, path)
    rid = new_run_id()
    with replicated.replica_paused():
        began = time.monotonic()
        with pytest.raises(ReplicaAckTimeoutError) as caught:
            await start(add_ten, 1, run_id=rid, world=world)
        took = time.monotonic() - began
    err = caught.value
    assert (err.what, err.acked, err.wanted, err.timeout_ms, err.run_id) == (
        "start",
        0,
        1,
        TIMEOUT_MS,
        rid,
    )
    assert rid in str(err)
    assert isinstance(err, WorldUnavailableError)
    assert TIMEOUT_MS / 1e3 * 0.9 <= took < 2.0, took  # WAIT waited its timeout, once
    # written on the master all the same
    info = await world.get_run(rid)
    assert info is not None and info.status == "pending"
    # repeated once the replica goes on: the same run, now acknowledged
    run = await start(add_ten, 1, run_id=rid, world=world)
    assert run.run_id == rid
    on_replica = worlds(on=replicated.replica)
    info = await on_replica.get_run(rid)  # WAIT returned: the replica has it already
    assert info is not None and info.status == "pending" and info.workflow == "add_ten"


async def test_without_acks_a_stopped_replica_does_not_hold_up_a_start(
    replicated: Replicated, worlds: MakeWorld, path: str
) -> None:
    """replica_acks=0 (the default): no WAIT at all, so a stopped replica changes nothing."""
    world = worlds(replica_acks=0)
    await world.check_config()
    assert_path(world, path)
    with replicated.replica_paused():
        began = time.monotonic()
        run = await start(add_ten, 1, world=world)
        took = time.monotonic() - began
        assert (await run.status()) == "pending"
    assert replicated.wait_calls() == 0  # no WAIT was sent
    assert took < 0.5, took  # (with acks it would wait out the 1000 ms default)


async def test_cancel_fails_when_the_replica_does_not_acknowledge(
    replicated: Replicated, worlds: MakeWorld, path: str
) -> None:
    """A commit (cancelling a pending run) with the replica stopped: ReplicaAckTimeoutError;
    once the replica goes on, cancelling again is a no-op and the replica holds the cancel."""
    world = worlds(replica_acks=1, replica_ack_timeout_ms=TIMEOUT_MS)
    run = await start(add_ten, 1, world=world)  # no worker: it stays pending
    assert_path(world, path)
    with replicated.replica_paused(), pytest.raises(ReplicaAckTimeoutError) as caught:
        await run.cancel()
    err = caught.value
    assert (err.what, err.acked, err.wanted, err.timeout_ms) == ("commit", 0, 1, TIMEOUT_MS)
    assert (await run.status()) == "cancelled"  # written on the master
    await run.cancel()  # acknowledged this time
    on_replica = worlds(on=replicated.replica)
    info = await on_replica.get_run(run.run_id)
    assert info is not None and info.status == "cancelled"


async def test_more_acks_than_replicas_fail_with_the_count(
    replicated: Replicated, worlds: MakeWorld, path: str
) -> None:
    """replica_acks=2 with one healthy replica: ReplicaAckTimeoutError, 1 of 2 acknowledged."""
    world = worlds(replica_acks=2, replica_ack_timeout_ms=200)
    rid = new_run_id()
    with pytest.raises(ReplicaAckTimeoutError) as caught:
        await start(add_ten, 1, run_id=rid, world=world)
    assert_path(world, path)
    err = caught.value
    assert (err.what, err.acked, err.wanted, err.timeout_ms, err.run_id) == (
        "start",
        1,
        2,
        200,
        rid,
    )
    # the one replica has the run all the same (it acknowledged it)
    info = await worlds(on=replicated.replica).get_run(rid)
    assert info is not None and info.status == "pending"


async def waits_served(pair: Replicated, at_least: int) -> bool:
    """The master has served ``at_least`` WAIT commands (read off the event loop's thread)."""
    return await asyncio.to_thread(pair.wait_calls) >= at_least


def fence_key(prefix: str) -> str:
    """The fence written, while the replicas lag, for a write in partition 0's slot."""
    return f"{prefix}:{{p0}}:replica-fence"


async def master_has(pair: Replicated, key: str) -> bool:
    client = pair.master.async_client(socket_timeout=5)
    try:
        return bool(await client.exists(key))
    finally:
        await client.aclose()


async def test_without_a_timeout_start_waits_out_a_paused_replica(
    replicated: Replicated, worlds: MakeWorld, prefix: str, path: str
) -> None:
    """No acknowledgement timeout (the default: 0): start() with the replica stopped neither
    returns nor raises, however many WAIT slices come back short (a fence written in the run's
    slot and WAITed for again each time); once the replica goes on, it returns the run, which
    the replica holds."""
    world = worlds(replica_acks=1, replica_ack_timeout_ms=None)
    assert (world.core.replica_acks, world.core.replica_ack_timeout_ms) == (1, 0)
    # a first start with the replica healthy: the World set up, its script loaded on the master
    # (a first EVALSHA answers NOSCRIPT, and its WAIT would count too)
    await start(add_ten, 1, world=world)
    assert_path(world, path)
    replicated.reset_stats()
    rid = new_run_id()
    task: asyncio.Task[Any] | None = None
    try:
        with replicated.replica_paused():
            began = time.monotonic()
            task = asyncio.create_task(start(add_ten, 1, run_id=rid, world=world))
            # the script's own WAIT came back short, and a fence's WAIT followed it (Redis 7.0
            # counts a WAIT when it is sent)
            await eventually(
                lambda: waits_served(replicated, 2), 10, what="two WAITs served by the master"
            )
            assert time.monotonic() - began >= 0.9  # a slice of 1000 ms waited out
            assert not task.done(), task
            assert await master_has(replicated, fence_key(prefix))
            info = await world.get_run(rid)  # written on the master all the same
            assert info is not None and info.status == "pending"
            # and the fence's WAIT came back short too: another fence, another WAIT
            await eventually(lambda: waits_served(replicated, 3), 10, what="a third WAIT served")
            assert time.monotonic() - began >= 1.8  # two slices waited out
            assert not task.done(), task  # still waiting: no timeout ends it
        run = await asyncio.wait_for(task, 10)
    finally:
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    assert run.run_id == rid
    info = await worlds(on=replicated.replica).get_run(rid)  # WAIT returned: the replica has it
    assert info is not None and info.status == "pending" and info.workflow == "add_ten"


def log_events(output: str) -> list[str]:
    """The ``event`` of each JSON line of a worker's log (other lines skipped)."""
    found = []
    for line in output.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "event" in record:
                found.append(str(record["event"]))
    return found


async def test_a_worker_holds_at_an_unacknowledged_commit_until_the_replica_returns(
    replicated: Replicated, worlds: MakeWorld, prefix: str, path: str, tmp_path: Path
) -> None:
    """A `wf worker` process with WORKFLOW_REPLICA_ACKS=1 and no timeout, the replica stopped
    when its run arrives: the worker's first commit is written on the master but never passed
    (no step beyond it completes, the run does not finish) however long the replica stays away;
    once it goes on, the run completes with its value, each step once, the worker alive and
    with no failure logged, and the replica holds the finished run."""
    env = worker_environment(replicated.master.url, prefix, None)
    env.pop("WORKFLOW_REDIS_RETRY_SECONDS", None)  # the worker rides out blips as usual
    env.pop("WORKFLOW_REPLICA_ACK_TIMEOUT_MS", None)  # no timeout: wait as long as it takes
    env.update(WORKFLOW_REPLICA_ACKS="1", WORKFLOW_REDIS_LEAN=os.environ["WORKFLOW_REDIS_LEAN"])
    proc = WorkerProcess.start(["tests.e2e.workflows"], env, tmp_path / "worker.log")
    try:
        world = worlds(replica_acks=0)  # starts without waiting for the stopped replica
        await world.check_config()
        assert_path(world, path)

        async def log_of(run_id: str) -> list[str]:
            """The run's event log on the master, by tag."""
            return [e.__struct_config__.tag for e in await world.read_events(run_id)]

        with replicated.replica_paused():
            run = await start(add_ten, 1, world=world)
            rid = run.run_id

            async def taken() -> bool:
                return "run_started" in await log_of(rid)

            # the worker took the run: its first commit is on the master, and (the replica
            # missing it) a fence in the run's slot asks again
            await eventually(taken, 10, what="the worker's first commit on the master")
            await eventually(
                lambda: master_has(replicated, fence_key(prefix)), 10, what="a fence written"
            )
            held = await log_of(rid)
            waits = await asyncio.to_thread(replicated.wait_calls)
            # some seconds more of the replica away, by the master's count of WAITs
            await eventually(
                lambda: waits_served(replicated, waits + 3), 15, what="three more WAITs"
            )
            # the worker went no further than its unacknowledged commit
            assert await log_of(rid) == held
            assert held.count("step_completed") <= 1, held
            assert (await run.status()) == "running"
            assert proc.proc.poll() is None, proc.output()
        assert await run.result(timeout=20) == 11
        on_replica = worlds(on=replicated.replica)

        async def completed_on_replica() -> bool:
            info = await on_replica.get_run(rid)
            return info is not None and info.status == "completed"

        # (the master answers "completed" once the run's end is written there, before its WAIT)
        await eventually(completed_on_replica, 10, what="the run completed on the replica")
        tags = [e.__struct_config__.tag for e in await on_replica.read_events(rid)]
        assert tags[0] == "run_created" and tags[-1] == "run_completed", tags
        assert tags.count("step_completed") == 3, tags  # no step ran twice
        assert tags.count("step_started") == 3 and tags.count("step_created") == 3, tags
        assert tags.count("run_completed") == 1, tags
        assert proc.proc.poll() is None, proc.output()  # the worker rode it out
    finally:
        code = proc.stop()
    output = proc.output()
    assert code == 0, output
    assert "Traceback" not in output, output
    events = log_events(output)
    assert "worker_started" in events, output
    bad = {"run_dead_lettered", "worker_failed", "run_processing_failed"} & set(events)
    assert not bad, output


async def test_server_warnings_name_a_primary_with_too_few_replicas(worlds: MakeWorld) -> None:
    """A worker logs `redis_configuration_risk` at start from ``server_warnings()``: with more
    replicas asked for than acknowledge (2 of the 1 here) it says so, naming the setting; with
    as many, or without the setting, nothing is said about replicas."""
    too_many = await worlds(replica_acks=2).server_warnings()
    (warning,) = [w for w in too_many if "WORKFLOW_REPLICA_ACKS" in w]
    assert "WORKFLOW_REPLICA_ACKS=2 but 1 replica(s) acknowledge" in warning
    for settings in ({"replica_acks": 1}, {"replica_acks": 0}):
        said = await worlds(**settings).server_warnings()
        assert not [w for w in said if "replica" in w.lower()], (settings, said)
