"""Compaction of finished runs: a run's hash, event stream and entity hash become one compressed
string (``<prefix>:{pN}:run:<id>:log``), swapped in by compact.lua.

Why: a small stream costs Redis a pre-allocated listpack node (about 8 KB for a ten-step run,
see PERF-NOTES.md "Memory per finished run"), while the same run compacted is a few hundred
bytes. A live run keeps its stream; only a terminal run is compacted, and only while its stream
still ends at the seq the compactor read (the script's fence), so no event is ever lost.

The stored value (its format: ``_compact_format.py``) holds the run hash (envelopes stay
envelopes) and every stream entry, so a reader builds the same run and events from it as from the
hash and the stream. Why the run hash goes too: it costs about 400 bytes (key, listpack, expiry)
for fields that compress to a few dozen, and every script treats a run without hash as not there,
writing nothing (create_run.lua also checks the value, so the id starts no second run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal, cast, get_args

import zstandard

from worker.world import CorruptEventError, get_logger

from ._client import Entry, entries, text, text_dict
from ._compact_format import (  # re-exported: the format's names, where callers found them
    HEADER,
    CompactedLog,
    CompactedLogError,
    decode_log,
    decode_run,
    encode_log,
    new_compressor,
)
from ._core import RedisCore
from ._retry import with_retry

__all__ = [
    "HEADER",
    "CompactedLog",
    "CompactedLogError",
    "RedisCompaction",
    "decode_log",
    "decode_run",
    "encode_log",
    "new_compressor",
]
LOCK_MS = 30_000  # a partition's compaction lock outlives any round of it
CLOCK_MARGIN_MS = 1_000  # see _compact_due
# what compact.lua answers per run (see its header)
CompactCode = Literal["compacted", "already", "no_run", "not_terminal", "leased", "moved"]
RETRY_CODES = frozenset({"leased", "moved"})  # a later round may compact the run
_CODES: tuple[str, ...] = get_args(CompactCode)


def _raw(value: bytes | str) -> bytes:
    """A string reply as its stored bytes (replies are str decoded with surrogateescape)."""
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


class RedisCompaction:
    """Compaction of finished runs and reading their compacted logs (composed:
    ``RedisWorld.compaction``, on the World's shared ``RedisCore``)."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core
        self._log = get_logger(component="world_redis")

    async def read_log(self, run_id: str) -> CompactedLog | None:
        """The run's compacted log, or None when it has none (live, not compacted, or gone)."""
        value = await self._value_of(run_id)
        return None if value is None else decode_log(run_id, value)

    async def read_run(self, run_id: str) -> dict[str, str]:
        """The run hash kept in the run's compacted log; empty when it has none."""
        value = await self._value_of(run_id)
        return {} if value is None else decode_run(run_id, value)

    async def _value_of(self, run_id: str) -> bytes | None:
        await self.core._ready()
        value = await with_retry(self.core.redis.get, self.core.keys.log(run_id))
        return None if value is None else _raw(value)

    async def compact_runs(self, run_ids: Sequence[str]) -> int:
        """Compact the finished ones of ``run_ids``: how many this call compacted. A run not
        terminal, already compacted or gone is left as it is; one whose log grew after it was
        read (a late step result of a cancelled run) is read again once."""
        codes = await self._compact(run_ids)
        return sum(1 for code in codes.values() if code == "compacted")

    async def _compact(self, run_ids: Sequence[str]) -> dict[str, CompactCode]:
        """compact.lua's answer for each run (a run that "moved" read and tried again once)."""
        await self.core._ready()
        out: dict[str, CompactCode] = {}
        for p, ids in self._by_partition(run_ids).items():
            out.update(zip(ids, await self._compact_partition(p, ids), strict=True))
            moved = [rid for rid in ids if out[rid] == "moved"]
            if moved:
                out.update(zip(moved, await self._compact_partition(p, moved), strict=True))
        return out

    async def compact_finished(self, older_than_ms: int, batch: int = 200, owner: str = "") -> int:
        """Compact runs that finished more than ``older_than_ms`` ago: at most about ``batch``
        per partition, each partition from where the last call left it (its cursor in
        ``<prefix>:{pN}:compact``), so nothing is scanned twice and a restart misses nothing.

        ``owner`` names the caller in the partition's lock, which keeps several workers from
        compacting the same runs at once (only to save work: compact.lua's fence makes a second
        compaction harmless). How many runs this call compacted."""
        await self.core._ready()
        counts = await asyncio.gather(
            *(
                self._compact_due(p, older_than_ms, batch, owner)
                for p in range(self.core.keys.partitions)
            )
        )
        return sum(counts)

    async def _compact_due(self, partition: int, older_than_ms: int, batch: int, owner: str) -> int:
        k, redis = self.core.keys, self.core.redis
        lock = k.compact_lock(partition)
        if not await with_retry(redis.set, lock, owner or "-", px=LOCK_MS, nx=True):
            return 0  # another worker is at it
        try:
            state = k.compact_state(partition)
            cursor = _int(text(await with_retry(redis.hget, state, "cursor")))
            sec, usec = await with_retry(redis.time)
            # a margin for the clocks of a cluster's nodes: a run finishing on a node behind
            # this one's clock must not land behind the cursor
            horizon = int(sec) * 1000 + int(usec) // 1000 - max(older_than_ms, CLOCK_MARGIN_MS)
            due = await self._due(k.idx_done(partition), cursor, horizon, batch)
            if not due:
                return 0
            codes = await self._compact([run_id for run_id, _ in due])
            # the cursor passes every run but those a later round may compact (a compacted run
            # left idx:done: going over the same scores again costs only those)
            retry = [score for run_id, score in due if codes[run_id] in RETRY_CODES]
            last = min(retry) - 1 if retry else due[-1][1]
            if last > cursor:
                await with_retry(redis.hset, state, "cursor", str(last))
            return sum(1 for code in codes.values() if code == "compacted")
        finally:
            # (a round that outlived LOCK_MS may delete another worker's lock: more duplicate work
            # for a moment, which the fence makes harmless)
            await with_retry(redis.delete, lock)

    async def _due(
        self, index: str, cursor: int, horizon: int, batch: int
    ) -> list[tuple[str, int]]:
        """Runs of ``index`` (idx:done) with a score in (cursor, horizon], oldest first, with
        their scores. A batch never splits the runs of one score: runs that finished in the same
        ms are taken together (or left together for the next call)."""
        redis = self.core.redis
        rows = await with_retry(
            redis.zrangebyscore, index, f"({cursor}", str(horizon), 0, batch, True
        )
        found = [(text(m), int(s)) for m, s in _pairs(rows)]
        if len(found) >= batch:
            last = found[-1][1]
            if found[0][1] == last:
                rows = await with_retry(
                    redis.zrangebyscore, index, str(last), str(last), None, None, True
                )
                found = [(text(m), int(s)) for m, s in _pairs(rows)]
            else:
                found = [(m, s) for m, s in found if s < last]
        return found

    def _by_partition(self, run_ids: Sequence[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = {}
        for run_id in dict.fromkeys(run_ids):
            groups.setdefault(self.core.keys.partition(run_id), []).append(run_id)
        return groups

    async def _compact_partition(self, partition: int, run_ids: list[str]) -> list[CompactCode]:
        """One read round trip and one script call for runs of one partition."""
        k = self.core.keys
        pipe = self.core.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(k.run(run_id))
            pipe.xrange(k.events(run_id))
        replies = await with_retry(pipe.execute)
        # encoded in a thread (zstd lets go of the GIL): a batch would otherwise hold the event
        # loop, and the worker's runs with it, for about 0.1 ms per run
        found = await asyncio.to_thread(self._values, run_ids, replies)
        keys = [k.idx_done(partition), k.compacted(partition)]
        args: list[Any] = []
        codes: list[CompactCode] = ["no_run"] * len(run_ids)
        sent: list[int] = []
        for i, (last_id, value) in found.items():
            run_id = run_ids[i]
            run, ev, ent, _ = k.run_keys(run_id)
            keys += [run, ev, ent, k.log(run_id)]
            args += [run_id, last_id, value]
            sent.append(i)
        if not sent:
            return codes
        reply = await self.core._eval("compact", keys, args)
        for i, code in zip(sent, reply, strict=True):
            codes[i] = _code(text(code))
        return codes

    async def expire_compacted(self, partition: int, indexes: list[str], page: int = 500) -> int:
        """Drop compacted runs whose value has expired from the listing ``indexes`` of the
        partition (idx:all, the status and workflow indexes): how many were dropped.

        The partition's list of compacted runs is in compaction order, about the order in which
        their values expire (each keeps its run's retention), so the expired ones are a prefix
        of it; a run compacted out of that order (``compact_runs`` on an old run) is dropped once
        the runs before it are. expire_compacted.lua removes the prefix only if the list still
        starts with it (another worker's janitor may have been first)."""
        k = self.core.keys
        head = [
            text(r)
            for r in await with_retry(self.core.redis.lrange, k.compacted(partition), 0, page - 1)
        ]
        if not head:
            return 0
        pipe = self.core.redis.pipeline(transaction=False)
        for run_id in head:
            pipe.exists(k.log(run_id))
        alive = await with_retry(pipe.execute)
        expired = head[: next((i for i, n in enumerate(alive) if n), len(head))]
        if not expired:
            return 0
        keys = [k.compacted(partition), *indexes]
        return int(await self.core._eval("expire_compacted", keys, expired))

    def _values(self, run_ids: list[str], replies: list[Any]) -> dict[int, tuple[str, bytes]]:
        """For the runs of a pipeline's replies (HGETALL, XRANGE per run) that can be compacted,
        by index: the id of the last entry read and the compacted value."""
        found: dict[int, tuple[str, bytes]] = {}
        compressor = new_compressor()  # this call's own: it runs in a thread
        for i, run_id in enumerate(run_ids):
            fields, stream = text_dict(replies[2 * i]), entries(replies[2 * i + 1])
            value = self._value(run_id, fields, stream, compressor)
            if value is not None:
                found[i] = (stream[-1][0], value)
        return found

    def _value(
        self,
        run_id: str,
        fields: dict[str, str],
        stream: list[Entry],
        compressor: zstandard.ZstdCompressor,
    ) -> bytes | None:
        """The compacted value of a finished run read from Redis; None when there is nothing to
        compact (no run, no stream: already compacted or gone) or it cannot be stored."""
        if fields.get("status") not in ("completed", "failed", "cancelled") or not stream:
            return None
        try:
            return encode_log(run_id, fields, stream, compressor)
        except UnicodeEncodeError:
            self._log.warning("run_not_compacted", run_id=run_id, reason="log holds non-UTF-8")
            return None


def _pairs(rows: Any) -> list[tuple[Any, Any]]:
    """(member, score) rows of a WITHSCORES reply."""
    return [tuple(row) for row in rows or [] if isinstance(row, tuple | list) and len(row) == 2]


def _int(value: str) -> int:
    """A stored cursor; 0 (start over: compaction is idempotent) when it is not a number."""
    try:
        return int(float(value)) if value else 0
    except ValueError:
        return 0


def _code(word: str) -> CompactCode:
    if word not in _CODES:
        raise CorruptEventError(f"unknown compact code {word!r} (expected one of {_CODES})")
    return cast(CompactCode, word)
