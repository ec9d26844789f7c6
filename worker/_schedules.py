"""Durable schedules: ``create_schedule``, ``get_schedule``, ``list_schedules``, ``Schedule``.

A schedule lives in the World (Redis) and starts runs of one workflow with fixed arguments on a
cron expression or an interval (times: see _schedule_spec.py). Workers fire due ticks
(_schedule_firing.py): each tick starts at most one run however many workers there are, because
its run id is derived from the schedule id and the tick time and run creation is idempotent on the
run id, and the decision on each tick is recorded with the move to the next due time in one script.

``overlap="skip"`` (default) records a tick whose previous run is still pending or running as
skipped; ``"allow"`` starts it anyway. ``catchup="none"`` (default) drops ticks missed while no
worker ran (more than ``LATE_GRACE_MS`` late); ``"one"`` starts one run in their place. Either
way the regular cadence then goes on.

``create_schedule`` checks everything before it stores anything: options that do not parse
(InvalidScheduleError), a workflow function not registered in this process
(WorkflowNotRegisteredError; a workflow *name* is accepted, as ``start()`` accepts it), arguments
that do not fit the workflow (SerializationError), an id that exists (ScheduleExistsError, unless
``replace=True``, which replaces the schedule: new spec, history cleared, paused no more).
The arguments are stored as JSON with the schedule, unencrypted (payload encryption applies to the
runs it starts).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import msgspec

from ._client import get_world, workflow_call
from ._duration import Duration
from ._errors import (
    ScheduleExistsError,
    ScheduleNotFoundError,
    WorkflowError,
    WorkflowNotRegisteredError,
)
from ._registry import WorkflowFunction, has_workflow
from ._schedule_spec import (
    ScheduleRecord,
    ScheduleSpec,
    ScheduleTick,
    check_schedule_id,
    next_tick,
    next_ticks,
    parse_spec,
)
from ._world import World

NEXT_SHOWN = 5  # next fire times describe() gives


@runtime_checkable
class ScheduleStore(Protocol):
    """Schedules' storage: records, a due index, and atomic decisions on ticks."""

    async def create(
        self, schedule_id: str, spec: ScheduleSpec, first_due_ms: int, replace: bool
    ) -> bool: ...
    async def set_paused(self, schedule_id: str, paused: bool, next_due_ms: int) -> bool: ...
    async def delete(self, schedule_id: str) -> bool: ...
    async def fire(
        self, schedule_id: str, due_ms: int, next_due_ms: int, tick: ScheduleTick
    ) -> str: ...
    async def due(self, now_ms: int, count: int) -> list[tuple[str, int]]: ...
    async def earliest_due(self) -> int | None: ...
    async def get(self, schedule_id: str) -> ScheduleRecord | None: ...
    async def list_ids(self) -> list[str]: ...


def schedule_store(world: object) -> ScheduleStore:
    """The schedule storage of ``world``; WorkflowError when its class offers none."""
    store = getattr(world, "schedules", None)
    if not isinstance(store, ScheduleStore):
        raise WorkflowError(f"{type(world).__name__} has no schedule storage")
    return store


