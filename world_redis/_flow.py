"""The Redis side of flow control: slots, waiters and rate logs of each limit (see worker/_flow.py).

Keys (one slot per limit, tag ``{fc:<limit id>}``; the registry in a slot of its own):

    wf:{fc}:limits              zset  limit id -> ms of its last registration (what sweepers visit)
    wf:{fc:<limit>}:holders     zset  member -> ms when its hold lapses ("<run>|<step>" or "<run>")
    wf:{fc:<limit>}:waiting     zset  parked members: higher priority first, then arrival
    wf:{fc:<limit>}:starts      zset  rate log: "<member>|<attempt>" -> start ms
    wf:{fc:<limit>}:limit       hash  kind, concurrency, rate, window_ms, reserve_ms, used

A limit covers runs of every partition, so its scripts never touch a run's keys: they answer
the members to wake, and the caller adds a wake-up on each run's ready stream (``wake``). A lost
wake-up is repaired by the sweeper: a slot handed to a waiter is reserved for one lease; when
it lapses unclaimed, the sweeper frees it and wakes its run again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from worker.world import FlowGrant, flow_code

from ._core import RedisCore
from ._queue import _s
from ._retry import with_retry

SWEEP_BATCH = 50  # limits swept concurrently


def _ms() -> int:
    return int(time.time() * 1000)


def run_of(member: str) -> str:
    """The run id of a holder or waiter (``<run id>`` or ``<run id>|<step id>``)."""
    return member.split("|", 1)[0]


class RedisFlow:
    """Flow-control limits of a RedisWorld (composed: ``RedisWorld.flow``)."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core

    @property
    def redis(self) -> Any:
        return self.core.redis

    async def register(self, limit: str) -> None:
        """Put ``limit`` on the sweepers' list (again: its score is its last registration)."""
        await self.core._ready()
        await with_retry(self.redis.zadd, self.core.keys.flow_registry(), {limit: _ms()})

    async def acquire(
        self,
        limit: str,
        member: str,
        *,
        kind: str,
        concurrency: int,
        hold_ms: int,
        rate: int,
        window_ms: int,
        priority: int,
        tag: str,
        reserve_ms: int,
        clock_offset_ms: int = 0,
    ) -> FlowGrant:
        """A slot of ``limit`` for ``member``, or its place in line (flow_acquire.lua).
        ``clock_offset_ms``: how far a test environment moved the workflow clock (rate windows
        count on it)."""
        await self.core._ready()
        holders, waiting, starts, info = self.core.keys.flow_keys(limit)
        args = [member, concurrency, hold_ms, rate, window_ms, priority, tag, kind, reserve_ms]
        args.append(clock_offset_ms)
        reply = await self.core._eval("flow_acquire", [holders, waiting, starts, info], args)
        woken = tuple(_s(m) for m in reply[2:])
        return FlowGrant(code=flow_code(_s(reply[0])), retry_at_ms=int(reply[1]), woken=woken)

    async def release(self, limit: str, member: str) -> list[str]:
        """Give up ``member``'s slot; the members handed a free slot (flow_release.lua)."""
        await self.core._ready()
        holders, waiting, _, info = self.core.keys.flow_keys(limit)
        reply = await self.core._eval("flow_release", [holders, waiting, info], [member])
        return [_s(m) for m in reply[1:]]

    async def renew(self, limit: str, members: Sequence[str], hold_ms: int) -> int:
        """Extend the holds of ``members`` by ``hold_ms`` from now (flow_renew.lua)."""
        await self.core._ready()
        if not members:
            return 0
        holders = self.core.keys.flow_keys(limit)[0]
        return int(await self.core._eval("flow_renew", [holders], [hold_ms, *members]))

    async def sweep(
        self, owner: str, every_ms: int, idle_ms: int
    ) -> list[tuple[str, list[str], list[str]]]:
        """Every registered limit checked once (flow_sweep.lua): (limit, members to wake, runs
        whose hold lapsed). Limits empty and idle for ``idle_ms`` leave the registry.

        One sweep per ``every_ms`` for all workers: the first to take the turn (SET NX PX) does
        it, the others find nothing to do; a sweeper that dies leaves the turn to lapse."""
        await self.core._ready()
        registry = self.core.keys.flow_registry()
        turn = await with_retry(
            self.redis.set, self.core.keys.flow_sweep_turn(), owner, nx=True, px=every_ms
        )
        if not turn:
            return []
        listed = await with_retry(self.redis.zrange, registry, 0, -1, withscores=True)
        out: list[tuple[str, list[str], list[str]]] = []

        async def one(limit: str, score: float) -> None:
            keys = list(self.core.keys.flow_keys(limit))
            state, woken, lapsed = await self.core._eval("flow_sweep", keys, [idle_ms])
            if _s(state) == "gone":
                await self.core._eval("flow_forget", [registry], [limit, int(score)])
            out.append((limit, [_s(m) for m in woken], [_s(m) for m in lapsed]))

        for at in range(0, len(listed), SWEEP_BATCH):
            batch = listed[at : at + SWEEP_BATCH]
            await asyncio.gather(*(one(_s(raw), score) for raw, score in batch))
        return out

    async def wake(self, run_ids: Sequence[str], reason: str) -> None:
        """A wake-up for each run on its partition's ready stream of its band (duplicates
        coalesce)."""
        await self.core._ready()
        for run_id in dict.fromkeys(run_ids):
            if not run_id.startswith("wrun_"):
                continue
            stream = await self.core.ready_of(run_id)
            await with_retry(self.redis.xadd, stream, {"run": run_id, "reason": reason})

    async def arm_timer(self, run_id: str, corr: str, due_ms: int) -> None:
        """Wake ``run_id`` at ``due_ms`` (server clock) through its partition's timers (whose
        clock runs ahead by the partition's offset in a test environment skipping time)."""
        await self.core._ready()
        keys = self.core.keys
        p = keys.partition(run_id)
        offset = int(await with_retry(self.redis.get, keys.clock(p)) or 0)
        member = f"{run_id}|flow:{corr}"
        await with_retry(self.redis.zadd, keys.timers(p), {member: due_ms + offset})

    async def limits(self) -> list[dict[str, Any]]:
        """Each registered limit: its settings, slots in use, waiters and starts in its window."""
        await self.core._ready()
        out: list[dict[str, Any]] = []
        names = await with_retry(self.redis.zrange, self.core.keys.flow_registry(), 0, -1)
        for raw in names:
            limit = _s(raw)
            holders, waiting, starts, info = self.core.keys.flow_keys(limit)
            settings = await with_retry(self.redis.hgetall, info)
            out.append(
                {
                    "limit": limit,
                    "kind": _s(settings.get("kind", "")),
                    "concurrency": int(settings.get("concurrency") or 0),
                    "rate": int(settings.get("rate") or 0),
                    "window_ms": int(settings.get("window_ms") or 0),
                    "holders": int(await with_retry(self.redis.zcard, holders)),
                    "waiting": int(await with_retry(self.redis.zcard, waiting)),
                    "starts": int(await with_retry(self.redis.zcard, starts)),
                }
            )
        return out
