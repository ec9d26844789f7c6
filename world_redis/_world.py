"""RedisWorld: the World protocol on Redis Streams, hashes, sorted sets and Lua scripts."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from itertools import chain
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.commands.core import AsyncScript

from worker._errors import CorruptEventError
from worker._events import (
    Event,
    StepCompleted,
    StepCreated,
    StepFailed,
    StepRetrying,
    StepStarted,
    event_from_fields,
    make_event,
)
from worker._ids import new_event_id, new_ids
from worker._world import (
    Acquired,
    Commit,
    CommitResult,
    EventResult,
    RunInfo,
    StartRequest,
    StepInfo,
    Wakeup,
)

from ._keys import GROUP, STATUSES, Keys
from ._retry import with_retry
from ._streams import RedisStreams

DEFAULT_RETENTION_S = 7 * 24 * 3600
DEFAULT_MAX_PAYLOAD = 1024 * 1024

_JSON = msgspec.json.Encoder()
_INT_RUN_FIELDS = ("created_at", "started_at", "completed_at", "updated_at", "seq")


def _script_source(name: str) -> str:
    return resources.files("world_redis").joinpath("lua", f"{name}.lua").read_text()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def fields_dict(flat: Any) -> dict[str, str]:
    """A stream entry's fields from a script reply (a flat list) or a client reply (a dict)."""
    if isinstance(flat, dict):
        return flat
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


