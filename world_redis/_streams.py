"""Run output streams stored as Redis Streams (``world.streams``, see ``worker._streams``).

Layout
------
Every stream of a run lives next to the run's other keys, under the run's partition hash tag, so
one Redis Cluster slot holds them all::

    wf:{p0}:run:<run id>:stream:<name>   stream  the chunks, one entry per write, in write order
    wf:{p0}:run:<run id>:streams         set     names of the run's streams

Stream names: ``strm_<run ULID>_user`` (default), ``strm_<run ULID>_user_<base64url(namespace)>``
(namespaced, without ``=`` padding), ``strm_<ULID>`` (an async iterator returned by a step).

Each entry has exactly one of these fields::

    b     a chunk of bytes, standard base64
    v     a structured chunk: one value in the engine's JSON serialization (see worker._serde)
    err   the stream's source failed: the exception, serialized; followed by an ``eof`` entry
    eof   ``1``: the stream is closed; readers stop here

To follow a stream by hand: ``redis-cli XREAD BLOCK 0 STREAMS 'wf:{p0}:run:<id>:stream:<name>' 0``.

Expiry: each write and each close sets ``EXPIRE <retention>`` (``WORKFLOW_RETENTION_SECONDS``) on
the stream and on the name set, so the TTL is refreshed on every write and a stream disappears
one retention period after its last chunk, like the run it belongs to after the run finishes.

Encryption: with ``WORKFLOW_ENCRYPTION_KEY`` set (see ``worker._codec``) the value of ``b``, ``v``
and ``err`` is an envelope bound to the run, the field and the stream name; ``eof`` stays plain.

Delivery: a write whose reply is lost to a connection error is retried, so a chunk may be stored
twice in that rare case (at-least-once); readers see chunks in the order they were stored.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from worker.world import RunNotFoundError, WorkflowError, check_size, dumps, loads

from ._client import entries as entry_rows
from ._client import stream_replies, text
from ._retry import with_retry

if TYPE_CHECKING:
    from ._world import RedisWorld

__all__ = ["RedisStreams"]

BLOCK_MS = 1000  # one XREAD BLOCK; readers loop until the end marker
PAGE = 500  # entries per XREAD / XRANGE call
_END_FIELDS = ("eof", "err")


SNAPSHOT_MAX = 1_000  # chunks a snapshot reads at most (the dashboard shows the last ones)


class RedisStreams:
    """The StreamStore of a RedisWorld."""

    def __init__(self, world: RedisWorld) -> None:
        self._world = world

    async def write(self, run_id: str, name: str, value: object) -> None:
        await self._append(run_id, name, [self._seal(run_id, name, self._chunk(name, value))])

    async def close(self, run_id: str, name: str, error: BaseException | None = None) -> None:
        entries: list[dict[str, str]] = []
        if error is not None:
            err = {"err": dumps(error, what=f"error of stream {name}")}
            entries.append(self._seal(run_id, name, err))
        entries.append({"eof": "1"})
        await self._append(run_id, name, entries)

    async def list_streams(self, run_id: str) -> list[str]:
        await self._world.core._ready()
        key = self._world.keys.streams_index(run_id)
        return sorted(text(n) for n in await with_retry(self._world.redis.smembers, key))

    async def read(self, run_id: str, name: str, start_index: int = 0) -> AsyncIterator[Any]:
        await self._check_run(run_id)
        key = self._world.keys.stream(run_id, name)
        skip = start_index if start_index >= 0 else await self._tail_start(key, start_index)
        last, encrypted = "0-0", self._world.codec is not None
        while True:
            entries = await self._next_entries(key, last)
            if not entries:
                await self._check_run(run_id)  # an expired run's stream will never end
            for entry_id, fields in entries:
                last = entry_id
                if "eof" in fields:
                    return
                if encrypted:
                    fields = self._open(run_id, name, fields)
                if "err" in fields:
                    raise _stored_error(fields["err"], name)
                if skip > 0:
                    skip -= 1
                    continue
                yield _decode(fields)

    async def snapshot(self, run_id: str, name: str, limit: int = 50) -> tuple[list[Any], str]:
        """The last ``limit`` chunks among the first SNAPSHOT_MAX of a stream, at once (no
        waiting), and its state: "open", "ended", or "failed: <error>"."""
        await self._world.core._ready()
        key = self._world.keys.stream(run_id, name)
        rows = entry_rows(
            await with_retry(self._world.redis.xrange, key, "-", "+", count=SNAPSHOT_MAX)
        )
        chunks: list[Any] = []
        state = "open"
        for _entry_id, fields in rows:
            if "eof" in fields:
                state = "ended"
                break
            if self._world.codec is not None:
                fields = self._open(run_id, name, fields)
            if "err" in fields:
                state = f"failed: {_stored_error(fields['err'], name)}"
                break
            chunks.append(_decode(fields))
        return chunks[-limit:], state

    # -- helpers ------------------------------------------------------------------------------

    def _seal(self, run_id: str, name: str, fields: dict[str, str]) -> dict[str, str]:
        codec = self._world.codec
        if codec is None:
            return fields
        return {
            k: codec.encrypt(v, run_id=run_id, field=k, context=name) for k, v in fields.items()
        }

    def _open(self, run_id: str, name: str, fields: dict[str, str]) -> dict[str, str]:
        """A chunk's fields decrypted (DecryptionError when one cannot be)."""
        codec = self._world.codec
        if codec is None:
            return fields
        return {
            k: codec.decrypt(v, run_id=run_id, field=k, context=name) for k, v in fields.items()
        }

    def _chunk(self, name: str, value: object) -> dict[str, str]:
        what, limit = f"chunk of stream {name}", self._world.max_payload_bytes
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            check_size(raw, what=what, limit=limit)
            return {"b": base64.b64encode(raw).decode("ascii")}
        text = dumps(value, what=what)
        check_size(text, what=what, limit=limit)
        return {"v": text}

    async def _append(self, run_id: str, name: str, entries: list[dict[str, str]]) -> None:
        await self._world.core._ready()
        keys, ttl = self._world.keys, self._world.retention_s
        key, index = keys.stream(run_id, name), keys.streams_index(run_id)

        async def run() -> None:
            pipe = self._world.redis.pipeline(transaction=True)
            for fields in entries:
                pipe.xadd(key, {k: v for k, v in fields.items()})
            pipe.expire(key, ttl)
            pipe.sadd(index, name)
            pipe.expire(index, ttl)
            await pipe.execute()

        await with_retry(run)

    async def _check_run(self, run_id: str) -> None:
        await self._world.core._ready()
        keys = self._world.keys  # a compacted run has no run hash, only its log
        if not await with_retry(self._world.redis.exists, keys.run(run_id), keys.log(run_id)):
            raise RunNotFoundError(run_id)

    async def _next_entries(self, key: str, after: str) -> list[tuple[str, dict[str, str]]]:
        """Entries after ``after``: at once when there are some, else within BLOCK_MS (or none)."""
        reply = await with_retry(self._world.redis.xread, {key: after}, count=PAGE, block=BLOCK_MS)
        return [entry for _stream, rows in stream_replies(reply) for entry in rows]

    async def _tail_start(self, key: str, start_index: int) -> int:
        """Chunks to skip for a negative ``start_index``, from the chunks stored right now."""
        count, start = 0, "-"
        while True:
            rows = entry_rows(
                await with_retry(self._world.redis.xrange, key, start, "+", count=PAGE)
            )
            for _entry_id, fields in rows:
                if any(f in fields for f in _END_FIELDS):
                    return max(0, count + start_index)
                count += 1
            if len(rows) < PAGE:
                return max(0, count + start_index)
            start = f"({rows[-1][0]}"


def _decode(fields: dict[str, str]) -> Any:
    if "b" in fields:
        return base64.b64decode(fields["b"])
    return loads(fields.get("v", "null"), what="stream chunk")


def _stored_error(text: str, name: str) -> BaseException:
    error = loads(text, what=f"error of stream {name}")
    if isinstance(error, BaseException):
        return error
    return WorkflowError(f"stream {name} failed: {error}")
