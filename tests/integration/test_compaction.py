"""Compaction of finished runs on a real Redis: compact.lua's fence, the round trip, and every
reader of a run on a compacted one."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.support import REPO, redis_cli_binary
from worker import PayloadCodec, get_run, start
from worker._errors import CorruptEventError, RunNotFoundError, WorkflowError
from worker._streams import stream_name
from worker.world import MigrateError
from world_redis import RedisWorld
from world_redis._compact import encode_log
from world_redis._compact_format import document

from .helpers import commit1, ev, eventually, new_id, run_with_steps, snapshot


async def finished_run(world: RedisWorld, end: str = "run_completed", steps: int = 3) -> str:
    """A run of ``steps`` completed steps that ended with ``end``."""
    ids = [new_id("step") for _ in range(steps)]
    run_id = await run_with_steps(world, *ids)
    for i, corr in enumerate(ids):
        res = await commit1(
            world, run_id, ev("step_started", corr), ev("step_completed", corr, result=str(i))
        )
        assert res.code == "ok", res
    payload = {"output": "42"} if end == "run_completed" else {}
    if end == "run_failed":
        payload = {"error": '{"message": "boom"}'}
    assert (await commit1(world, run_id, ev(end, **payload))).code == "ok"
    return run_id


async def compact_script(world: RedisWorld, run_id: str, last_id: str) -> str:
    """compact.lua called directly for one run, with the value of the run as stored now."""
    k = world.keys
    p = k.partition(run_id)
    run, stream, ent, _ = k.run_keys(run_id)
    rows = await world.redis.xrange(stream)
    value = encode_log(run_id, await world.redis.hgetall(run), rows)
    keys = [k.idx_done(p), k.compacted(p), run, stream, ent, k.log(run_id)]
    (code,) = await world.core._eval("compact", keys, [run_id, last_id, value])
    return str(code)


async def test_compaction_swaps_the_run_for_one_value_with_the_runs_retention(
    world: RedisWorld,
) -> None:
    """The run hash, stream and entity hash go; the value keeps the run's TTL and its hash."""
    run_id = await finished_run(world)
    before = await world.read_events(run_id)
    stored = await world.redis.hgetall(world.keys.run(run_id))
    assert await world.compact_runs([run_id]) == 1
    k, r = world.keys, world.redis
    assert await r.exists(k.run(run_id), k.events(run_id), k.entities(run_id)) == 0
    assert 0 < await r.ttl(k.log(run_id)) <= world.retention_s
    kept = await world.compaction.read_run(run_id)
    assert kept == {
        f: v for f, v in stored.items() if f not in ("run_id", "lease_owner", "lease_until")
    }
    assert await world.read_events(run_id) == before


async def test_fence_refuses_a_run_that_is_not_terminal(world: RedisWorld) -> None:
    """A running run is never compacted: "not_terminal", nothing written."""
    run_id = await run_with_steps(world, new_id("step"))
    state = await snapshot(world)
    assert await compact_script(world, run_id, "2-0") == "not_terminal"
    assert await world.compact_runs([run_id]) == 0
    assert await snapshot(world) == state


async def test_fence_refuses_a_stream_that_moved_on(world: RedisWorld) -> None:
    """A value read before the last entry (a late step result on a cancelled run) is refused."""
    corr = new_id("step")
    run_id = await run_with_steps(world, corr)
    assert (await commit1(world, run_id, ev("step_started", corr))).code == "ok"
    assert (await commit1(world, run_id, ev("run_cancelled"))).code == "ok"
    read_at = (await world.read_events(run_id))[-1].seq
    # the step that was running when the run ended still records its result
    assert (await commit1(world, run_id, ev("step_completed", corr, result="7"))).code == "ok"
    state = await snapshot(world)
    assert await compact_script(world, run_id, f"{read_at}-0") == "moved"
    assert await snapshot(world) == state
    assert await world.compact_runs([run_id]) == 1  # the client reads the log again
    assert (await world.read_events(run_id))[-1].seq == read_at + 1


