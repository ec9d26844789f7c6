"""Workers' presence and health: their status reports, the health-check stream, the server clock,
every partition's queue and the servers' configuration (``wf health``, a worker's start).

A worker publishes a status report (its duties and when each last succeeded) every few seconds
into one hash; ``wf health`` reads it to name a worker whose duty has gone quiet. Health checks
travel on a stream of their own that every worker reads ahead of its wake-ups, so a backlog of
work never makes a busy worker look dead. Checks are probes, not work: they are read with NOACK
(nothing to reclaim when a worker dies; the asker times out and asks again) and the stream is
capped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster

from worker.world import WorldUnavailableError

from ._client import stream_replies, text, text_dict
from ._core import RedisCore
from ._keys import GROUP
from ._retry import with_retry

HEALTH_STREAM_MAXLEN = 1000


class RedisPresence:
    """Workers' presence of a RedisWorld (composed: ``RedisWorld.presence``)."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def publish_worker_status(self, worker: str, status: str) -> None:
        await self.core._ready()
        await with_retry(self.core.redis.hset, self.core.keys.workers(), worker, status)

    async def forget_workers(self, workers: list[str]) -> None:
        await self.core._ready()
        if workers:
            await with_retry(self.core.redis.hdel, self.core.keys.workers(), *workers)

    async def worker_statuses(self) -> dict[str, str]:
        """Worker name -> its last status report (JSON text), live and dead workers alike."""
        await self.core._ready()
        return text_dict(await with_retry(self.core.redis.hgetall, self.core.keys.workers()))

    async def enqueue_health_check(self, check_id: str) -> None:
        """A health check that the first worker to read it answers (see ``worker._health``)."""
        await self.core._ready()
        await with_retry(
            self.core.redis.xadd,
            self.core.keys.health_stream(),
            {"check": check_id},
            maxlen=HEALTH_STREAM_MAXLEN,
            approximate=True,
        )

    async def read_health_checks(self, consumer: str, block_ms: int) -> list[tuple[str, str]]:
        """(message id, check id) of new health checks for this worker."""
        await self.core._ready()
        reply = await with_retry(
            self.core.redis.xreadgroup,
            GROUP,
            consumer,
            {self.core.keys.health_stream(): ">"},
            count=100,
            block=block_ms,
            noack=True,
        )
        return [
            (mid, fields.get("check", ""))
            for _, rows in stream_replies(reply)
            for mid, fields in rows
        ]

    async def done_health_checks(self, message_ids: list[str]) -> None:
        await self.core._ready()
        if message_ids:
            await with_retry(self.core.redis.xdel, self.core.keys.health_stream(), *message_ids)

    async def ensure_health_group(self) -> None:
        await self.core._ready()
        try:
            await with_retry(
                self.core.redis.xgroup_create,
                self.core.keys.health_stream(),
                GROUP,
                id="$",
                mkstream=True,
            )
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def server_time_ms(self) -> int:
        """The Redis server's clock (TIME), the one clock that decides when timers are due."""
        await self.core._ready()
        sec, usec = await with_retry(self.core.redis.time)
        return int(sec) * 1000 + int(usec) // 1000

    async def partition_health(self) -> list[dict[str, Any]]:
        """Each partition's ready streams (its priority bands summed), asked on the node that
        holds it (concurrently):
        ``{"partition", "length", "pending", "lag"}``, or ``{"partition", "error"}`` when its node
        cannot be reached or answers with an error (within the retry window of _retry.py); an
        ACL that denies XINFO or XLEN gives ``"unchecked"`` instead (the queue is not at fault).
        A stream deleted by hand reads as empty (its group comes back at the next read)."""
        await self.core._ready()

        async def one(p: int) -> dict[str, Any]:
            row: dict[str, Any] = {"partition": p, "length": 0, "pending": 0, "lag": 0}
            for stream in self.core.keys.ready_bands(p):  # summed over the priority bands
                try:
                    groups = await with_retry(self.core.redis.xinfo_groups, stream)
                    length = await with_retry(self.core.redis.xlen, stream)
                except rexc.NoPermissionError as exc:  # an ACL from before this check: no fault
                    return {**row, "unchecked": str(exc)}
                except rexc.ResponseError as exc:
                    if "no such key" not in str(exc):
                        return {"partition": p, "error": f"{type(exc).__name__}: {exc}"}
                    continue  # no run there yet
                except (rexc.RedisError, WorldUnavailableError) as exc:
                    return {"partition": p, "error": f"{type(exc).__name__}: {exc}"}
                group = next((g for g in groups if text(g.get("name")) == GROUP), {})
                lag = group.get("lag")
                row["length"] += int(length)
                row["pending"] += int(group.get("pending") or 0)
                row["lag"] = None if lag is None or row["lag"] is None else row["lag"] + int(lag)
            return row

        return list(await asyncio.gather(*(one(p) for p in range(self.core.keys.partitions))))

    async def server_warnings(self) -> list[str]:
        """What in the server's configuration puts runs at risk (empty when all is well); on a
        cluster, every primary is asked and a warning names the primary it concerns.

        Eviction silently deletes run keys; without AOF a restart loses every run. An ACL user
        without CONFIG GET (the recommended one) gets a warning that the check did not run;
        managed services that refuse CONFIG in other ways report nothing. With
        ``WORKFLOW_REPLICA_ACKS``, a primary with fewer replicas than that makes every write
        wait: said too.
        """
        await self.core._ready()
        client: Any = self.core.redis
        if not isinstance(client, RedisCluster):
            return await self._config_warnings(client.config_get, "") + (
                await self._replica_warnings(client.execute_command, "")
            )
        await with_retry(client.initialize)
        warnings: list[str] = []
        for node in client.get_primaries():

            async def config_get(pattern: str, node: Any = node) -> dict[str | None, str | None]:
                reply: dict[str | None, str | None] = await client.config_get(
                    pattern, target_nodes=node
                )
                return reply

            async def command(*args: Any, node: Any = node) -> Any:
                return await client.execute_command(*args, target_nodes=node)

            warnings += await self._config_warnings(config_get, f"{node.name}: ")
            warnings += await self._replica_warnings(command, f"{node.name}: ")
        return warnings

    async def _replica_warnings(
        self, command: Callable[..., Awaitable[Any]], where: str
    ) -> list[str]:
        """A primary that has fewer replicas acknowledging than WORKFLOW_REPLICA_ACKS asks for
        (``WAIT N 200``: what the engine's user may send, where INFO may be denied)."""
        wanted = self.core.replica_acks
        if not wanted:
            return []
        try:
            acked = int(await with_retry(command, "WAIT", wanted, 200))
        except rexc.ResponseError as exc:
            return [f"{where}replica check could not run ({exc}); WORKFLOW_REPLICA_ACKS needs WAIT"]
        if acked >= wanted:
            return []
        return [
            f"{where}WORKFLOW_REPLICA_ACKS={wanted} but {acked} replica(s) acknowledge this "
            "primary: every write that waits for replicas waits until enough link"
        ]

    @staticmethod
    async def _config_warnings(
        config_get: Callable[[str], Awaitable[dict[str | None, str | None]]], where: str
    ) -> list[str]:
        try:
            policy = await with_retry(config_get, "maxmemory-policy")
            aof = await with_retry(config_get, "appendonly")
        except rexc.NoPermissionError:
            return [
                f"{where}configuration check could not run: the ACL denies CONFIG GET to this "
                "user; check maxmemory-policy (noeviction) and appendonly (yes) on the server by hand"
            ]
        except rexc.ResponseError:
            return []
        warnings = []
        value = policy.get("maxmemory-policy") or "noeviction"
        if value != "noeviction":
            warnings.append(
                f"{where}maxmemory-policy is {value!r}: Redis may evict run keys; "
                "set it to 'noeviction'"
            )
        if (aof.get("appendonly") or "yes") != "yes":
            warnings.append(f"{where}appendonly is 'no': a Redis restart loses runs; enable AOF")
        return warnings
