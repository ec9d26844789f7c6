"""Child runs against a real Redis with an in-process worker: start, await, errors, cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import child_workflows as cw
from tests.support import all_keys, eventually, hook_ready, running_worker
from worker import (
    FatalError,
    InvalidParentCloseError,
    WorkflowNotRegisteredError,
    WorkflowRunFailedError,
    create_dashboard_app,
    get_run,
    resume_hook,
    set_world,
    start,
)
from worker._errors import WorldUnavailableError
from worker._events import ChildCompleted, ChildStarted, RunCreated
from worker._worker import Worker, WorkerConfig
from worker._world import Commit, CommitResult
from worker.testing import workflow_env
from world_redis import RedisWorld


@pytest.fixture
async def worker(world: RedisWorld) -> AsyncIterator[Worker]:
    set_world(world)
    w = Worker(world, WorkerConfig(concurrency=20, lease_ms=2000, heartbeat_ms=300))
    try:
        async with running_worker(w):
            await world.ensure_groups()
            yield w
    finally:
        set_world(None)


async def child_of(world: RedisWorld, parent_id: str) -> list[ChildStarted]:
    return [e for e in await world.read_events(parent_id) if isinstance(e, ChildStarted)]


async def test_child_completes_and_parent_resumes(world: RedisWorld, worker: Worker) -> None:
    """The parent records child_started, the child runs, and its value reaches the parent."""
    run = await start(cw.parent_one, 21, world=world)
    out = await run.result(timeout=30)
    assert out["value"] == 42
    (started,) = await child_of(world, run.run_id)
    assert started.run_id == out["child"] and started.workflow == "child_double"
    child = await world.get_run(started.run_id)
    assert child is not None and child.status == "completed"
    assert child.parent_run_id == run.run_id
    created = (await world.read_events(started.run_id))[0]
    assert isinstance(created, RunCreated) and created.parent == run.run_id
    ends = [e for e in await world.read_events(run.run_id) if isinstance(e, ChildCompleted)]
    assert len(ends) == 1 and ends[0].corr == started.corr


async def test_failed_child_raises_in_parent(world: RedisWorld, worker: Worker) -> None:
    """A failed child raises WorkflowRunFailedError in the parent, with the child's error."""
    run = await start(cw.parent_of_failing, "kaput", world=world)
    assert await run.result(timeout=30) == "WorkflowRunFailedError|True|kaput"


async def test_cancelled_child_raises_in_parent(world: RedisWorld, worker: Worker) -> None:
    """A child cancelled from outside raises WorkflowRunCancelledError in the parent."""
    run = await start(cw.parent_of_waiting, "tok-cancel-child", "cancel", world=world)
    await hook_ready("tok-cancel-child")
    (started,) = await child_of(world, run.run_id)
    await get_run(started.run_id, world).cancel()
    assert await run.result(timeout=30) == "cancelled True"


async def test_cancelling_parent_cancels_children(world: RedisWorld, worker: Worker) -> None:
    """Cancelling a parent cancels its running child (parent_close="cancel", the default)."""
    run = await start(cw.parent_of_waiting, "tok-parent-cancel", "cancel", world=world)
    await hook_ready("tok-parent-cancel")
    (started,) = await child_of(world, run.run_id)
    await run.cancel()
    child = get_run(started.run_id, world)

    async def cancelled() -> bool:
        return await child.status() == "cancelled"

    await eventually(cancelled, 30, what="the child to be cancelled with its parent")


async def test_abandoned_child_outlives_parent(world: RedisWorld, worker: Worker) -> None:
    """parent_close="abandon" keeps the child running after its parent is cancelled."""
    run = await start(cw.parent_of_waiting, "tok-abandon", "abandon", world=world)
    await hook_ready("tok-abandon")
    (started,) = await child_of(world, run.run_id)
    await run.cancel()  # the child must still take a payload and complete
    await resume_hook("tok-abandon", "still here", world)
    assert await get_run(started.run_id, world).result(timeout=30) == "still here"
    assert await run.status() == "cancelled"


