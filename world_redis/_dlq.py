"""The dead-letter streams (``<prefix>:{pN}:dlq``) as operators see them: list, drop, replay.

An entry is a wake-up, a pool task or an undecodable entry set aside, with the reason, the
delivery count and the host that set it aside (see _queue.py and _pools.py). Entries are named
``<partition>:<entry id>``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from ._client import entries
from ._retry import with_retry

if TYPE_CHECKING:
    from ._core import RedisCore


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    partition: int
    entry_id: str
    at_ms: int  # when it was set aside (the entry id's time)
    run_id: str  # "" when the entry names no run (an undecodable entry)
    step_id: str
    queue: str
    reason: str
    deliveries: int
    fields: dict[str, str]

    @property
    def name(self) -> str:
        return f"{self.partition}:{self.entry_id}"


def _letter(partition: int, entry_id: str, fields: dict[str, str]) -> DeadLetter:
    deliveries = fields.get("deliveries", "0")
    return DeadLetter(
        partition=partition,
        entry_id=entry_id,
        at_ms=int(entry_id.split("-", 1)[0]),
        run_id=fields.get("run", "") if fields.get("run", "").startswith("wrun_") else "",
        step_id=fields.get("step", ""),
        queue=fields.get("queue", ""),
        reason=fields.get("reason", ""),
        deliveries=int(deliveries) if deliveries.isdigit() else 0,
        fields=fields,
    )


class RedisDeadLetters:
    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def list(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of every partition (those waiting longest), oldest
        first. (XRANGE: the deploy ACL grants no XREVRANGE, see deploy/redis-users.acl.)"""
        await self.core._ready()

        async def oldest(p: int) -> list[DeadLetter]:
            rows = await with_retry(
                self.core.redis.xrange, self.core.keys.dlq(p), "-", "+", count=limit
            )
            return [_letter(p, eid, fields) for eid, fields in entries(rows)]

        pages = await asyncio.gather(*(oldest(p) for p in range(self.core.keys.partitions)))
        return sorted((d for page in pages for d in page), key=lambda d: d.at_ms)[:limit]

    async def get(self, partition: int, entry_id: str) -> DeadLetter | None:
        await self.core._ready()
        rows = await with_retry(
            self.core.redis.xrange, self.core.keys.dlq(partition), entry_id, entry_id, count=1
        )
        found = entries(rows)
        return _letter(partition, entry_id, found[0][1]) if found else None

    async def drop(self, partition: int, entry_id: str) -> bool:
        await self.core._ready()
        return bool(await with_retry(self.core.redis.xdel, self.core.keys.dlq(partition), entry_id))

    async def requeue(self, letter: DeadLetter) -> None:
        """A fresh wake-up for the letter's run, then the letter deleted (a replay twice makes
        one more wake-up, which a worker handles like any other)."""
        await self.core._ready()
        stream = await self.core.ready_of(letter.run_id)  # the run's band
        fields = {"run": letter.run_id, "reason": "replayed"}
        await with_retry(self.core.redis.xadd, stream, fields)
        await self.drop(letter.partition, letter.entry_id)