class ScheduleDescription(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as ``describe()`` and ``list_schedules()`` show it."""

    schedule_id: str
    workflow: str
    cron: str | None
    every_ms: int | None
    timezone: str
    overlap: str
    catchup: str
    paused: bool
    created_at: datetime
    next_fire_times: list[datetime]  # none while paused
    last_run: str  # the run id of the latest tick that fired ("" before the first)
    recent: list[ScheduleTick]  # the latest decisions, newest first


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def describe_record(record: ScheduleRecord) -> ScheduleDescription:
    spec = record.spec
    upcoming = [] if record.paused else [record.next_due_ms]
    if upcoming:
        upcoming += next_ticks(spec, record.next_due_ms, NEXT_SHOWN - 1)
    return ScheduleDescription(
        schedule_id=record.schedule_id,
        workflow=spec.workflow,
        **{f: getattr(spec, f) for f in ("cron", "every_ms", "timezone", "overlap", "catchup")},
        paused=record.paused,
        created_at=_utc(record.created_ms),
        next_fire_times=[_utc(ms) for ms in upcoming],
        last_run=record.last_run,
        recent=list(record.history),
    )


class Schedule:
    """A handle on a stored schedule (no I/O until used)."""

    def __init__(self, schedule_id: str, world: World | None = None) -> None:
        self.schedule_id = schedule_id
        self._world = world

    def __repr__(self) -> str:
        return f"Schedule({self.schedule_id!r})"

    @property
    def world(self) -> World:
        return self._world or get_world()

    @property
    def _store(self) -> ScheduleStore:
        return schedule_store(self.world)

    async def describe(self) -> ScheduleDescription:
        """Spec, paused or not, next fire times, latest decisions; ScheduleNotFoundError."""
        record = await self._store.get(self.schedule_id)
        if record is None:
            raise ScheduleNotFoundError(self.schedule_id)
        return describe_record(record)

    async def pause(self) -> None:
        """No more ticks until ``resume()`` (a tick being fired at this moment may still run)."""
        if not await self._store.set_paused(self.schedule_id, True, 0):
            raise ScheduleNotFoundError(self.schedule_id)

    async def resume(self) -> None:
        """Fire again from the next tick after now; ticks passed while paused are not fired."""
        record = await self._store.get(self.schedule_id)
        if record is None:
            raise ScheduleNotFoundError(self.schedule_id)
        due = next_tick(record.spec, await self.world.server_time_ms())
        if not await self._store.set_paused(self.schedule_id, False, due):
            raise ScheduleNotFoundError(self.schedule_id)

    async def delete(self) -> None:
        """Delete the schedule and its history (the runs it started stay)."""
        if not await self._store.delete(self.schedule_id):
            raise ScheduleNotFoundError(self.schedule_id)


def _check_registered(workflow: Any) -> None:
    """A workflow given as a function must be a ``@workflow`` registered in this process."""
    if isinstance(workflow, str):
        return
    if isinstance(workflow, WorkflowFunction) and has_workflow(workflow.name):
        return
    name = getattr(workflow, "__qualname__", None) or repr(workflow)
    raise WorkflowNotRegisteredError(name)


async def create_schedule(
    schedule_id: str,
    workflow: Any,
    *args: Any,
    cron: str | None = None,
    every: Duration | None = None,
    timezone: str = "UTC",
    overlap: str = "skip",
    catchup: str = "none",
    replace: bool = False,
    world: World | None = None,
    **kwargs: Any,
) -> Schedule:
    """Store a schedule that starts ``workflow(*args, **kwargs)`` on ``cron`` or ``every``.

    Everything is checked before anything is stored (see the module docstring for the errors).
    The first tick is the first one after now (the server's clock).
    """
    check_schedule_id(schedule_id)
    _check_registered(workflow)
    w = world or get_world()
    name, input_json = workflow_call(w, workflow, args, kwargs)
    spec = parse_spec(
        name,
        input_json,
        cron=cron,
        every=every,
        timezone=timezone,
        overlap=overlap,
        catchup=catchup,
    )
    store = schedule_store(w)
    first = next_tick(spec, await w.server_time_ms())
    if not await store.create(schedule_id, spec, first, replace):
        raise ScheduleExistsError(schedule_id)
    return Schedule(schedule_id, world=w)


async def get_schedule(schedule_id: str, world: World | None = None) -> Schedule:
    """A handle on an existing schedule; ScheduleNotFoundError when there is none."""
    w = world or get_world()
    if await schedule_store(w).get(schedule_id) is None:
        raise ScheduleNotFoundError(schedule_id)
    return Schedule(schedule_id, world=w)


async def list_schedules(world: World | None = None) -> list[ScheduleDescription]:
    """Every schedule, oldest first, described (``get_schedule(d.schedule_id)`` for a handle).
    A schedule stored in a form that cannot be read is left out of the listing."""
    store = schedule_store(world or get_world())
    out: list[ScheduleDescription] = []
    for schedule_id in await store.list_ids():
        try:
            record = await store.get(schedule_id)
        except WorkflowError:
            continue
        if record is not None:
            out.append(describe_record(record))
    return out