async def test_compacting_twice_is_idempotent(world: RedisWorld) -> None:
    """A second compaction (another worker's, say) answers "already" and changes nothing."""
    run_id = await finished_run(world)
    assert await world.compact_runs([run_id, run_id]) == 1
    state = await snapshot(world)
    assert await world.compact_runs([run_id]) == 0
    assert await compact_script(world, run_id, "9-0") == "already"
    assert await snapshot(world) == state


async def test_an_expired_run_is_not_compacted(world: RedisWorld) -> None:
    """Neither run hash nor value: "no_run", nothing written."""
    assert await compact_script(world, "wrun_01J00000000000000000000000", "1-0") == "no_run"


@pytest.mark.parametrize("end", ["run_completed", "run_failed", "run_cancelled"])
async def test_readers_see_a_compacted_run_as_before(world: RedisWorld, end: str) -> None:
    """get_run, events (from any seq), steps, listing by status and workflow, wait_for_events."""
    run_id = await finished_run(world, end)
    info, events, steps = (
        await world.get_run(run_id),
        await world.read_events(run_id),
        await world.list_steps(run_id),
    )
    listed = await world.list_runs(limit=100)
    assert await world.compact_runs([run_id]) == 1
    after = await world.get_run(run_id)
    assert after is not None and info is not None
    assert after.input == info.input and after.output == info.output and after.error == info.error
    assert (after.status, after.seq, after.completed_at) == (
        info.status,
        info.seq,
        info.completed_at,
    )
    assert await world.read_events(run_id) == events
    assert await world.read_events(run_id, 3) == events[3:]
    assert await world.list_steps(run_id) == steps
    assert [r.run_id for r in (await world.list_runs(limit=100))[0]] == [
        r.run_id for r in listed[0]
    ]
    by_status, _ = await world.list_runs(status=info.status, workflow="wf_test")
    assert [r.run_id for r in by_status] == [run_id] and by_status[0].output == info.output
    assert await world.wait_for_events(run_id, info.seq - 1, 10)
    assert not await world.wait_for_events(run_id, info.seq, 10)


async def test_run_handle_on_a_compacted_run(world: RedisWorld) -> None:
    """Run.result, status, events and steps of a compacted run; start(run_id=) makes no second
    run; cancel answers as for any finished run."""
    run_id = await finished_run(world)
    run = get_run(run_id)
    events = await run.events()
    assert await world.compact_runs([run_id]) == 1
    assert await run.result(timeout=5) == 42
    assert await run.status() == "completed"
    assert await run.events() == events and len(await run.steps()) == 3
    again = await start("wf_test", 1, run_id=run_id)
    assert again.run_id == run_id and await again.result(timeout=5) == 42
    assert await world.redis.exists(world.keys.events(run_id)) == 0
    with pytest.raises(WorkflowError, match="already completed"):
        await run.cancel()
    assert await world.redis.exists(world.keys.events(run_id)) == 0


async def test_cancel_of_a_compacted_cancelled_run_is_a_no_op(world: RedisWorld) -> None:
    """Cancelling a cancelled run stays idempotent after compaction."""
    run_id = await finished_run(world, "run_cancelled")
    assert await world.compact_runs([run_id]) == 1
    state = await snapshot(world)
    await get_run(run_id).cancel()
    assert await snapshot(world) == state


async def test_compact_finished_walks_each_partition_once_from_its_cursor(
    world: RedisWorld,
) -> None:
    """Runs finished before the horizon are compacted once, each partition from its cursor; a run
    finished too recently waits for a later call."""
    first = [await finished_run(world, steps=1) for _ in range(3)]
    compacted = 0

    async def all_first() -> bool:
        nonlocal compacted
        compacted += await world.compact_finished(0, batch=2)
        return compacted == 3

    await eventually(all_first, timeout=10, what="the finished runs compacted")
    assert await world.compact_finished(0) == 0
    later = await finished_run(world, steps=1)
    assert await world.compact_finished(60_000) == 0
    assert await eventually(lambda: world.compact_finished(0), timeout=10) == 1
    for run_id in [*first, later]:
        assert await world.redis.exists(world.keys.log(run_id)) == 1


