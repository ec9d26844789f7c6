"""The Redis side of worker pools: one stream of pool tasks per queue and partition.

Keys (all in the run's partition, so every command touches one slot):

    wf:{pN}:q:<queue>   stream  "run R's step S is due" (fields run, step, name, queue), and
                                wake-ups of runs of workflows declared with the queue (fields run,
                                reason: forwarded from the ready stream), consumer group "workers";
                                the queue ``default`` has no such stream: it is the partition's
                                ready stream (wake-ups of runs)
    wf:{pN}:queues      set     the queue names the partition's runs handed steps or runs to
    wf:{pN}:run:<id>    hash    field "queue": the run's workflow queue, once forwarded
    wf:{pN}:run:<id>:ent        "<step>|queued" -> "<attempts so far>|<queue>|<entry id>": the step
                                was handed to its queue for that attempt count (route.lua);
                                "<step>|claim" -> "<claim token>|<entry id>": the pool worker
                                holding the step (commit.lua)

Flow. The run's holder (a ``default`` worker replaying the run) hands each due step that has a
queue to ``route.lua``, which adds one task entry per attempt count (a second replay adds none).
A pool worker reads its queues' streams (one XREADGROUP per stream, never several partitions in
one command), then commits ``step_started`` carrying a fresh claim token and the task's entry id;
commit.lua records the claim in the entity hash. The step's result (``step_completed``,
``step_retrying``, ``step_failed``) carries the claim and is refused ("stale") unless that claim is
still the recorded one, and it wakes the run (a wake-up on its ready stream). The entry is
acknowledged (XACK + XDEL) after the result is committed.

Recovery is the wake-ups' own: an entry stays pending while its worker executes the step
(heartbeats reset its idle time); once a worker died it is reclaimed after the lease (XPENDING +
XCLAIM with min-idle); the new claimant's ``step_started`` for the SAME entry starts a new attempt
under a new claim, which fences the old worker out should it come back (a zombie). A duplicate
entry for a step another live claimant holds gets "exists", a finished step "terminal": either
way the entry is acknowledged without executing. An entry delivered more than the maximum is
dead-lettered (``wf:{pN}:dlq``) and its step failed; an undecodable entry is set aside there with
its raw bytes and the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from redis import exceptions as rexc
from redis.typing import KeyT, StreamIdT

from worker.world import DEFAULT_QUEUE, PoolTask, QueueStats, RouteCode, Wakeup

from ._client import Entry, stream_replies
from ._keys import BANDS, GROUP, Keys, band_of, banded
from ._queue import RedisQueue, _s, undecodable
from ._retry import with_retry


class RedisPools:
    """Pool task streams of a RedisWorld (composed: ``RedisWorld.pools``)."""

    def __init__(self, queue: RedisQueue) -> None:
        self.q = queue
        self.core = queue.core
        self._groups: set[str] = set()
        self._next_read = 0  # where the next read of queue streams starts (see read_queues)
        self._next_queue = 0  # and which of the queues first

    @property
    def redis(self) -> Any:
        return self.core.redis

    @property
    def keys(self) -> Keys:
        return self.core.keys

    @property
    def partitions(self) -> int:
        return self.keys.partitions

    # -- the holder's side ---------------------------------------------------------------------

    async def route_steps(
        self, run_id: str, steps: Sequence[tuple[str, str, str]], priority: int = 0
    ) -> list[RouteCode]:
        """Hand due steps ``(step id, step name, queue)`` of one run to their queues (route.lua),
        in the band of the run's ``priority`` (see _keys.py)."""
        await self.core._ready()
        if not steps:
            return []
        p = self.keys.partition(run_id)
        run, _, ent, _ = self.keys.run_keys(run_id)
        keys = [run, ent, self.keys.queue_names(p), self.keys.clock(p)]
        args: list[Any] = [run_id]
        band = band_of(priority)
        for corr, name, queue in steps:
            keys.append(self.keys.queue_stream(p, queue, band))
            args += [corr, name, queue]
        reply = await self.core._eval("route", keys, args)
        return [cast(RouteCode, _s(code)) for code in reply]

    # -- the pool worker's side ----------------------------------------------------------------

    async def ensure_queue_groups(self, queues: Sequence[str]) -> None:
        """The consumer group of each queue stream of every partition (created with the stream)."""
        await self.core._ready()
        await self.q.ensure_groups()
        for queue in queues:
            if queue == DEFAULT_QUEUE:
                continue
            for p in range(self.keys.partitions):
                for band in BANDS:
                    await self._ensure_group(self.keys.queue_stream(p, queue, band))

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            await with_retry(self.redis.xgroup_create, stream, GROUP, id="0", mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    async def read_tasks(
        self, consumer: str, queue: str, partition: int, count: int, block_ms: int
    ) -> list[PoolTask | Wakeup]:
        """At most ``count`` new tasks of one queue stream and its priority bands (one slot):
        band hi first, then the stream, then band lo."""
        await self.core._ready()
        streams = [self.keys.queue_stream(partition, queue, b) for b in BANDS]
        located = {s: (queue, partition, b) for s, b in zip(streams, BANDS, strict=True)}
        for stream in streams:
            await self._ensure_group(stream)
        reply = await self._read_in_order(consumer, streams, count)
        if not reply and block_ms:
            reply = await self._xreadgroup(consumer, streams, count, block_ms)
            reply = await self.q._within(count, reply, lambda s: located[s][2])
        return await self._tasks_of(reply, located)

    async def _read_in_order(
        self, consumer: str, streams: Sequence[str], count: int
    ) -> list[tuple[str, list[Entry]]]:
        try:
            return await self.q.read_in_order(consumer, streams, count)
        except rexc.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups.difference_update(streams)  # deleted under us: recreated next read
            return []

    async def _tasks_of(
        self,
        reply: Sequence[tuple[str, list[Entry]]],
        located: dict[str, tuple[str, int, str]],
    ) -> list[PoolTask | Wakeup]:
        out: list[PoolTask | Wakeup] = []
        for stream, rows in reply:
            queue, p, band = located[stream]
            for mid, fields in rows:
                task = await self._task(queue, p, mid, dict(fields or {}), 1, band)
                if task is not None:
                    out.append(task)
        return out

    async def read_queues(
        self, consumer: str, queues: Sequence[str], count: int, block_ms: int
    ) -> list[PoolTask | Wakeup]:
        """At most ``count`` new entries of the streams of ``queues`` over every partition.

        One script call (read_bands.lua) reads the streams one after the other, each with the
        room the ones before it left, so the entries taken never exceed ``count``: band by band
        (every hi band, then the queues' streams, then their lo bands), the partitions and the
        queues in orders that rotate from call to call, so that none is always served last
        within a band. On a cluster the streams of one partition share its slot: one script
        call per partition reads all its queues so, the partitions concurrently, with the room
        shared out as ``RedisQueue.read_wakeups`` does. Only when that found nothing does a
        read block, on streams and COUNTs whose product stays within ``count`` (the streams not
        covered are read at the next call, one ``block_ms`` later at most), each with its two
        bands (entries beyond ``count`` put back, as read_wakeups does): one command on one
        server, one per partition, awaited together, on a cluster.
        """
        await self.core._ready()
        n = self.keys.partitions
        if count <= 0 or not queues or n <= 0:
            return []
        located: dict[str, tuple[str, int, str]] = {}
        for p in range(n):
            for queue in queues:
                for band in BANDS:
                    located[self.keys.queue_stream(p, queue, band)] = (queue, p, band)
        for stream in located:
            await self._ensure_group(stream)
        start = self._next_read % n
        self._next_read = (start + 1) % n
        order = [(start + i) % n for i in range(n)]
        rotation = self._next_queue % len(queues)  # which queue goes first when few fit
        self._next_queue = rotation + 1
        rotated = (*queues[rotation:], *queues[:rotation])
        per_partition = {p: [self.keys.queue_stream(p, q) for q in rotated] for p in order}
        replies: list[tuple[str, list[Entry]]] = []

        async def take(p: int, quota: int) -> int:
            streams = [self.keys.queue_stream(p, q, b) for b in BANDS for q in rotated]
            reply = await self._read_in_order(consumer, streams, quota)
            replies.extend(reply)
            return sum(len(rows) for _, rows in reply)

        if not self.core.cluster:  # one script call over every partition, band by band
            streams = [
                self.keys.queue_stream(p, q, b) for b in BANDS for p in order for q in rotated
            ]
            reply = await self._read_in_order(consumer, streams, count)
            replies.extend(reply)
            taken = sum(len(rows) for _, rows in reply)
        else:
            taken = await self.q._share_out(order, count, take)
        if not taken and block_ms:
            every = [s for p in order for s in per_partition[p]]
            chosen = every if count >= len(every) else every[:count]
            per_stream = max(1, count // len(chosen))

            def bands(streams: Sequence[str]) -> list[str]:
                return [banded(s, b) for s in streams for b in BANDS]

            if not self.core.cluster:
                got = [await self._xreadgroup(consumer, bands(chosen), per_stream, block_ms)]
            else:
                by_partition: dict[int, list[str]] = {}
                for stream in chosen:
                    by_partition.setdefault(located[stream][1], []).append(stream)
                got = list(
                    await asyncio.gather(
                        *(
                            self._xreadgroup(consumer, bands(streams), per_stream, block_ms)
                            for streams in by_partition.values()
                        )
                    )
                )
            kept = await self.q._within(
                count, [pair for reply in got for pair in reply], lambda s: located[s][2]
            )
            if self.core.cluster:
                # as read_wakeups does: the idle time of what was taken runs from now
                await asyncio.gather(
                    *(
                        self.q._touch(stream, consumer, [mid for mid, _ in rows])
                        for stream, rows in kept
                    )
                )
            replies.extend(kept)
        return await self._tasks_of(replies, located)

    async def _xreadgroup(
        self, consumer: str, streams: Sequence[str], count: int, block_ms: int
    ) -> list[tuple[str, list[Entry]]]:
        """One XREADGROUP over ``streams``; a stream deleted under the worker gets its group back
        at the next read."""
        reading: dict[KeyT, StreamIdT] = {s: ">" for s in streams}
        try:
            reply = await with_retry(
                self.redis.xreadgroup, GROUP, consumer, reading, count=count, block=block_ms or None
            )
        except rexc.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups.difference_update(streams)
            return []
        return stream_replies(reply)

    async def reclaim_tasks(
        self, consumer: str, queue: str, partition: int, min_idle_ms: int, count: int
    ) -> list[PoolTask | Wakeup]:
        """Take over tasks of one queue stream and its bands pending longer than
        ``min_idle_ms``: at most ``count``, band hi first, then the stream, then band lo."""
        await self.core._ready()
        out: list[PoolTask | Wakeup] = []
        taken = 0
        for band in BANDS:
            if taken >= count:
                break
            stream = self.keys.queue_stream(partition, queue, band)
            await self._ensure_group(stream)
            claimed = await self.q._claim(stream, consumer, min_idle_ms, count - taken)
            taken += len(claimed)
            for mid, fields, deliveries in claimed:
                task = await self._task(queue, partition, mid, fields, deliveries, band)
                if task is not None:
                    out.append(task)
        return out

    async def _task(
        self,
        queue: str,
        partition: int,
        message_id: str,
        fields: dict[str, str],
        deliveries: int,
        band: str = "",
    ) -> PoolTask | Wakeup | None:
        """The task of one entry of the queue stream's ``band``, or the wake-up of a run
        forwarded to the queue (an entry without ``step``); None for an undecodable one, which
        is set aside."""
        if undecodable(fields):
            stream = self.keys.queue_stream(partition, queue, band)
            await self.q._set_aside(
                stream, self.keys.dlq(partition), message_id, fields, deliveries
            )
            return None
        if "step" not in fields:
            return Wakeup(
                partition=partition,
                message_id=message_id,
                run_id=fields.get("run", ""),
                reason=fields.get("reason", ""),
                deliveries=deliveries,
                queue=queue,
                band=band,
            )
        return PoolTask(
            queue=queue,
            partition=partition,
            message_id=message_id,
            run_id=fields.get("run", ""),
            step_id=fields.get("step", ""),
            step_name=fields.get("name", ""),
            deliveries=deliveries,
            band=band,
        )

    def _by_stream(self, tasks: Sequence[PoolTask]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t in tasks:
            stream = self.keys.queue_stream(t.partition, t.queue, t.band)
            out.setdefault(stream, []).append(t.message_id)
        return out

    async def heartbeat_tasks(self, consumer: str, tasks: Sequence[PoolTask]) -> None:
        """Reset the idle time of tasks being executed (XCLAIM JUSTID: no delivery counted)."""
        await self.core._ready()
        for stream, ids in self._by_stream(tasks).items():
            await with_retry(self.redis.xclaim, stream, GROUP, consumer, 0, ids, justid=True)

    async def ack_tasks(self, tasks: Sequence[PoolTask]) -> None:
        await self.core._ready()
        for stream, ids in self._by_stream(tasks).items():
            await self.q._ack_ids(stream, ids)

    async def forward_wakeup(self, wakeup: Wakeup, queue: str) -> None:
        """Hand a run's wake-up to the stream of its workflow's queue: a copy added there, the
        run hash told its queue (``wf inspect run``), the wake-up acknowledged: one transaction
        in the run's partition."""
        await self.core._ready()
        p = wakeup.partition
        source = self.q.wake_stream(wakeup)
        # back to the ready stream when the workflow's queue became "default" (changed code)
        default = queue == DEFAULT_QUEUE
        band = wakeup.band  # the run's priority band, kept in the queue it goes to
        target = self.keys.ready(p, band) if default else self.keys.queue_stream(p, queue, band)
        await self._ensure_group(target)

        async def run() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.xadd(target, {"run": wakeup.run_id, "reason": wakeup.reason})
            if default:
                pipe.hdel(self.keys.run(wakeup.run_id), "queue")
            else:
                pipe.sadd(self.keys.queue_names(p), queue)
                pipe.hset(self.keys.run(wakeup.run_id), "queue", queue)
            pipe.xack(source, GROUP, wakeup.message_id)
            pipe.xdel(source, wakeup.message_id)
            await pipe.execute()

        await with_retry(run)

    async def dead_letter_task(self, task: PoolTask, reason: str) -> None:
        """Copy the task to the partition's dead-letter stream, then acknowledge it."""
        await self.core._ready()
        fields = {
            "run": task.run_id,
            "step": task.step_id,
            "queue": task.queue,
            "reason": reason,
            "message_id": task.message_id,
        }
        await self.q.copy_to_dlq(task.partition, fields, task.deliveries)
        await self.ack_tasks([task])

    # -- inspection ----------------------------------------------------------------------------

    async def queue_stats(self) -> list[QueueStats]:
        """Every partition's ready stream (queue ``default``) and the queue streams its runs
        used, each with its priority bands counted in."""
        await self.core._ready()
        sec, usec = await with_retry(self.redis.time)
        now_ms = int(sec) * 1000 + int(usec) // 1000
        out: list[QueueStats] = []
        for p in range(self.keys.partitions):
            names = sorted(await with_retry(self.redis.smembers, self.keys.queue_names(p)))
            out.append(await self._stats(p, DEFAULT_QUEUE, self.keys.ready(p), now_ms))
            for name in names:
                out.append(await self._stats(p, name, self.keys.queue_stream(p, name), now_ms))
        return out

    async def _stats(self, partition: int, queue: str, stream: str, now_ms: int) -> QueueStats:
        length = lag = pending = 0
        oldest: int | None = None
        for band in BANDS:
            figures = await self._figures(banded(stream, band), now_ms)
            length, lag, pending = length + figures[0], lag + figures[1], pending + figures[2]
            if figures[3] is not None:
                oldest = max(oldest or 0, figures[3])
        return QueueStats(
            partition=partition,
            queue=queue,
            length=length,
            lag=lag,
            pending=pending,
            oldest_age_ms=oldest,
        )

    async def _figures(self, stream: str, now_ms: int) -> tuple[int, int, int, int | None]:
        """Length, lag, pending and the age of the oldest entry (None: empty) of one stream."""
        length = int(await with_retry(self.redis.xlen, stream))
        lag, pending = length, 0
        try:
            groups = await with_retry(self.redis.xinfo_groups, stream)
        except rexc.ResponseError:  # no such stream yet
            groups = []
        for g in groups:
            if _s(g.get("name")) == GROUP:
                pending = int(g.get("pending") or 0)
                # lag is nil when Redis cannot tell (entries deleted): count what is not pending
                raw = g.get("lag")
                lag = int(raw) if raw is not None else max(0, length - pending)
        first = await with_retry(self.redis.xrange, stream, "-", "+", count=1)
        oldest = max(0, now_ms - int(_s(first[0][0]).split("-", 1)[0])) if first else None
        return length, lag, pending, oldest

    async def waiting_on(self, run_id: str) -> list[tuple[str, str, int]]:
        """(step id, queue, partition) of the run's steps handed to a queue, not finished yet."""
        await self.core._ready()
        fields = await with_retry(self.redis.hgetall, self.keys.entities(run_id))
        p = self.keys.partition(run_id)
        out: list[tuple[str, str, int]] = []
        run_queue = await with_retry(self.redis.hget, self.keys.run(run_id), "queue")
        if run_queue:  # the run's own wake-ups go to its workflow's queue (step id "")
            out.append(("", _s(run_queue), p))
        for name, value in sorted(fields.items()):
            if not name.endswith("|queued"):
                continue
            corr = name[: -len("|queued")]
            status = fields.get(corr, "").split("|", 1)[0]
            if status in ("pending", "running"):
                out.append((corr, value.split("|")[1] if value.count("|") >= 2 else "?", p))
        return out
