"""What Prometheus gauges read from Redis: per partition, the timers due, the dead letters and the
runs in each status (one slot per command, partitions read concurrently)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from worker.world import RUN_STATUSES

from ._retry import with_retry

if TYPE_CHECKING:
    from ._core import RedisCore


class PartitionGauges(msgspec.Struct, frozen=True, kw_only=True):
    partition: int
    timers_due: int  # durable sleeps and retry delays whose time has come (not yet promoted)
    dead_letters: int  # entries of the partition's dead-letter stream
    runs: dict[str, int]  # runs in each status (finished ones until their retention ends)


class RedisGauges:
    """Reads of the World for metrics (see worker/_metrics.py)."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def partition_gauges(self) -> list[PartitionGauges]:
        await self.core._ready()
        sec, usec = await with_retry(self.core.redis.time)
        now_ms = int(sec) * 1000 + int(usec) // 1000
        return list(
            await asyncio.gather(
                *(self._partition(p, now_ms) for p in range(self.core.keys.partitions))
            )
        )

    async def _partition(self, p: int, now_ms: int) -> PartitionGauges:
        keys, redis = self.core.keys, self.core.redis
        due, dead, *counts = await asyncio.gather(
            with_retry(redis.zcount, keys.timers(p), "-inf", now_ms),
            with_retry(redis.xlen, keys.dlq(p)),
            *(with_retry(redis.zcard, keys.idx_status(p, s)) for s in RUN_STATUSES),
        )
        return PartitionGauges(
            partition=p,
            timers_due=int(due),
            dead_letters=int(dead),
            runs={s: int(n) for s, n in zip(RUN_STATUSES, counts, strict=True)},
        )
