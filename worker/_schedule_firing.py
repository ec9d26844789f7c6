"""The worker duty that fires schedules' due ticks (rules: _schedules.py, times: _schedule_spec.py).

Every worker runs it. It sleeps until the earliest due tick (at most ``MAX_SLEEP_S``, so a new or
resumed schedule is seen within that), reads the due schedules by the server's clock, and for each
decides: start the tick's run, or record it as skipped (overlap) or missed (catchup). A run is
created before its tick is recorded, under the id the schedule id and tick time fix; the record is
one script that also moves the schedule to its next tick, and only if it still waits for this one.
So two workers on the same tick create one run and record it once, and a worker that dies between
the two steps leaves the tick due for the next one, whose create finds the run already there.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._deployments import resolve_deployment
from ._errors import WorkflowError
from ._schedule_spec import (
    ScheduleRecord,
    ScheduleTick,
    TickAction,
    overlap_blocks,
    plan_ticks,
    schedule_run_id,
)
from ._schedules import ScheduleStore, schedule_store
from ._world import World

if TYPE_CHECKING:
    from ._supervisor import Duty
    from ._worker import Worker

MAX_SLEEP_S = 1.0
MIN_SLEEP_S = 0.01
FAILED_SLEEP_S = 1.0  # after a tick could not be decided: not a tight loop on a bad schedule
DUE_BATCH = 100


async def schedule_loop(worker: Worker, duty: Duty) -> None:
    """Fire due ticks of every schedule, until the worker stops."""
    if not hasattr(worker.world, "schedules"):  # a World without schedules: nothing to fire
        while True:
            duty.ok()
            await asyncio.sleep(60)
    store = schedule_store(worker.world)
    while True:
        wait_s = await fire_due(worker.world, store, worker.log)
        duty.ok()
        await asyncio.sleep(wait_s)


async def fire_due(world: World, store: ScheduleStore, log: Any) -> float:
    """Decide every due tick; how long to sleep before the next look."""
    now = await world.server_time_ms()
    due = await store.due(now, DUE_BATCH)
    failed = False
    for schedule_id, due_ms in due:
        try:
            await fire_one(world, store, schedule_id, due_ms, now, log)
        except WorkflowError as exc:  # one bad schedule never stops the others
            failed = True
            log.error("schedule_tick_failed", schedule_id=schedule_id, error=str(exc))
    if len(due) >= DUE_BATCH:
        return 0.0
    earliest = await store.earliest_due()
    if failed or earliest is None:
        return MAX_SLEEP_S
    at = await world.server_time_ms() if due else now  # deciding took round trips
    return min(MAX_SLEEP_S, max(MIN_SLEEP_S, (earliest - at) / 1000.0))


async def fire_one(
    world: World, store: ScheduleStore, schedule_id: str, due_ms: int, now_ms: int, log: Any
) -> str:
    """Decide the schedule's due tick; the script's answer ("ok", "stale", ...)."""
    record = await store.get(schedule_id)
    if record is None or record.paused or record.next_due_ms != due_ms:
        return "stale"  # deleted, paused or decided since the index was read
    plan = plan_ticks(record.spec, due_ms, now_ms)
    action: TickAction = "missed"
    run_id = ""
    if plan.fire is not None:
        if overlap_blocks(record.spec.overlap, await _last_status(world, record)):
            action = "skipped"
        else:
            run_id = await _create_tick_run(world, record, plan.fire)
            action = "fired"
    tick = ScheduleTick(
        tick_ms=plan.fire if plan.fire is not None else plan.latest,
        action=action,
        run_id=run_id,
        missed=plan.missed,
    )
    code = await store.fire(schedule_id, due_ms, plan.next_due, tick)
    log.info(
        f"schedule_tick_{action}" if code == "ok" else "schedule_tick_taken",
        schedule_id=schedule_id,
        tick_ms=tick.tick_ms,
        run_id=run_id,
        missed=plan.missed,
        code=code,
    )
    return code


async def _last_status(world: World, record: ScheduleRecord) -> str | None:
    if not record.last_run:
        return None
    info = await world.get_run(record.last_run)
    return None if info is None else info.status


async def _create_tick_run(world: World, record: ScheduleRecord, tick_ms: int) -> str:
    spec = record.spec
    run_id = schedule_run_id(record.schedule_id, tick_ms)
    deployment = await resolve_deployment(world, spec.workflow, None)
    await world.create_run(run_id, spec.workflow, spec.input, deployment)
    return run_id