async def test_runs_finished_in_the_same_ms_are_never_split_by_a_batch(
    world_with_partitions: Callable[[int], RedisWorld],
) -> None:
    """A batch boundary inside one completion ms takes the whole ms, so the cursor skips none."""
    world = world_with_partitions(1)
    runs = [await finished_run(world, steps=1) for _ in range(5)]
    r, k = world.redis, world.keys
    for run_id in runs:  # two finished at ms 1000, three at ms 1001
        score = 1000 if run_id in runs[:2] else 1001
        await r.zadd(k.idx_done(k.partition(run_id)), {run_id: score})
    assert await world.compact_finished(0, batch=1) == 2
    assert await world.compact_finished(0, batch=1) == 3
    assert await world.compact_finished(0, batch=1) == 0


async def test_wf_inspect_events_reads_a_compacted_log(world: RedisWorld, worker_env) -> None:  # type: ignore[no-untyped-def]
    """`wf inspect events RUN` (a real command) shows a compacted run's events."""
    run_id = await finished_run(world)
    assert await world.compact_runs([run_id]) == 1
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker._cli", "inspect", "events", run_id,
        env=worker_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    shown = out.decode()
    assert (
        "run_created" in shown and shown.count("step_completed") == 3 and "run_completed" in shown
    )


@pytest.mark.skipif(
    redis_cli_binary() is None or shutil.which("zstd") is None, reason="needs redis-cli and zstd"
)
async def test_the_readme_recipe_reads_a_compacted_log(world: RedisWorld, redis_server) -> None:  # type: ignore[no-untyped-def]
    """`redis-cli --raw GET <log> | head -c -1 | zstd -d -D <dictionary>` (the README's recipe)
    prints the JSON document."""
    run_id = await finished_run(world)
    assert await world.compact_runs([run_id]) == 1
    recipe = re.search(
        r"```console\n(redis-cli --raw GET .*?)\n```", (REPO / "README.md").read_text()
    )
    assert recipe is not None
    command = recipe.group(1).replace(
        "redis-cli", f"{redis_cli_binary()} -c -p {redis_server.port}", 1
    )
    command = command.replace("'wf:{p0}:run:<run_id>:log'", shlex.quote(world.keys.log(run_id)))
    command = command.replace("python -m", f"{shlex.quote(sys.executable)} -m")
    done = await asyncio.to_thread(
        subprocess.run, ["sh", "-c", command], capture_output=True, check=True
    )
    shown = json.loads(done.stdout)
    assert shown["run"]["output"] == "42" and shown["ev"][0][1] == "run_created"


async def test_migrating_a_compacted_run_is_refused_as_for_any_finished_run(
    world: RedisWorld,
) -> None:
    """The migrate script finds no run hash; the answer is still "finished", not "not found"."""
    run_id = await finished_run(world)
    assert await world.compact_runs([run_id]) == 1
    with pytest.raises(MigrateError, match="is completed"):
        await world.deployments.migrate(run_id, "dpl_other")
    with pytest.raises(RunNotFoundError):
        await world.deployments.migrate("wrun_01J00000000000000000000000", "dpl_other")


async def test_an_encrypted_run_stays_encrypted_and_readable_once_compacted(
    world: RedisWorld,
) -> None:
    """Payloads are kept as their envelopes (no plaintext in the value) and decrypt as before."""
    world.codec = PayloadCodec.parse("ka:" + base64.b64encode(bytes(range(32))).decode())
    run_id = await finished_run(world)
    info, events = await world.get_run(run_id), await world.read_events(run_id)
    assert await world.compact_runs([run_id]) == 1
    raw = await world.compaction._value_of(run_id)
    assert raw is not None and b'"42"' not in document(run_id, raw)
    assert await world.get_run(run_id) == info and info is not None and info.output == "42"
    assert await world.read_events(run_id) == events