class RedisWorld:
    """The engine's storage, queue and timers on one Redis server (or a Cluster, by partition)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "wf",
        partitions: int = 1,
        retention_s: int | None = None,
        max_payload_bytes: int | None = None,
        deployment: str | None = None,
    ) -> None:
        # redis-py's asyncio annotations are too loose for mypy --strict (bytes | str everywhere,
        # Awaitable | value unions); the replies are decoded strings with decode_responses=True.
        self.redis: Any = client
        self.keys = Keys(prefix, partitions)
        self.retention_s = retention_s or int(
            os.environ.get("WORKFLOW_RETENTION_SECONDS", DEFAULT_RETENTION_S)
        )
        self.max_payload_bytes = max_payload_bytes or int(
            os.environ.get("WORKFLOW_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD)
        )
        self.deployment = deployment or os.environ.get("WORKFLOW_DEPLOYMENT_ID", "dpl_redis")
        self._scripts: dict[str, AsyncScript] = {}
        self._groups_ready = False
        self.streams = RedisStreams(self)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisWorld:
        client = aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
        return cls(client, **kwargs)

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self.redis.register_script(_script_source(name))
            self._scripts[name] = script
        return script

    async def _eval(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._script(name)
        return await with_retry(script, keys=list(keys), args=list(args))

    async def close(self) -> None:
        await self.redis.aclose()

    # -- runs --------------------------------------------------------------------------------

    async def create_run(
        self, run_id: str, workflow: str, input_json: str, deployment: str = ""
    ) -> bool:
        k = self.keys
        p = k.partition(run_id)
        run, ev, *_ = k.run_keys(run_id)
        reply = await self._eval(
            "create_run",
            [
                run,
                ev,
                k.ready(p),
                k.idx_all(p),
                k.idx_status(p, "pending"),
                k.idx_workflow(p, workflow),
                k.workflows(p),
            ],
            [
                run_id,
                workflow,
                input_json,
                new_event_id(),
                deployment or self.deployment,
                secrets.token_hex(16),
            ],
        )
        return bool(reply[0] == "created")

    async def get_run(self, run_id: str) -> RunInfo | None:
        data = await with_retry(self.redis.hgetall, self.keys.run(run_id))
        return self._run_info(run_id, data) if data else None

    @staticmethod
    def _run_info(run_id: str, data: dict[str, str]) -> RunInfo:
        ints: dict[str, Any] = {}
        for f in _INT_RUN_FIELDS:
            v = data.get(f)
            ints[f] = int(v) if v not in (None, "") else None
        return RunInfo(
            run_id=run_id,
            workflow=data.get("workflow", ""),
            status=data.get("status", ""),
            input=data.get("input", "[]"),
            output=data.get("output"),
            error=data.get("error"),
            deployment=data.get("deployment", ""),
            created_at=ints["created_at"] or 0,
            started_at=ints["started_at"],
            completed_at=ints["completed_at"],
            updated_at=ints["updated_at"],
            seq=ints["seq"] or 0,
            lease_owner=data.get("lease_owner", ""),
        )

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[RunInfo], str | None]:
        """Runs newest first, filtered by status and/or workflow; ``cursor`` continues a listing.

        The cursor is ``<created ms>:<run id>`` of the last run returned. With both filters the
        workflow index is walked page by page until enough runs of that status are found.
        """
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        k = self.keys
        after: tuple[int, str] | None = None
        if cursor:
            score_text, _, run_text = cursor.partition(":")
            try:
                after = (int(score_text), run_text)
            except ValueError:
                raise ValueError(f"invalid cursor {cursor!r}") from None
        keys = []
        for p in range(k.partitions):
            if workflow is not None:
                keys.append(k.idx_workflow(p, workflow))
            else:
                keys.append(k.idx_status(p, status) if status is not None else k.idx_all(p))
        out: list[RunInfo] = []
        last: tuple[int, str] | None = None
        async for score, run_id in _merge_newest_first([self._walk_index(k, after) for k in keys]):
            info = await self.get_run(run_id)
            last = (score, run_id)
            if info is None or (status is not None and info.status != status):
                continue
            out.append(info)
            if len(out) >= limit:
                break
        more = len(out) >= limit and last is not None
        return out, (f"{last[0]}:{last[1]}" if more and last is not None else None)

    async def _walk_index(
        self, key: str, after: tuple[int, str] | None, page: int = 500
    ) -> AsyncIterator[tuple[int, str]]:
        """Entries of an index, newest first, strictly after the cursor position."""
        max_score = str(after[0]) if after else "+inf"
        offset = 0
        while True:
            rows = await with_retry(
                self.redis.zrevrangebyscore,
                key,
                max_score,
                "-inf",
                start=offset,
                num=page,
                withscores=True,
            )
            for member, score in rows:
                item = (int(score), _s(member))
                if after is None or item < after:
                    yield item
            if len(rows) < page:
                return
            offset += page

    async def read_events(self, run_id: str, after_seq: int = 0) -> list[Event]:
        key = self.keys.events(run_id)
        start = f"({after_seq}-0" if after_seq > 0 else "-"
        rows = await with_retry(self.redis.xrange, key, start, "+")
        return [
            event_from_fields(int(_s(eid).split("-", 1)[0]), fields, run_id) for eid, fields in rows
        ]

    async def wait_for_events(self, run_id: str, after_seq: int, timeout_ms: int) -> bool:
        """Block until the run's log holds an event after ``after_seq`` (True) or the timeout."""
        reply = await with_retry(
            self.redis.xread,
            {self.keys.events(run_id): f"{after_seq}-0"},
            count=1,
            block=timeout_ms,
        )
        return bool(reply)

    async def list_steps(self, run_id: str) -> list[StepInfo]:
        """The run's steps in creation order, materialized from its event log."""
        return steps_from_events(await self.read_events(run_id))

    # -- the commit script -------------------------------------------------------------------

    async def commit(self, commits: Sequence[Commit]) -> list[CommitResult]:
        """Append events for several runs; one script call per partition."""
        by_partition = self._by_partition([c.run_id for c in commits])
        results: list[CommitResult | None] = [None] * len(commits)
        for p, idxs in by_partition.items():
            batch = [commits[i] for i in idxs]
            flat_ids = new_ids("evnt", sum(len(c.events) for c in batch))
            event_ids, at = [], 0
            for c in batch:
                event_ids.append(flat_ids[at : at + len(c.events)])
                at += len(c.events)
            keys = self.keys.partition_keys(p)
            payload: list[Any] = []
            for c, ids in zip(batch, event_ids, strict=True):
                keys.extend(self.keys.run_keys(c.run_id))
                payload.append(
                    [
                        c.run_id,
                        c.token,
                        c.expected_seq,
                        c.wake,
                        [
                            [ev.type, ev.corr, evid, list(chain.from_iterable(ev.fields.items()))]
                            for ev, evid in zip(c.events, ids, strict=True)
                        ],
                    ]
                )
            args = [self.retention_s, _JSON.encode(payload)]
            reply = await self._eval("commit", keys, args)
            for i, c, ids, r in zip(idxs, batch, event_ids, reply, strict=True):
                results[i] = self._commit_result(c, ids, r)
        return [r for r in results if r is not None]

    @staticmethod
    def _commit_result(c: Commit, ids: list[str], reply: list[Any]) -> CommitResult:
        # replies are already str (decode_responses=True) and ints
        code, seq, now = reply[0], int(reply[1]), int(reply[2])
        results = [EventResult(r[0], r[1]) for r in reply[3]]
        appended: list[Event] = []
        ok_count = sum(1 for r in results if r.status == "ok")
        s = seq - ok_count
        for ev, evid, res in zip(c.events, ids, results, strict=False):
            if res.status != "ok":
                continue
            s += 1
            appended.append(make_event(ev, s, evid, now, res.extra))
        return CommitResult(code=code, seq=seq, now_ms=now, results=results, appended=appended)

    # -- the work queue ----------------------------------------------------------------------

    async def ensure_groups(self) -> None:
        if self._groups_ready:
            return
        streams = [self.keys.ready(p) for p in range(self.keys.partitions)]
        streams += [self.keys.start_stream(), self.keys.resume_stream()]
        for stream in streams:
            try:
                await with_retry(self.redis.xgroup_create, stream, GROUP, id="0", mkstream=True)
            except rexc.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    async def server_warnings(self) -> list[str]:
        """What in the server's configuration puts runs at risk (empty when all is well).

        Eviction silently deletes run keys; without AOF a restart loses every run. Managed
        services may refuse CONFIG GET: then nothing is reported.
        """
        try:
            policy = await self.redis.config_get("maxmemory-policy")
            aof = await self.redis.config_get("appendonly")
        except rexc.ResponseError:
            return []
        warnings = []
        value = policy.get("maxmemory-policy", "noeviction")
        if value != "noeviction":
            warnings.append(
                f"maxmemory-policy is {value!r}: Redis may evict run keys; set it to 'noeviction'"
            )
        if aof.get("appendonly", "yes") != "yes":
            warnings.append("appendonly is 'no': a Redis restart loses runs; enable AOF")
        return warnings

    def _wakeups(self, reply: Any) -> list[Wakeup]:
        out: list[Wakeup] = []
        for stream, entries in reply or []:
            p = int(_s(stream).rsplit("{p", 1)[1].split("}", 1)[0])
            for mid, fields in entries:
                out.append(
                    Wakeup(
                        partition=p,
                        message_id=_s(mid),
                        run_id=(fields or {}).get("run", ""),
                        reason=(fields or {}).get("reason", ""),
                    )
                )
        return out

    async def read_wakeups(self, consumer: str, count: int, block_ms: int) -> list[Wakeup]:
        await self.ensure_groups()
        streams = {self.keys.ready(p): ">" for p in range(self.keys.partitions)}
        reply = await with_retry(
            self.redis.xreadgroup, GROUP, consumer, streams, count=count, block=block_ms or None
        )
        return self._wakeups(reply)

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Wakeup]:
        """Take over wake-ups whose consumer stopped renewing them (a dead or stuck worker)."""
        out: list[Wakeup] = []
        for p in range(self.keys.partitions):
            stream = self.keys.ready(p)
            pending = await with_retry(
                self.redis.xpending_range,
                stream,
                GROUP,
                min="-",
                max="+",
                count=count,
                idle=min_idle_ms,
            )
            if not pending:
                continue
            deliveries = {_s(row["message_id"]): int(row["times_delivered"]) for row in pending}
            claimed = await with_retry(
                self.redis.xclaim, stream, GROUP, consumer, min_idle_ms, list(deliveries)
            )
            missing = set(deliveries)
            for mid, fields in claimed:
                mid = _s(mid)
                missing.discard(mid)
                if fields is None:
                    continue
                out.append(
                    Wakeup(
                        partition=p,
                        message_id=mid,
                        run_id=fields.get("run", ""),
                        reason=fields.get("reason", ""),
                        deliveries=deliveries[mid] + 1,
                    )
                )
            if missing:  # entries deleted from the stream but still pending: drop them
                await with_retry(self.redis.xack, stream, GROUP, *missing)
        return out

    async def ack(self, wakeups: Sequence[Wakeup]) -> None:
        if not wakeups:
            return
        by_stream: dict[str, list[str]] = {}
        for w in wakeups:
            by_stream.setdefault(self.keys.ready(w.partition), []).append(w.message_id)

        async def run() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xack(stream, GROUP, *ids)
                pipe.xdel(stream, *ids)
            await pipe.execute()

        await with_retry(run)

    async def requeue(self, wakeup: Wakeup, reason: str) -> None:
        """Hand a run over to any worker: a fresh wake-up, then the old message acknowledged."""
        stream = self.keys.ready(wakeup.partition)

        async def run() -> None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(stream, {"run": wakeup.run_id, "reason": reason})
            pipe.xack(stream, GROUP, wakeup.message_id)
            pipe.xdel(stream, wakeup.message_id)
            await pipe.execute()

        await with_retry(run)

    async def acquire(
        self, run_id: str, token: str, lease_ms: int, after_seq: int = -1
    ) -> Acquired:
        (result,) = await self.acquire_many(token, lease_ms, [(run_id, after_seq)])
        return result

    async def acquire_many(
        self, token: str, lease_ms: int, runs: Sequence[tuple[str, int]]
    ) -> list[Acquired]:
        """Take the leases of several runs: one script call per partition."""
        out: list[Acquired | None] = [None] * len(runs)
        for idxs in self._by_partition([r for r, _ in runs]).values():
            keys: list[str] = []
            args: list[Any] = [token, lease_ms]
            for i in idxs:
                run, ev, *_ = self.keys.run_keys(runs[i][0])
                keys += [run, ev]
                args.append(runs[i][1])
            reply = await self._eval("acquire", keys, args)
            for i, r in zip(idxs, reply, strict=True):
                out[i] = self._acquired(runs[i][0], r)
        return [a for a in out if a is not None]

    @staticmethod
    def _acquired(run_id: str, r: list[Any]) -> Acquired:
        try:
            events = [
                event_from_fields(int(_s(eid).split("-", 1)[0]), fields_dict(fields), run_id)
                for eid, fields in r[4]
            ]
        except CorruptEventError:
            events = []  # the caller reads the log itself and reports the corrupt event
        return Acquired(_s(r[0]), int(r[1]), _s(r[2]), int(r[3]) == 1, events)

    def _by_partition(self, run_ids: Sequence[str]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for i, run_id in enumerate(run_ids):
            groups.setdefault(self.keys.partition(run_id), []).append(i)
        return groups

    async def release(
        self, run_id: str, token: str, seq: int, wakeup: Wakeup | None = None
    ) -> tuple[str, int]:
        (result,) = await self.release_many(token, [(run_id, seq, wakeup)])
        return result

    async def release_many(
        self, token: str, runs: Sequence[tuple[str, int, Wakeup | None]]
    ) -> list[tuple[str, int]]:
        """Release several leases and acknowledge their wake-ups: one call per partition."""
        out: list[tuple[str, int] | None] = [None] * len(runs)
        for p, idxs in self._by_partition([r[0] for r in runs]).items():
            keys = [self.keys.ready(p)]
            args: list[Any] = [token, GROUP]
            for i in idxs:
                run_id, seq, wakeup = runs[i]
                keys.append(self.keys.run(run_id))
                args += [seq, wakeup.message_id if wakeup is not None else ""]
            reply = await self._eval("release", keys, args)
            for i, r in zip(idxs, reply, strict=True):
                out[i] = (_s(r[0]), int(r[1]))
        return [r for r in out if r is not None]

    async def heartbeat(
        self, token: str, run_ids: Sequence[str], wakeups: Sequence[Wakeup], lease_ms: int
    ) -> dict[str, int]:
        """Extend leases and reset the idle time of held wake-ups (XCLAIM JUSTID, no count bump)."""
        out: dict[str, int] = {}
        if run_ids:
            seqs = await self._eval(
                "heartbeat", [self.keys.run(r) for r in run_ids], [token, lease_ms]
            )
            out = {r: int(s) for r, s in zip(run_ids, seqs, strict=True)}
        by_stream: dict[str, list[str]] = {}
        for w in wakeups:
            by_stream.setdefault(self.keys.ready(w.partition), []).append(w.message_id)
        for stream, ids in by_stream.items():
            consumer = token.split("#", 1)[0]
            await with_retry(self.redis.xclaim, stream, GROUP, consumer, 0, ids, justid=True)
        return out

    async def promote_timers(self) -> int | None:
        """Move due timers to the ready streams; the earliest remaining due time (ms) or None."""
        nxt: int | None = None
        for p in range(self.keys.partitions):
            _, due = await self._eval(
                "promote_timers", [self.keys.timers(p), self.keys.ready(p)], [500]
            )
            if int(due) >= 0:
                nxt = int(due) if nxt is None else min(nxt, int(due))
        return nxt

    async def dead_letter(self, wakeup: Wakeup, reason: str) -> None:
        """Copy the wake-up to the dead-letter stream, then acknowledge it (copy before ack)."""
        dlq = self.keys.dlq(wakeup.partition)
        await with_retry(
            self.redis.xadd,
            dlq,
            {
                "run": wakeup.run_id,
                "reason": reason,
                "message_id": wakeup.message_id,
                "deliveries": str(wakeup.deliveries),
                "host": socket.gethostname(),
            },
            maxlen=100_000,
            approximate=True,
        )
        await self.ack([wakeup])

    def _request_stream(self, kind: str) -> str:
        return self.keys.resume_stream() if kind == "resume" else self.keys.start_stream()

    async def read_start_requests(
        self, consumer: str, count: int, block_ms: int
    ) -> list[StartRequest]:
        """Requests from any service: run starts (``wf:start``) and hook resumes (``wf:hooks:resume``)."""
        await self.ensure_groups()
        start, resume = self.keys.start_stream(), self.keys.resume_stream()
        reply = await with_retry(
            self.redis.xreadgroup,
            GROUP,
            consumer,
            {start: ">", resume: ">"},
            count=count,
            block=block_ms or None,
        )
        out: list[StartRequest] = []
        for stream, entries in reply or []:
            kind = "resume" if _s(stream) == resume else "start"
            for mid, fields in entries:
                out.append(StartRequest(message_id=_s(mid), fields=dict(fields or {}), kind=kind))
        return out

    async def reject_start_request(self, request: StartRequest, reason: str) -> None:
        await with_retry(
            self.redis.xadd,
            self.keys.rejected(self._request_stream(request.kind)),
            {**request.fields, "message_id": request.message_id, "reason": reason},
            maxlen=10_000,
            approximate=True,
        )

    async def ack_start_requests(self, requests: Sequence[StartRequest]) -> None:
        if not requests:
            return

        async def run() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for r in requests:
                stream = self._request_stream(r.kind)
                pipe.xack(stream, GROUP, r.message_id)
                pipe.xdel(stream, r.message_id)
            await pipe.execute()

        await with_retry(run)

    async def list_hooks(self, run_id: str) -> list[tuple[str, str, str]]:
        """The run's live hooks: (hook id, token, metadata JSON), in creation order."""
        fields = await with_retry(self.redis.hgetall, self.keys.run_hooks(run_id))
        hooks = [
            (hook_id, token, fields.get(f"{hook_id}|meta", "null"))
            for hook_id, token in fields.items()
            if "|" not in hook_id
        ]
        return sorted(hooks)

    async def find_hook(self, token: str) -> tuple[str, str, str] | None:
        """(run id, hook id, metadata JSON) of the live hook holding ``token``, if any."""
        for p in range(self.keys.partitions):
            holder = await with_retry(self.redis.hget, self.keys.hooks(p), token)
            if holder:
                run_id, _, hook_id = str(holder).partition("|")
                meta = await with_retry(
                    self.redis.hget, self.keys.run_hooks(run_id), f"{hook_id}|meta"
                )
                return run_id, hook_id, meta or "null"
        return None

    # -- replies: webhook responses and health checks ------------------------------------------

    def reply_key(self, run_id: str, reply_id: str) -> str:
        """``<prefix>:{pN}:run:<run id>:response:<id>`` beside a run, else ``<prefix>:reply:<id>``."""
        if run_id:
            return self.keys.response(run_id, reply_id)
        return self.keys.reply(reply_id)

    async def push_reply(self, run_id: str, reply_id: str, data: str, ttl_s: int = 300) -> None:
        """RPUSH a reply for a waiting ``pop_reply`` (the key expires after ``ttl_s``)."""
        key = self.reply_key(run_id, reply_id)

        async def run() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.rpush(key, data)
            pipe.expire(key, ttl_s)
            await pipe.execute()

        await with_retry(run)

    async def pop_reply(self, run_id: str, reply_id: str, timeout_s: float) -> str | None:
        """BLPOP the reply pushed by ``push_reply``; None when none came within ``timeout_s``."""
        key = self.reply_key(run_id, reply_id)
        got = await with_retry(self.redis.blpop, [key], timeout=timeout_s)
        return None if got is None else _s(got[1])

    async def enqueue_health_check(self, check_id: str) -> None:
        """A wake-up with no run and reason ``health:<id>``; a live worker answers with a reply."""
        await with_retry(
            self.redis.xadd, self.keys.ready(0), {"run": "", "reason": f"health:{check_id}"}
        )

    async def expire_indexes(self) -> int:
        dropped = 0
        for p in range(self.keys.partitions):
            k = self.keys
            names = await with_retry(self.redis.smembers, self.keys.workflows(p))
            keys = [k.idx_done(p), k.idx_all(p), *(k.idx_status(p, s) for s in STATUSES)]
            keys += [k.idx_workflow(p, n) for n in sorted(names)]
            dropped += int(await self._eval("expire_index", keys, [self.retention_s * 1000, 1000]))
        return dropped


async def _merge_newest_first(
    walks: list[AsyncIterator[tuple[int, str]]],
) -> AsyncIterator[tuple[int, str]]:
    """Merge per-partition index walks (each newest first) lazily into one, newest first."""
    heads: list[tuple[tuple[int, str], int]] = []
    for i, walk in enumerate(walks):
        async for item in walk:
            heads.append((item, i))
            break
    while heads:
        best = max(heads)
        heads.remove(best)
        yield best[0]
        async for item in walks[best[1]]:
            heads.append((item, best[1]))
            break


def steps_from_events(events: Sequence[Event]) -> list[StepInfo]:
    """Step entities as the log defines them (first start time kept across attempts)."""
    steps: dict[str, dict[str, Any]] = {}
    for ev in events:
        if isinstance(ev, StepCreated):
            steps[ev.corr] = {
                "step_id": ev.corr,
                "name": ev.name,
                "status": "pending",
                "input": ev.input,
                "created_at": ev.ts,
            }
            continue
        step = steps.get(ev.corr)
        if step is None:
            continue
        if isinstance(ev, StepStarted):
            step.update(status="running", attempt=ev.attempt, retry_after=None)
            step.setdefault("started_at", ev.ts)
        elif isinstance(ev, StepCompleted):
            step.update(status="completed", output=ev.result, completed_at=ev.ts)
        elif isinstance(ev, StepFailed):
            step.update(status="failed", error=ev.error, completed_at=ev.ts)
        elif isinstance(ev, StepRetrying):
            step.update(status="pending", error=ev.error, retry_after=ev.retry_after)
    return [StepInfo(**s) for s in steps.values()]
