"""Runs whose event log was altered so that it no longer folds: they fail naming the entry."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e import fault_workflows as fw
from tests.e2e.test_stored_errors import Fields, rewrite_log, still_serves
from tests.support import eventually, hook_is_live
from worker import Run, WorkflowRunFailedError, start
from worker._errors import CorruptEventError
from world_redis import RedisWorld

MODULE = "tests.e2e.fault_workflows"
FOREIGN_STEP = "step_01ARZ3NDEKTSV4RRFFQ69G5FAV"


async def parked_run(token: str) -> Run:
    """A run of echo_then_hook whose step completed and which now waits on its hook."""
    run = await start(fw.echo_then_hook, token)

    await eventually(lambda: hook_is_live(token), 20, what="the run to park on its hook")
    return run


async def assert_fails_naming(world: RedisWorld, run: Run, *parts: str) -> None:
    """The run fails with a CorruptEventError whose message holds every part; the error is stored."""
    with pytest.raises(WorkflowRunFailedError) as err:
        await run.result(timeout=20)
    cause = err.value.__cause__
    assert isinstance(cause, CorruptEventError), err.value
    for part in parts:
        assert part in str(cause)
    info = await run.info()
    assert info.status == "failed" and info.error and "CorruptEventError" in info.error


def entry_of(etype: str, change: Callable[[Fields], Fields | None]) -> Callable[..., Fields | None]:
    """A rewrite that applies ``change`` to the first entry of type ``etype``."""
    done: list[str] = []

    def rewrite(entry_id: str, fields: Fields) -> Fields | None:
        if fields["type"] != etype or done:
            return fields
        done.append(entry_id)
        return change(fields)

    rewrite.done = done  # type: ignore[attr-defined]
    return rewrite


CORRUPTIONS: dict[str, tuple[str, Callable[[Fields], Fields | None], list[str]]] = {
    "unknown_step": (
        "step_completed",
        lambda f: {**f, "corr": FOREIGN_STEP},
        ["(step_completed, " + FOREIGN_STEP, "no step_created"],
    ),
    "missing_field": (
        "step_created",
        lambda f: {k: v for k, v in f.items() if k != "name"},
        ["(step_created, step_", "does not parse", "name"],
    ),
    "not_json": (
        "step_completed",
        lambda f: {**f, "result": '{"not json'},
        ["(step_completed, step_", "cannot deserialize field 'result'"],
    ),
    "deleted": ("step_started", lambda f: None, ["(step_completed, step_", "gap in log"]),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
async def test_altered_log_fails_the_run_naming_the_entry(
    world: RedisWorld,
    start_worker,  # type: ignore[no-untyped-def]
    kind: str,
) -> None:
    """A parked run whose log was altered (unknown step, missing field, non-JSON value, deleted
    entry) fails when a worker replays it, with a CorruptEventError naming the entry's stream id,
    type and problem stored in the run; the worker lives on."""
    etype, change, parts = CORRUPTIONS[kind]
    first = start_worker(MODULE)
    run = await parked_run(f"corrupt-{kind}")
    assert first.stop() == 0  # the next worker replays the run from its log, not from a cache
    rewrite = entry_of(etype, change)
    await rewrite_log(world, run.run_id, rewrite)
    entry_id = rewrite.done[0]  # type: ignore[attr-defined]
    if kind == "deleted":  # the gap shows at the entry after the deleted one
        entry_id = f"{int(entry_id.split('-')[0]) + 1}-0"
    second = start_worker(MODULE)
    await world.redis.xadd(world.keys.ready(0), {"run": run.run_id, "reason": "test"})
    await assert_fails_naming(world, run, f"log entry {entry_id} ", *parts)
    await still_serves(second)


async def test_event_appended_for_an_unknown_step_fails_a_cached_run(
    world: RedisWorld,
    start_worker,  # type: ignore[no-untyped-def]
) -> None:
    """A step_completed for an unknown step appended to a run its worker holds in memory fails
    the run with a CorruptEventError naming the entry; the worker lives on."""
    worker = start_worker(MODULE)
    run = await parked_run("corrupt-appended")
    seq = (await run.info()).seq + 1
    fields = {"type": "step_completed", "id": "evnt_x", "ts": "1", "corr": FOREIGN_STEP}
    await world.redis.xadd(world.keys.events(run.run_id), fields, id=f"{seq}-0")  # type: ignore[arg-type]
    await world.redis.hset(world.keys.run(run.run_id), "seq", seq)
    await world.redis.xadd(world.keys.ready(0), {"run": run.run_id, "reason": "test"})
    await assert_fails_naming(world, run, f"log entry {seq}-0 (step_completed", "no step_created")
    await still_serves(worker)
