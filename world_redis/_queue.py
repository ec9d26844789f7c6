"""The Redis side of the work queue: wake-ups, leases, timers, dead letters.

``RedisWorld`` holds one ``RedisQueue`` (``world.queue``); the client, the deployment's settings
and the scripts are the ``RedisCore`` (``_core``) that the queue and the World's other parts share
(``_requests`` the request streams and replies, ``_presence`` workers and health,
``_hook_tokens`` hook token reservations, ``_pools`` pool tasks); ``_world`` holds runs and their
logs.
On a cluster every command here stays in one slot: a partition's ready stream, timers and run
keys share its tag, and what spans partitions goes one partition at a time, concurrently.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from redis import exceptions as rexc
from redis.typing import KeyT, StreamIdT

from worker.world import (
    Acquired,
    CorruptEventError,
    Event,
    Wakeup,
    WorkflowError,
    acquire_code,
    event_from_fields,
    get_logger,
    token_worker,
)

from ._client import Entry, entries, stream_replies, text, text_dict
from ._core import RedisCore, all_at_once
from ._keys import BANDS, GROUP
from ._lean import stream_rows
from ._retry import with_retry


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


KEEP_BYTES = 1024  # a rejected or dead-lettered copy keeps this much of each field
UNDECODABLE = "undecodable entry: a field name or value is not UTF-8 (raw bytes in <field>:b64)"


def undecodable(fields: Mapping[str, str]) -> bool:
    """True when a field held bytes that are not UTF-8 (surrogates: see ``RedisWorld.from_url``)."""
    if "".join(fields).isascii() and "".join(fields.values()).isascii():
        return False  # no surrogate anywhere (the usual entry: one check of each, in C)
    try:
        for name, value in fields.items():
            if name.isascii() and value.isascii():  # no surrogate: nothing to encode
                continue
            name.encode()
            value.encode()
    except UnicodeEncodeError:
        return True
    return False


def _shown_name(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def truncated_copy(fields: Mapping[str, str]) -> dict[str, str]:
    """Fields of a valid entry as a rejected copy keeps them: each at most KEEP_BYTES, and the
    original length in bytes beside any field cut (``<field>:length``)."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        raw = value.encode()
        if len(raw) <= KEEP_BYTES:
            out[name] = value
        else:
            out[name] = raw[:KEEP_BYTES].decode("utf-8", "ignore")
            out[f"{name}:length"] = str(len(raw))
    return out


def raw_copy(fields: Mapping[str, str]) -> dict[str, str]:
    """Fields of an undecodable entry as its copy keeps them: every value as ``<field>:b64``, the
    base64 of its raw bytes (at most KEEP_BYTES of them, the full length then in ``<field>:length``).

    A name that is not UTF-8 itself is shown with backslash escapes (``\\xff``)."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        shown = _shown_name(name)
        raw = value.encode("utf-8", "surrogateescape")
        out[f"{shown}:b64"] = base64.b64encode(raw[:KEEP_BYTES]).decode()
        if len(raw) > KEEP_BYTES:
            out[f"{shown}:length"] = str(len(raw))
    return out


def fields_dict(flat: Any) -> dict[str, str]:
    """A stream entry's fields from a script reply (a flat list) or a client reply (a dict)."""
    if isinstance(flat, dict):
        return flat
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def text_fields(flat: list[Any]) -> dict[str, str]:
    """``text_dict(fields_dict(flat))`` of a script reply's flat field list, in one pass where
    every name and value is text already (replies are decoded: the usual case)."""
    it = iter(flat)
    fields = dict(zip(it, it, strict=True))
    for name, value in fields.items():
        if type(name) is not str or type(value) is not str:
            return text_dict(fields_dict(flat))
    return fields


def split(room: int, partitions: Sequence[int]) -> list[tuple[int, int]]:
    """``room`` shared over ``partitions`` (in that order): (partition, quota >= 1) pairs whose
    quotas sum to ``room``, or to one each for the first ``room`` partitions when fewer."""
    if room <= 0 or not partitions:
        return []
    if room < len(partitions):
        return [(p, 1) for p in partitions[:room]]
    base, extra = divmod(room, len(partitions))
    return [(p, base + (1 if i < extra else 0)) for i, p in enumerate(partitions)]