async def test_fire_and_forget_child_is_started(world: RedisWorld, worker: Worker) -> None:
    """A child started just before the parent returns is started all the same."""
    run = await start(cw.parent_fire_and_forget, "tok-forget", world=world)
    child_id = await run.result(timeout=30)
    await hook_ready("tok-forget")
    await resume_hook("tok-forget", "done", world)
    assert await get_run(child_id, world).result(timeout=30) == "done"


async def test_gather_over_children(world: RedisWorld, worker: Worker) -> None:
    """asyncio.gather over several children's results returns them in call order."""
    run = await start(cw.parent_gather, 5, world=world)
    assert await run.result(timeout=30) == [0, 2, 4, 6, 8]
    assert len({c.run_id for c in await child_of(world, run.run_id)}) == 5


async def test_child_results_with_tasks(world: RedisWorld, worker: Worker) -> None:
    """create_task, TaskGroup and as_completed work over children's results."""
    run = await start(cw.parent_tasks, 4, world=world)
    assert await run.result(timeout=30) == [0, 2, 4, 6]


async def test_run_id_is_idempotent_in_workflow(world: RedisWorld, worker: Worker) -> None:
    """start(..., run_id=) in a workflow twice, and of a run started before: one run."""
    child_id = "wrun_CHILD_IDEMPOTENT"
    run = await start(cw.parent_run_id, child_id, 5, world=world)
    assert await run.result(timeout=30) == [child_id, child_id, 10, 10]
    before = await start(cw.child_double, 7, world=world, run_id="wrun_CHILD_BEFORE")
    assert await before.result(timeout=30) == 14
    run2 = await start(cw.parent_run_id, "wrun_CHILD_BEFORE", 1, world=world)
    assert await run2.result(timeout=30) == ["wrun_CHILD_BEFORE", "wrun_CHILD_BEFORE", 14, 14]


async def test_unregistered_child_is_a_typed_error(world: RedisWorld, worker: Worker) -> None:
    """Starting an unregistered workflow in workflow code raises WorkflowNotRegisteredError
    there, and nothing is recorded or created."""
    keys_before = set(await all_keys(world, f"{world.keys.prefix}:*:run:*"))
    run = await start(cw.parent_unregistered, world=world)
    assert await run.result(timeout=30) == WorkflowNotRegisteredError.__name__
    assert await child_of(world, run.run_id) == []
    keys = set(await all_keys(world, f"{world.keys.prefix}:*:run:*")) - keys_before
    assert all(run.run_id in k for k in keys)


async def test_parent_close_is_checked(world: RedisWorld) -> None:
    """An unknown parent_close is a typed error naming the value, before anything exists."""
    with pytest.raises(InvalidParentCloseError, match="'detach'"):
        await start(cw.child_double, 1, world=world, parent_close="detach")
    assert await all_keys(world, f"{world.keys.prefix}:*:run:*") == []


async def test_child_runs_exactly_once(world: RedisWorld, worker: Worker, tmp_path: Path) -> None:
    """One child run, its code started once, however the parent is replayed."""
    marker = tmp_path / "starts"
    run = await start(cw.parent_counted, str(marker), 4, world=world)
    assert await run.result(timeout=30) == 50
    assert len(marker.read_text().splitlines()) == 1
    assert len(await child_of(world, run.run_id)) == 1


class FlakyChildren(RedisWorld):
    """A real RedisWorld that fails once where a worker could die: creating a child run after
    its parent recorded it, and delivering a child's end to its parent."""

    fail_create: set[str] = set()
    fail_delivery = False

    async def create_run(self, run_id: str, workflow: str, *args: Any, **kwargs: Any) -> bool:
        if kwargs.get("parent") and workflow not in self.fail_create:
            self.fail_create.add(workflow)
            raise WorldUnavailableError("injected: the worker died before creating the child")
        return await super().create_run(run_id, workflow, *args, **kwargs)

    async def commit(self, commits: Sequence[Commit]) -> list[CommitResult]:
        ends = any(e.type == "child_completed" for c in commits for e in c.events)
        if ends and self.fail_delivery:
            self.fail_delivery = False
            raise WorldUnavailableError("injected: the worker died delivering a child's end")
        return await super().commit(commits)


