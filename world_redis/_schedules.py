"""The Redis side of schedules (see worker/_schedules.py for the rules).

Keys, all with the tag ``{sched}`` so that each script touches one slot:

    wf:{sched}:schedules              zset    schedule id -> created ms (the listing)
    wf:{sched}:due                    zset    schedule id -> next due ms; paused ones absent
    wf:{sched}:schedule:<id>          hash    spec (JSON ScheduleSpec), paused "0"/"1",
                                              next_due ms, last_run (run id), last_tick ms,
                                              created_at ms, history: its latest decisions
                                              (JSON array of ScheduleTick, newest first,
                                              HISTORY_LENGTH of them)

Only hash, sorted-set and key commands: the ones the engine's ACL user has (deploy/).

Scripts: create_schedule.lua, pause_schedule.lua, delete_schedule.lua, fire_schedule.lua.
"""

from __future__ import annotations

from typing import Any

import msgspec

from worker.world import ScheduleRecord, ScheduleSpec, ScheduleTick, WorkflowError

from ._core import RedisCore
from ._queue import _s
from ._retry import with_retry

HISTORY_LENGTH = 20
_SPEC = msgspec.json.Decoder(ScheduleSpec)
_HISTORY = msgspec.json.Decoder(list[ScheduleTick])
_JSON = msgspec.json.Encoder()


class RedisSchedules:
    """Schedules of a RedisWorld (composed: ``RedisWorld.schedules``)."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def _eval(self, name: str, schedule_id: str, keys: list[str], args: list[Any]) -> Any:
        await self.core._ready()
        return await self.core._eval(name, keys, [schedule_id, *args])

    async def create(
        self, schedule_id: str, spec: ScheduleSpec, first_due_ms: int, replace: bool
    ) -> bool:
        """Store the schedule, due at ``first_due_ms``; False when the id exists (no replace)."""
        k = self.core.keys
        keys = [k.schedule(schedule_id), k.schedules(), k.schedules_due()]
        args = [_JSON.encode(spec).decode(), first_due_ms, "1" if replace else "0"]
        reply = await self._eval("create_schedule", schedule_id, keys, args)
        return _s(reply[0]) == "created"

    async def set_paused(self, schedule_id: str, paused: bool, next_due_ms: int) -> bool:
        """Pause, or resume due at ``next_due_ms``; False when there is no such schedule."""
        k = self.core.keys
        keys = [k.schedule(schedule_id), k.schedules_due()]
        reply = await self._eval(
            "pause_schedule", schedule_id, keys, ["1" if paused else "0", next_due_ms]
        )
        return _s(reply[0]) == "ok"

    async def delete(self, schedule_id: str) -> bool:
        k = self.core.keys
        keys = [k.schedule(schedule_id), k.schedules(), k.schedules_due()]
        return bool(await self._eval("delete_schedule", schedule_id, keys, []))

    async def fire(
        self,
        schedule_id: str,
        due_ms: int,
        next_due_ms: int,
        tick: ScheduleTick,
    ) -> str:
        """Record ``tick`` for the schedule due at ``due_ms`` and move it to ``next_due_ms``:
        "ok", or "stale" / "paused" / "no_schedule" (nothing changed)."""
        k = self.core.keys
        keys = [k.schedule(schedule_id), k.schedules_due()]
        args = [
            due_ms,
            next_due_ms,
            tick.action,
            tick.tick_ms,
            tick.run_id,
            tick.missed,
            HISTORY_LENGTH,
        ]
        reply = await self._eval("fire_schedule", schedule_id, keys, args)
        return _s(reply[0])

    async def due(self, now_ms: int, count: int) -> list[tuple[str, int]]:
        """Unpaused schedules due at ``now_ms``: (id, due ms), earliest first."""
        await self.core._ready()
        rows = await with_retry(
            self.core.redis.zrangebyscore,
            self.core.keys.schedules_due(),
            "-inf",
            now_ms,
            start=0,
            num=count,
            withscores=True,
        )
        return _scored(rows)

    async def earliest_due(self) -> int | None:
        await self.core._ready()
        rows = await with_retry(
            self.core.redis.zrange, self.core.keys.schedules_due(), 0, 0, withscores=True
        )
        found = _scored(rows)
        return found[0][1] if found else None

    async def get(self, schedule_id: str) -> ScheduleRecord | None:
        """The schedule, or None; WorkflowError when its stored spec cannot be read."""
        await self.core._ready()
        fields = await with_retry(self.core.redis.hgetall, self.core.keys.schedule(schedule_id))
        if not fields:
            return None
        return _record(schedule_id, {_s(a): _s(b) for a, b in fields.items()})

    async def list_ids(self) -> list[str]:
        await self.core._ready()
        ids = await with_retry(self.core.redis.zrange, self.core.keys.schedules(), 0, -1)
        return [_s(i) for i in ids]


def _scored(rows: Any) -> list[tuple[str, int]]:
    """(member, score) pairs of a WITHSCORES reply."""
    return [(_s(row[0]), int(row[1])) for row in rows if isinstance(row, tuple | list)]


def _record(schedule_id: str, fields: dict[str, str]) -> ScheduleRecord:
    try:
        spec = _SPEC.decode(fields.get("spec", ""))
        ticks = _HISTORY.decode(fields.get("history") or "[]")
        return ScheduleRecord(
            schedule_id=schedule_id,
            spec=spec,
            paused=fields.get("paused") == "1",
            next_due_ms=int(fields.get("next_due") or 0),
            last_run=fields.get("last_run", ""),
            created_ms=int(fields.get("created_at") or 0),
            history=ticks,
        )
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise WorkflowError(
            f"schedule {schedule_id!r} is stored in a form that cannot be read ({exc}); "
            f"delete it (wf schedule delete {schedule_id}) and create it again"
        ) from None