async def test_a_compacted_run_leaves_idx_done_and_the_janitor_drops_it_once_expired(
    world_with_partitions: Callable[[int], RedisWorld],
) -> None:
    """Compaction moves a run from idx:done to the compacted list; once its value expires the
    janitor drops it from every index, only those expired, in list order."""
    world = world_with_partitions(1)
    runs = [await finished_run(world, steps=1) for _ in range(3)]
    r, k = world.redis, world.keys
    assert await world.compact_runs(runs) == 3
    assert await r.zcard(k.idx_done(0)) == 0
    assert await r.lrange(k.compacted(0), 0, -1) == runs
    indexes = [k.idx_status(0, "completed"), k.idx_workflow(0, "wf_test")]
    await r.delete(k.log(runs[0]), k.log(runs[1]))  # as their expiry would
    assert await world.expire_indexes() == 2
    assert await r.lrange(k.compacted(0), 0, -1) == runs[2:]
    for index in indexes:
        assert await r.zrange(index, 0, -1) == runs[2:]
    assert [i.run_id for i in (await world.list_runs())[0]] == runs[2:]
    assert await world.expire_indexes() == 0


async def test_the_janitor_drops_only_what_still_heads_the_list(world: RedisWorld) -> None:
    """expire_compacted.lua is fenced on the list's head: runs another janitor already dropped
    (or that do not head the list) are left alone."""
    run_id = await finished_run(world, steps=1)
    assert await world.compact_runs([run_id]) == 1
    k = world.keys
    p = k.partition(run_id)
    state = await snapshot(world)
    keys = [k.compacted(p), k.idx_status(p, "completed")]
    assert await world.core._eval("expire_compacted", keys, ["wrun_other", run_id]) == 0
    assert await snapshot(world) == state


async def test_an_unreadable_compacted_value_is_named_not_raised_by_get_run(
    world: RedisWorld,
) -> None:
    """A damaged value makes get_run show the run with its fields named corrupt (so listing goes
    on), and read_events raise CorruptEventError (so a replay fails the run as for a bad entry)."""
    run_id, other = await finished_run(world), await finished_run(world)
    assert await world.compact_runs([run_id, other]) == 2
    await world.redis.set(world.keys.log(run_id), b"\x80\x04garbage")
    info = await world.get_run(run_id)
    assert info is not None and info.status == "unknown" and "status" in info.corrupt_fields
    listed, _ = await world.list_runs(limit=10)
    assert {r.run_id for r in listed} == {run_id, other}
    with pytest.raises(CorruptEventError, match="unknown format"):
        await world.read_events(run_id)


async def test_output_streams_of_a_compacted_run_stay_readable(world: RedisWorld) -> None:
    """run.readable() and list_streams of a finished run work once it is compacted."""
    run_id = await finished_run(world)
    name = stream_name(run_id)
    for value in ("a", {"b": 2}):
        await world.streams.write(run_id, name, value)
    await world.streams.close(run_id, name)
    assert await world.compact_runs([run_id]) == 1
    assert [v async for v in get_run(run_id).readable()] == ["a", {"b": 2}]
    assert await world.streams.list_streams(run_id) == [name]


async def test_a_run_a_worker_still_holds_is_not_compacted_until_released(
    world: RedisWorld,
) -> None:
    """A leased finished run (its worker may still write its hash: a forwarded wake-up, the
    release) is refused ("leased"), and compact_finished takes it once the lease is given up."""
    run_id = await finished_run(world, steps=1)
    acquired = await world.acquire(run_id, "w1#a", 60_000)
    assert acquired.code == "ok"
    state = await snapshot(world)
    assert await compact_script(world, run_id, f"{acquired.seq}-0") == "leased"
    assert await snapshot(world) == state

    async def compacted_once_released() -> bool:
        await world.compact_finished(0)
        return bool(await world.redis.exists(world.keys.log(run_id)))

    with pytest.raises(TimeoutError):
        await eventually(compacted_once_released, timeout=1.5, what="never while leased")
    assert (await world.release(run_id, "w1#a", acquired.seq))[0] == "ok"
    await eventually(compacted_once_released, timeout=10, what="compacted once released")