async def test_lost_child_creation_and_delivery_are_redone(
    redis_server: Any, prefix: str, tmp_path: Path
) -> None:
    """A child creation that fails after the parent recorded the child, and a delivery of its end
    that fails, are both done again: one child run, its code run once, the parent completes."""
    world = FlakyChildren.from_url(redis_server.url, prefix=prefix)
    world.fail_create = set()
    world.fail_delivery = True
    set_world(world)
    config = WorkerConfig(concurrency=10, lease_ms=600, heartbeat_ms=150, drain_timeout_s=1)
    marker = tmp_path / "starts"
    try:
        async with running_worker(Worker(world, config)):
            await world.ensure_groups()
            run = await start(cw.parent_counted, str(marker), 1, world=world)
            assert await run.result(timeout=30) == 20
        assert world.fail_create == {"child_counted"} and not world.fail_delivery
        assert len(marker.read_text().splitlines()) == 1
        (started,) = await child_of(world, run.run_id)
        ends = [e for e in await world.read_events(run.run_id) if isinstance(e, ChildCompleted)]
        assert len(ends) == 1
        runs, _ = await world.list_runs(workflow="child_counted")
        assert [r.run_id for r in runs] == [started.run_id]
    finally:
        set_world(None)
        await world.close()


async def test_parent_end_cancels_child_left_running(world: RedisWorld, worker: Worker) -> None:
    """A parent that completes without awaiting its child (parent_close="cancel") cancels it."""
    run = await start(cw.parent_leaves_child, "tok-left", world=world)
    child_id = await run.result(timeout=30)

    async def cancelled() -> bool:
        child = await world.get_run(child_id)  # created just after the parent's end, maybe
        return child is not None and child.status == "cancelled"

    await eventually(cancelled, 30, what="the child left running to be cancelled")


async def test_child_handle_refuses_reads_in_workflow_code(
    world: RedisWorld, worker: Worker
) -> None:
    """run.status() of a child in workflow code is a clear error (it would read Redis there)."""
    run = await start(cw.parent_reads_child, world=world)
    out = await run.result(timeout=30)
    assert out.startswith("WorkflowError: run.info() of a child run reads Redis")


async def test_dashboard_links_parent_and_children(world: RedisWorld, worker: Worker) -> None:
    """The dashboard's run page lists a parent's children and links a child to its parent."""
    run = await start(cw.parent_gather, 2, world=world)
    await run.result(timeout=30)
    children = await child_of(world, run.run_id)
    app = create_dashboard_app(world, token="secret")
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": "Bearer secret"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://dash", headers=headers
    ) as client:
        page = (await client.get(f"/runs/{run.run_id}")).text
        assert "Child runs" in page
        for c in children:
            assert f'href="/runs/{c.run_id}"' in page
        child_page = (await client.get(f"/runs/{children[0].run_id}")).text
        assert f'id="parent-run" href="/runs/{run.run_id}"' in child_page
        listing = (await client.get("/", params={"workflow": "child_double"})).text
        assert listing.count(f'child of <a href="/runs/{run.run_id}">') == len(children)


async def test_time_skips_through_a_sleeping_child(redis_server: Any) -> None:
    """In workflow_env, a parent awaiting a child that sleeps 30 days completes at once."""
    async with workflow_env("tests.e2e.child_workflows", redis_url=redis_server.url) as env:
        run = await env.start(cw.parent_of_sleeper, 30)
        assert await run.result(timeout=30) == 30


async def test_uncaught_child_failure_fails_the_parent(world: RedisWorld, worker: Worker) -> None:
    """A child's failure the parent does not catch fails the parent: its error is the child's
    WorkflowRunFailedError, whose cause is the child's own error."""
    run = await start(cw.parent_uncaught, "deep", world=world)
    with pytest.raises(WorkflowRunFailedError) as caught:
        await run.result(timeout=30)
    child_error = caught.value.__cause__
    assert isinstance(child_error, WorkflowRunFailedError)
    (started,) = await child_of(world, run.run_id)
    assert child_error.run_id == started.run_id
    assert isinstance(child_error.__cause__, FatalError) and str(child_error.__cause__) == "deep"