class RedisQueue:
    """Wake-ups, leases, timers and dead letters of a RedisWorld (composed: ``RedisWorld.queue``),
    on the World's shared ``RedisCore``."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core
        self._groups_ready = False
        self._next_partition = 0  # where the next read of wake-ups starts (see read_wakeups)
        self._next_reclaim = 0  # the same for reclaims
        self._log = get_logger(component="world_redis")

    # -- the work queue ----------------------------------------------------------------------

    async def ensure_groups(self) -> None:
        if self._groups_ready:
            return
        await self.core._ready()
        keys = self.core.keys
        streams = [s for p in range(keys.partitions) for s in keys.ready_bands(p)]
        streams += [self.core.keys.start_stream(), self.core.keys.resume_stream()]
        await asyncio.gather(*(self._create_group(s) for s in streams))
        self._groups_ready = True

    async def _create_group(self, stream: str) -> None:
        try:
            await with_retry(self.core.redis.xgroup_create, stream, GROUP, id="0", mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read_group(
        self, consumer: str, streams: dict[str, str], count: int, block_ms: int
    ) -> list[tuple[str, list[Entry]]]:
        """XREADGROUP (of streams in one slot on a cluster); a stream deleted under the worker
        (``DEL`` by an operator) gets its group back, instead of every later read failing with
        NOGROUP."""
        await self.ensure_groups()
        try:
            lean = self.core.lean
            if lean is not None and block_ms:  # a raw connection of its own while it blocks
                command: list[Any] = ["XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count]
                command += ["BLOCK", block_ms, "STREAMS", *streams, *streams.values()]
                reply = await with_retry(lean.execute_blocking, *command, wait_s=block_ms / 1000)
                return stream_rows(reply)
            reading: dict[KeyT, StreamIdT] = {k: v for k, v in streams.items()}
            reply = await with_retry(
                self.core.redis.xreadgroup,
                GROUP,
                consumer,
                reading,
                count=count,
                block=block_ms or None,
            )
            return stream_replies(reply)
        except rexc.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._log.warning("consumer_group_recreated", error=str(exc))
            self._groups_ready = False
            await self.ensure_groups()
            return []

    async def read_in_order(
        self, consumer: str, streams: Sequence[str], count: int
    ) -> list[tuple[str, list[Entry]]]:
        """New entries of ``streams`` (one slot) taken in that order, at most ``count`` in all:
        one script call (read_bands.lua), so a later stream is read only with the room the
        earlier ones left. A stream without the group fails with NOGROUP (ResponseError)."""
        flat = await self.core._eval("read_bands", streams, [GROUP, consumer, count])
        out: list[tuple[str, list[Entry]]] = []
        for i in range(0, len(flat), 2):
            rows = [(text(mid), text_fields(fields)) for mid, fields in flat[i + 1]]
            out.append((streams[int(flat[i]) - 1], rows))
        return out

    @staticmethod
    def _partition_of(stream: str) -> int:
        return int(stream.rsplit("{p", 1)[1].split("}", 1)[0])

    @staticmethod
    def _band_of(stream: str) -> str:
        """The band of a ready stream (see _keys.py: ``wf:{pN}:ready:hi``...)."""
        for band in ("hi", "lo"):
            if stream.endswith(f":ready:{band}"):
                return band
        return ""

    async def _claim(
        self, stream: str, consumer: str, min_idle_ms: int, count: int, wakeups: bool = False
    ) -> list[tuple[str, dict[str, str], int]]:
        """Claim entries of ``stream`` pending longer than ``min_idle_ms``: (id, fields, deliveries).

        XPENDING gives the delivery counts (XAUTOCLAIM does not), XCLAIM with the same min-idle
        takes them (an entry another worker claimed meanwhile is no longer idle: not taken twice).
        Pending entries deleted from the stream are acknowledged, so they stop coming back.
        ``wakeups``: entries of a ready stream whose run is leased are left alone (see
        ``_not_leased``).
        """
        pending = await with_retry(
            self.core.redis.xpending_range,
            stream,
            GROUP,
            min="-",
            max="+",
            count=count,
            idle=min_idle_ms,
        )
        if not pending:
            return []
        deliveries = {_s(row["message_id"]): int(row["times_delivered"]) for row in pending}
        if wakeups:
            free = await self._not_leased(stream, list(deliveries))
            deliveries = {mid: n for mid, n in deliveries.items() if mid in free}
            if not deliveries:
                return []
        ids: list[StreamIdT] = list(deliveries)
        claimed = await with_retry(
            self.core.redis.xclaim, stream, GROUP, consumer, min_idle_ms, ids
        )
        out: list[tuple[str, dict[str, str], int]] = []
        for row in claimed:
            if not isinstance(row, tuple | list):
                continue  # an id alone: only JUSTID answers so
            mid, fields = row
            if fields is not None:  # Redis before 7 replies nil for a deleted entry
                out.append((text(mid), text_dict(fields), deliveries[text(mid)] + 1))
        missing = set(deliveries) - {mid for mid, _, _ in out}
        gone = [mid for mid in sorted(missing) if not await self._exists(stream, mid)]
        if gone:
            await with_retry(self.core.redis.xack, stream, GROUP, *gone)
        return out

    async def _not_leased(self, stream: str, message_ids: list[str]) -> set[str]:
        """The wake-ups among ``message_ids`` whose run no worker holds a live lease on.

        A wake-up's idle time runs from its delivery, the lease from its acquisition a little
        later: a worker that dies in between leaves a wake-up that is reclaimable while the run
        is still leased, and taking it then would only meet "busy" and drop it, orphaning the
        run. Left pending instead, it is taken once the lease lapses (no delivery counted
        meanwhile). Deleted entries and entries without a run stay in: the claim settles them.
        """
        rows = await asyncio.gather(
            *(with_retry(self.core.redis.xrange, stream, mid, mid, count=1) for mid in message_ids)
        )
        run_of: dict[str, str] = {}
        for mid, row in zip(message_ids, rows, strict=True):
            found = entries(row)
            run_id = found[0][1].get("run", "") if found else ""
            if run_id.startswith("wrun_"):
                run_of[mid] = run_id
        runs = sorted(set(run_of.values()))
        if not runs:
            return set(message_ids)
        sec, usec = await with_retry(self.core.redis.time)
        now_ms = int(sec) * 1000 + int(usec) // 1000
        leases = await asyncio.gather(
            *(
                with_retry(
                    self.core.redis.hmget, self.core.keys.run(r), ["lease_owner", "lease_until"]
                )
                for r in runs
            )
        )
        live = set()
        for run_id, (owner, until) in zip(runs, leases, strict=True):
            try:
                lapses = int(text(until) or 0)
            except ValueError:
                lapses = 0
            if text(owner) and lapses > now_ms:
                live.add(run_id)
        return {mid for mid in message_ids if run_of.get(mid) not in live}

    async def _exists(self, stream: str, message_id: str) -> bool:
        return bool(
            await with_retry(self.core.redis.xrange, stream, message_id, message_id, count=1)
        )

    async def _set_aside(
        self, stream: str, target: str, message_id: str, fields: Mapping[str, str], deliveries: int
    ) -> None:
        """Move an undecodable entry to ``target`` with its raw bytes (copy before ack)."""
        self._log.warning("undecodable_entry_set_aside", stream=stream, message_id=message_id)
        entry = {
            **raw_copy(fields),
            "reason": UNDECODABLE,
            "message_id": message_id,
            "deliveries": str(deliveries),
            "host": socket.gethostname(),
        }
        await with_retry(self.core.redis.xadd, target, entry, maxlen=100_000, approximate=True)
        await self._ack_ids(stream, [message_id])

    async def _ack_ids(self, stream: str, ids: Sequence[str]) -> None:
        async def run() -> None:
            pipe = self.core.redis.pipeline(transaction=False)
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)
            await pipe.execute()

        await with_retry(run)

    async def _wakeup(
        self, stream: str, message_id: str, fields: dict[str, str], deliveries: int
    ) -> Wakeup | None:
        """The wake-up of one entry; None for an undecodable one, which is dead-lettered."""
        if undecodable(fields):
            await self._set_aside_undecodable(stream, message_id, fields, deliveries)
            return None
        return self._decoded_wakeup(stream, message_id, fields, deliveries)

    async def _set_aside_undecodable(
        self, stream: str, message_id: str, fields: dict[str, str], deliveries: int
    ) -> None:
        p = self._partition_of(stream)
        await self._set_aside(stream, self.core.keys.dlq(p), message_id, fields, deliveries)

    def _decoded_wakeup(
        self, stream: str, message_id: str, fields: dict[str, str], deliveries: int
    ) -> Wakeup:
        """The wake-up of an entry whose fields are text (see ``undecodable``)."""
        p = self._partition_of(stream)
        run_id, reason = fields.get("run", ""), fields.get("reason", "")
        created = None
        if reason == "created" and fields.get("type") == "run_created":
            entry = {k: v for k, v in fields.items() if k != "run" and k != "reason"}
            try:  # as the log's entry 1-0 is read (payloads decrypted)
                created = self._log_events(run_id, [("1-0", entry)])[0]
            except WorkflowError:  # left to the usual way (acquire, the log), which reports it
                created = None
        return Wakeup(
            partition=p,
            message_id=message_id,
            run_id=run_id,
            reason=reason,
            deliveries=deliveries,
            band=self._band_of(stream),
            created=created,
        )

    async def read_wakeups(self, consumer: str, count: int, block_ms: int) -> list[Wakeup]:
        """At most ``count`` wake-ups from the ready streams of all partitions: band hi before
        the priority-0 streams before band lo (see _keys.py).

        XREADGROUP's COUNT applies per stream; entries read are pending on this consumer (a
        surplus would wait for a reclaim, and the worker would hold more runs than its
        concurrency). So one script call (read_bands.lua) reads the streams one after the
        other, each with the room the ones before it left: every partition's hi band, then
        their priority-0 streams, then their lo bands, the partitions in an order that starts
        at one that rotates from call to call, so that no partition is always served last.

        On a cluster one command (and one script) reads the streams of one slot only: the reads
        go per partition, concurrently (each its bands in order, so there the band order holds
        within a partition), with the room shared out so that their quotas sum to at most
        ``count`` (``split``); a partition that filled its share may hold more and is asked
        again with the room left, and partitions not asked yet (room < partitions) come next,
        until the room is used or every partition was asked.

        Only when that found nothing does a read block, with COUNTs that
        again sum to at most ``count`` per band: all partitions with COUNT count // N when
        count >= N, else ``count`` partitions (the rotation's next ones) with COUNT 1; the
        others are seen at the next call, one ``block_ms`` later at most. A blocking read
        covers each partition's three bands (in one command it costs nothing more); entries it
        took beyond ``count`` (several bands filled during one wait) are put back at the end of
        their band, the lowest bands first, so the worker never holds more than ``count``.

        On one server that blocking read is one XREADGROUP over those streams, which answers as
        soon as any of them has an entry. On a cluster it is one blocking read per partition,
        all awaited (a read cancelled in flight may have taken entries that its reply then
        loses); the latency trade-off: an idle worker sees a new wake-up up to ``block_ms``
        late, as the read that got it waits for the other reads to time out. A busy worker
        never blocks.
        """
        await self.core._ready()
        out: list[Wakeup] = []
        keys = self.core.keys
        n = keys.partitions
        if count <= 0:
            return out

        async def read(streams: list[str], quota: int) -> int:
            await self.ensure_groups()
            try:
                reply = await self.read_in_order(consumer, streams, quota)
            except rexc.ResponseError as exc:  # a stream deleted under the worker (DEL by hand)
                if "NOGROUP" not in str(exc):
                    raise
                self._log.warning("consumer_group_recreated", error=str(exc))
                self._groups_ready = False
                await self.ensure_groups()
                return 0
            return await self._wakeups_of(reply, out)

        start = self._next_partition % n
        self._next_partition = (start + 1) % n
        order = [(start + i) % n for i in range(n)]
        if not self.core.cluster:  # one script call over every partition's bands, in order
            taken = await read([keys.ready(p, b) for b in BANDS for p in order], count)
        else:
            taken = await self._share_out(
                order, count, lambda p, quota: read(keys.ready_bands(p), quota)
            )
        if taken or not block_ms:
            return out
        if count >= n:
            chosen, per_stream = order, count // n
        else:
            chosen, per_stream = order[:count], 1
        if not self.core.cluster:
            streams = {s: ">" for p in chosen for s in keys.ready_bands(p)}
            replies = [await self._read_group(consumer, streams, per_stream, block_ms)]
        else:
            replies = list(
                await asyncio.gather(
                    *(
                        self._read_group(
                            consumer, {s: ">" for s in keys.ready_bands(p)}, per_stream, block_ms
                        )
                        for p in chosen
                    )
                )
            )
        kept = await self._within(
            count, [pair for reply in replies for pair in reply], self._band_of
        )
        if self.core.cluster:
            # An entry's idle time runs from its delivery, which may be up to block_ms before
            # the slowest read returned: reset it now (XCLAIM JUSTID, as the heartbeat does), so
            # that it becomes reclaimable no earlier than the run's lease, taken next, lapses.
            await asyncio.gather(
                *(self._touch(stream, consumer, [mid for mid, _ in rows]) for stream, rows in kept)
            )
        await self._wakeups_of(kept, out)
        return out

    async def _within(
        self,
        count: int,
        reply: Sequence[tuple[str, list[Entry]]],
        band_of: Callable[[str], str],
    ) -> list[tuple[str, list[Entry]]]:
        """The first ``count`` entries of a read over several bands (``band_of`` names a
        stream's), band by band, hi first; the others put back: added again at the end of their
        stream and the read copy acknowledged (a duplicate, should a retry add one twice, is a
        harmless wake-up)."""
        rank = {band: i for i, band in enumerate(BANDS)}
        ordered = sorted(reply, key=lambda pair: rank[band_of(pair[0])])
        kept: list[tuple[str, list[Entry]]] = []
        room = count
        for stream, rows in ordered:
            if not rows:
                continue
            if room > 0:
                kept.append((stream, rows[:room]))
            surplus = rows[max(room, 0) :]
            room -= len(rows)
            if surplus:
                await self._put_back(stream, surplus)
        return kept

    async def _put_back(self, stream: str, rows: Sequence[Entry]) -> None:
        ids = [mid for mid, _ in rows]

        async def run() -> None:
            pipe = self.core.redis.pipeline(transaction=False)
            for _, fields in rows:
                pipe.xadd(stream, {k: v for k, v in fields.items()})
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)
            await pipe.execute()

        await with_retry(run)

    async def _touch(self, stream: str, consumer: str, message_ids: Sequence[str]) -> None:
        """Reset the idle time of entries pending on ``consumer`` (XCLAIM JUSTID: no count bump)."""
        ids: list[Any] = list(message_ids)
        await with_retry(self.core.redis.xclaim, stream, GROUP, consumer, 0, ids, justid=True)

    @staticmethod
    async def _share_out(
        order: Sequence[int], room: int, take: Callable[[int, int], Awaitable[int]]
    ) -> int:
        """Call ``take(partition, quota)`` concurrently over ``order`` with quotas that never sum
        to more than the room left; ``take`` answers how many it took. A partition that took its
        whole quota may have more and is asked again; the others are done. The number taken."""
        unasked, again = list(order), list[int]()
        taken = 0
        while room > taken and (unasked or again):
            batch = again + unasked
            shares = split(room - taken, batch)
            asked = {p for p, _ in shares}
            unasked = [p for p in unasked if p not in asked]
            again = [p for p in again if p not in asked]
            got = await asyncio.gather(*(take(p, quota) for p, quota in shares))
            taken += sum(got)
            again += [p for (p, quota), g in zip(shares, got, strict=True) if g >= quota]
        return taken

    async def _wakeups_of(self, reply: list[tuple[str, list[Entry]]], out: list[Wakeup]) -> int:
        """Append the wake-ups of an XREADGROUP reply to ``out``; the number of entries read
        (undecodable ones, dead-lettered, included)."""
        read = 0
        for stream, rows in reply:
            for mid, fields in rows:
                read += 1
                if undecodable(fields):  # set aside (the only await here)
                    await self._set_aside_undecodable(stream, mid, fields, 1)
                else:
                    out.append(self._decoded_wakeup(stream, mid, fields, 1))
        return read

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Wakeup]:
        """Take over at most ``count`` wake-ups, over all partitions, whose consumer stopped
        renewing them (a dead or stuck worker); like ``read_wakeups`` it never takes more than the
        room the caller has (per partition, concurrently, shares summing to the room), starting
        at a rotating partition."""
        await self.core._ready()
        n = self.core.keys.partitions
        start = self._next_reclaim % n
        self._next_reclaim = (start + 1) % n
        out: list[Wakeup] = []
        seen: set[tuple[str, str]] = set()

        async def take(p: int, quota: int) -> int:
            # band by band, each with the room the ones before left (as read_wakeups does);
            # asked again, a partition may offer what this call took from it (min_idle_ms 0)
            fresh = 0
            for stream in self.core.keys.ready_bands(p):
                if fresh >= quota:
                    break
                for mid, fields, deliveries in await self._claim(
                    stream, consumer, min_idle_ms, quota - fresh, wakeups=True
                ):
                    if (stream, mid) in seen:
                        continue
                    seen.add((stream, mid))
                    fresh += 1
                    w = await self._wakeup(stream, mid, fields, deliveries)
                    if w is not None:
                        out.append(w)
            return fresh

        await self._share_out([(start + i) % n for i in range(n)], count, take)
        return out

    def wake_stream(self, w: Wakeup) -> str:
        """The stream a wake-up came from: the ready stream, or a queue's (see _pools.py)."""
        if w.queue == "default":
            return self.core.keys.ready(w.partition, w.band)
        return self.core.keys.queue_stream(w.partition, w.queue, w.band)

    async def ack(self, wakeups: Sequence[Wakeup]) -> None:
        await self.core._ready()
        if not wakeups:
            return
        by_stream: dict[str, list[str]] = {}
        for w in wakeups:
            by_stream.setdefault(self.wake_stream(w), []).append(w.message_id)

        async def run() -> None:
            pipe = self.core.redis.pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xack(stream, GROUP, *ids)
                pipe.xdel(stream, *ids)
            await pipe.execute()

        await with_retry(run)

    async def requeue(self, wakeup: Wakeup, reason: str) -> None:
        """Hand a run over to any worker: a fresh wake-up, then the old message acknowledged."""
        await self.core._ready()
        stream = self.wake_stream(wakeup)

        async def run() -> None:
            pipe = self.core.redis.pipeline(transaction=False)
            pipe.xadd(stream, {"run": wakeup.run_id, "reason": reason})
            pipe.xack(stream, GROUP, wakeup.message_id)
            pipe.xdel(stream, wakeup.message_id)
            await pipe.execute()

        await with_retry(run)

    async def acquire_many(
        self, token: str, lease_ms: int, runs: Sequence[tuple[str, int]], deployment: str = ""
    ) -> list[Acquired]:
        """Take the leases of several runs: one script call per partition, all in flight at
        once. With a ``deployment`` a run pinned to another one answers "pinned", an unpinned
        one is pinned to it."""
        await self.core._ready()
        out: list[Acquired | None] = [None] * len(runs)

        async def acquire(idxs: list[int]) -> None:
            keys: list[str] = []
            args: list[Any] = [token, lease_ms, deployment]
            for i in idxs:
                run, ev, *_ = self.core.keys.run_keys(runs[i][0])
                keys += [run, ev]
                args.append(runs[i][1])
            p = self.core.keys.partition(runs[idxs[0]][0])
            keys += [self.core.keys.timers(p), self.core.keys.clock(p)]
            reply = await self.core._eval("acquire", keys, args)
            for i, r in zip(idxs, reply, strict=True):
                out[i] = self._acquired(runs[i][0], r)

        await all_at_once(
            [acquire(idxs) for idxs in self._by_partition([r for r, _ in runs]).values()]
        )
        return [a for a in out if a is not None]

    def _log_events(self, run_id: str, rows: Sequence[Any]) -> list[Event]:
        """Events of log entries (``(id, fields)`` rows), payloads decrypted when a codec is set."""
        codec = self.core.codec
        if codec is None:
            return [
                event_from_fields(int(_s(eid).split("-", 1)[0]), fields_dict(fields), run_id)
                for eid, fields in rows
            ]
        return [
            event_from_fields(
                int(_s(eid).split("-", 1)[0]),
                codec.open_fields(run_id, fields_dict(fields)),
                run_id,
            )
            for eid, fields in rows
        ]

    def _acquired(self, run_id: str, r: list[Any]) -> Acquired:
        try:
            events = self._log_events(run_id, r[4])
        except CorruptEventError:  # DecryptionError too
            events = []  # the caller reads the log itself and reports the corrupt event
        deployment = _s(r[5]) if len(r) > 5 else ""
        code = acquire_code(_s(r[0]))
        return Acquired(code, int(r[1]), _s(r[2]), int(r[3]) == 1, events, deployment)

    def _by_partition(self, run_ids: Sequence[str]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for i, run_id in enumerate(run_ids):
            groups.setdefault(self.core.keys.partition(run_id), []).append(i)
        return groups

    async def release_many(
        self, token: str, runs: Sequence[tuple[str, int, Wakeup | None]]
    ) -> list[tuple[str, int]]:
        """Release several leases and acknowledge their wake-ups: one call per wake-up stream
        (in one partition), all in flight at once."""
        await self.core._ready()
        out: list[tuple[str, int] | None] = [None] * len(runs)
        groups: dict[str, list[int]] = {}  # one call per wake-up stream (in one partition)
        for p, idxs in self._by_partition([r[0] for r in runs]).items():
            for i in idxs:
                wakeup = runs[i][2]
                stream = self.wake_stream(wakeup) if wakeup is not None else self.core.keys.ready(p)
                groups.setdefault(stream, []).append(i)

        async def release(stream: str, idxs: list[int]) -> None:
            keys = [stream]
            args: list[Any] = [token, GROUP]
            for i in idxs:
                run_id, seq, wakeup = runs[i]
                keys.append(self.core.keys.run(run_id))
                args += [seq, wakeup.message_id if wakeup is not None else ""]
            reply = await self.core._eval("release", keys, args)
            for i, r in zip(idxs, reply, strict=True):
                out[i] = (_s(r[0]), int(r[1]))

        await all_at_once([release(stream, idxs) for stream, idxs in groups.items()])
        return [r for r in out if r is not None]

    async def heartbeat(
        self, token: str, run_ids: Sequence[str], wakeups: Sequence[Wakeup], lease_ms: int
    ) -> dict[str, int]:
        """Extend leases and reset the idle time of held wake-ups (XCLAIM JUSTID, no count bump):
        one script call and one XCLAIM per partition, concurrently."""
        await self.core._ready()
        out: dict[str, int] = {}

        async def extend(idxs: list[int]) -> None:
            ids = [run_ids[i] for i in idxs]
            seqs = await self.core._eval(
                "heartbeat", [self.core.keys.run(r) for r in ids], [token, lease_ms]
            )
            out.update({r: int(s) for r, s in zip(ids, seqs, strict=True)})

        by_stream: dict[str, list[str]] = {}
        for w in wakeups:
            by_stream.setdefault(self.wake_stream(w), []).append(w.message_id)
        consumer = token_worker(token)
        await asyncio.gather(
            *(extend(idxs) for idxs in self._by_partition(run_ids).values()),
            *(self._touch(stream, consumer, ids) for stream, ids in by_stream.items()),
        )
        return out

    async def promote_timers(self) -> int | None:
        """Move due timers to the ready streams, each to its run's band (per partition,
        concurrently); the earliest remaining due time (ms) or None."""
        await self.core._ready()

        async def promote(p: int) -> int:
            _, due = await self.core._eval(
                "promote_timers",
                [
                    self.core.keys.timers(p),
                    self.core.keys.ready(p),
                    self.core.keys.clock(p),
                    self.core.keys.ready(p, "hi"),
                    self.core.keys.ready(p, "lo"),
                ],
                [500, self.core.keys.run_prefix(p)],
            )
            return int(due)

        dues = await asyncio.gather(*(promote(p) for p in range(self.core.keys.partitions)))
        return min((d for d in dues if d >= 0), default=None)

    async def dead_letter(self, wakeup: Wakeup, reason: str) -> None:
        """Copy the wake-up to the dead-letter stream, then acknowledge it (copy before ack)."""
        await self.core._ready()
        fields = {"run": wakeup.run_id, "reason": reason, "message_id": wakeup.message_id}
        await self.copy_to_dlq(wakeup.partition, fields, wakeup.deliveries)
        await self.ack([wakeup])

    async def copy_to_dlq(self, partition: int, fields: dict[str, str], deliveries: int) -> None:
        """Add an entry to the partition's dead-letter stream: ``fields`` (the run, the reason,
        the message id...) with the delivery count and this host."""
        entry = {**fields, "deliveries": str(deliveries), "host": socket.gethostname()}
        await with_retry(
            self.core.redis.xadd,
            self.core.keys.dlq(partition),
            entry,
            maxlen=100_000,
            approximate=True,
        )
