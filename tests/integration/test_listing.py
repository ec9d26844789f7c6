"""Listing runs through the partition indexes, and the retention janitor, on a real Redis."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import RedisServer
from world_redis import RedisWorld

from .helpers import commit1, ev, eventually, new_run_id

STATUSES = ("pending", "running", "completed", "failed", "cancelled")


async def make_runs(world: RedisWorld) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """25 runs created ~2 ms apart (so created_at is strictly increasing), alternating alpha/beta.

    Every third run is completed, every fifth (not completed) is running, the rest pending.
    Returns (ids in creation order, id -> workflow, id -> status).
    """
    ids: list[str] = []
    names: dict[str, str] = {}
    status: dict[str, str] = {}
    for i in range(25):
        run_id = new_run_id()
        names[run_id] = "alpha" if i % 2 == 0 else "beta"
        assert await world.create_run(run_id, names[run_id], f"[{i}]")
        ids.append(run_id)
        await asyncio.sleep(0.002)
    for i, run_id in enumerate(ids):
        if i % 3 == 0:
            res = await commit1(world, run_id, ev("run_started"), ev("run_completed", output="1"))
            status[run_id] = "completed"
        elif i % 5 == 0:
            res = await commit1(world, run_id, ev("run_started"))
            status[run_id] = "running"
        else:
            status[run_id] = "pending"
            continue
        assert res.code == "ok"
    return ids, names, status


async def test_list_runs_filters_and_paginates_newest_first(world: RedisWorld) -> None:
    """list_runs: newest first; limit 10 pages 10/10/5 with cursor None at the end; status and workflow filters."""
    ids, names, status = await make_runs(world)
    newest_first = ids[::-1]
    created = [(await world.get_run(r)).created_at for r in ids]  # type: ignore[union-attr]
    assert created == sorted(set(created)), "creation times must be strictly increasing"

    runs, cursor = await world.list_runs(limit=100)
    assert [r.run_id for r in runs] == newest_first and cursor is None
    assert [(r.workflow, r.status) for r in runs] == [(names[i], status[i]) for i in newest_first]

    pages: list[list[str]] = []
    cursor = None
    while True:
        runs, cursor = await world.list_runs(limit=10, cursor=cursor)
        pages.append([r.run_id for r in runs])
        if cursor is None:
            break
        assert len(pages) < 5, "pagination does not end"
    assert [len(p) for p in pages] == [10, 10, 5]
    flat = [r for p in pages for r in p]
    assert flat == newest_first and len(set(flat)) == 25

    for s in STATUSES:
        runs, cursor = await world.list_runs(status=s, limit=100)
        assert [r.run_id for r in runs] == [i for i in newest_first if status[i] == s], s
        assert all(r.status == s for r in runs) and cursor is None
    assert len((await world.list_runs(status="completed", limit=100))[0]) == 9

    for name in ("alpha", "beta"):
        runs, _ = await world.list_runs(workflow=name, limit=100)
        assert [r.run_id for r in runs] == [i for i in newest_first if names[i] == name]
    runs, _ = await world.list_runs(workflow="alpha", status="completed", limit=100)
    assert [r.run_id for r in runs] == [
        i for i in newest_first if names[i] == "alpha" and status[i] == "completed"
    ]
    assert (await world.list_runs(workflow="nobody"))[0] == []

    # paginating a filtered listing: 9 completed runs in pages of 4
    seen: list[str] = []
    cursor = None
    sizes = []
    while True:
        runs, cursor = await world.list_runs(status="completed", limit=4, cursor=cursor)
        sizes.append(len(runs))
        seen += [r.run_id for r in runs]
        if cursor is None:
            break
    assert sizes == [4, 4, 1]
    assert seen == [i for i in newest_first if status[i] == "completed"]


async def test_list_runs_rejects_unknown_status(world: RedisWorld) -> None:
    """An unknown status filter raises ValueError naming the valid ones."""
    with pytest.raises(ValueError, match=r"unknown status 'done'.*pending"):
        await world.list_runs(status="done")


async def test_expire_indexes_drops_finished_runs_after_retention(
    redis_server: RedisServer, prefix: str
) -> None:
    """With retention 1 s, expire_indexes drops finished runs from every index once 1 s has passed; live runs stay."""
    w = RedisWorld.from_url(redis_server.url, prefix=prefix, retention_s=1)
    try:
        k, r = w.keys, w.redis
        done, failed, live, pending = (new_run_id() for _ in range(4))
        for run_id, name in ((done, "alpha"), (failed, "beta"), (live, "alpha"), (pending, "beta")):
            assert await w.create_run(run_id, name, "[]")
        await commit1(w, done, ev("run_started"), ev("run_completed", output="1"))
        await commit1(w, failed, ev("run_started"), ev("run_failed", error='"x"'))
        await commit1(w, live, ev("run_started"))

        assert await w.expire_indexes() == 0  # retention not over yet
        assert set(await r.zrange(k.idx_done(0), 0, -1)) == {done, failed}

        dropped: list[int] = []

        async def janitor() -> bool:
            dropped.append(await w.expire_indexes())
            return sum(dropped) >= 2

        await eventually(janitor, timeout=3, interval=0.1, what="finished runs leave the indexes")
        assert sum(dropped) == 2

        assert not await r.exists(k.idx_all(0))  # not written any more: the status indexes list
        assert await r.zrange(k.idx_done(0), 0, -1) == []
        assert await r.zrange(k.idx_status(0, "completed"), 0, -1) == []
        assert await r.zrange(k.idx_status(0, "failed"), 0, -1) == []
        assert await r.zrange(k.idx_status(0, "running"), 0, -1) == [live]
        assert await r.zrange(k.idx_status(0, "pending"), 0, -1) == [pending]
        assert await r.zrange(k.idx_workflow(0, "alpha"), 0, -1) == [live]
        assert await r.zrange(k.idx_workflow(0, "beta"), 0, -1) == [pending]

        # their own keys expired by TTL (retention 1 s)
        async def gone() -> bool:
            return await r.exists(*k.run_keys(done), *k.run_keys(failed)) == 0

        await eventually(gone, timeout=1, what="finished runs' keys expire")
        runs, _ = await w.list_runs(limit=100)
        assert {x.run_id for x in runs} == {live, pending}
        assert await w.expire_indexes() == 0
    finally:
        await w.close()


async def test_list_runs_by_workflow_and_status_finds_older_matches(world: RedisWorld) -> None:
    """A completed run older than many pending runs of the same workflow is still listed (or reachable by cursor)."""
    old = new_run_id()
    assert await world.create_run(old, "alpha", "[]")
    await commit1(world, old, ev("run_started"), ev("run_completed", output="1"))
    for _ in range(60):
        assert await world.create_run(new_run_id(), "alpha", "[]")
    found: list[str] = []
    cursor = None
    for _ in range(100):
        runs, cursor = await world.list_runs(
            workflow="alpha", status="completed", limit=5, cursor=cursor
        )
        found += [r.run_id for r in runs]
        if cursor is None:
            break
    assert found == [old]
