"""RedisWorld: the World protocol on Redis Streams, hashes, sorted sets and Lua scripts."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, get_args

import msgspec

from worker.world import (
    COMMIT_CODE_OF,
    Acquired,
    Commit,
    CommitResult,
    CorruptEventError,
    Event,
    EventResult,
    EventStatus,
    PayloadCodec,
    ReplicaAckTimeoutError,
    RunInfo,
    StartRequest,
    StepInfo,
    Wakeup,
    WorkflowError,
    appended_events,
    commit_code,
    event_statuses,
)

from ._children import RedisChildren
from ._client import (
    ClientFactory,
    RedisClient,
    cluster_setting,
    entries,
    stream_replies,
    text,
    text_dict,
)
from ._compact import CompactedLogError, RedisCompaction
from ._core import RedisCore, all_at_once
from ._deployments import RedisDeployments
from ._dlq import RedisDeadLetters
from ._flow import RedisFlow
from ._gauges import RedisGauges
from ._hook_tokens import RedisHookTokens, Reserved
from ._keys import GROUP, STATUSES, Keys, band_of
from ._lean import stream_rows
from ._pools import RedisPools
from ._presence import RedisPresence
from ._queue import RedisQueue, _s
from ._requests import RedisRequests
from ._retry import with_retry
from ._runs import merge_newest_first, run_info, steps_from_events
from ._schedules import RedisSchedules
from ._streams import RedisStreams

DEFAULT_RETENTION_S = 7 * 24 * 3600
DEFAULT_MAX_PAYLOAD = 1024 * 1024

# the commit batch (see commit.lua's header): MessagePack, packed and unpacked faster than JSON
_MSGPACK = msgspec.msgpack.Encoder()

# The event results commit.lua answers most (every status, with a small extra such as a step's
# attempt), made once and shared: EventResult is immutable.
_EVENT_RESULTS: dict[tuple[str, int], EventResult] = {
    (status, extra): EventResult(status, extra)
    for status in get_args(EventStatus)
    for extra in range(64)
}


WAIT_PAGE = 100  # events one wait_for_events returns at most


def _event_results(flat: list[Any], at: int, end: int) -> list[EventResult]:
    """The (status, extra) pairs at flat[at + 4:end] as results (see RedisWorld._commit_result)."""
    known = _EVENT_RESULTS
    results: list[EventResult] = []
    for j in range(at + 4, end, 2):
        r = known.get((flat[j], flat[j + 1]))
        if r is None:  # a rarer answer: checked and built
            (r,) = event_statuses(flat[j : j + 2])
        results.append(r)
    return results


class RedisWorld:
    """The engine's storage, queue and timers on one Redis server or a Redis Cluster.

    ``client`` is a redis-py asyncio client (single-node or cluster, ``decode_responses=True``),
    or a ``ClientFactory`` that builds the right one at first use (what ``from_url`` passes).
    ``partitions``: None takes the count stored for the prefix, or stores the default (1 on one
    server, 16 per master on a cluster); a number must match the stored count.
    ``replica_acks`` (else ``WORKFLOW_REPLICA_ACKS``, default 0): how many replicas must hold
    each script's writes (a start, a commit, a hook's payload...) before the call returns, asked
    with ``WAIT``; ``replica_ack_timeout_ms`` (else ``WORKFLOW_REPLICA_ACK_TIMEOUT_MS``; default
    0: as long as it takes): how long before ReplicaAckTimeoutError (see RedisCore._eval_acked).

    Composed of parts that share one ``RedisCore`` (``core``: the client, the deployment's
    settings, scripts, keys): ``queue`` (wake-ups, leases, timers), ``presence`` and
    ``hook_tokens``; ``requests`` and ``pools`` read streams through ``queue``; ``deployments`` and
    ``streams`` hold the World itself. This class holds runs and their logs and hands
    the rest of the World protocol to the part that owns it.
    """

    def __init__(
        self,
        client: RedisClient | ClientFactory,
        *,
        prefix: str = "wf",
        partitions: int | None = None,
        retention_s: int | None = None,
        max_payload_bytes: int | None = None,
        deployment: str | None = None,
        codec: PayloadCodec | None = None,
        replica_acks: int | None = None,
        replica_ack_timeout_ms: int | None = None,
    ) -> None:
        if partitions is not None and (not isinstance(partitions, int) or partitions < 1):
            raise ValueError(f"partitions must be a whole number >= 1, got {partitions!r}")
        # the shared client (_core.py); ``replica_acks``: see RedisCore._eval_acked
        self.core = RedisCore(client, prefix, partitions, replica_acks, replica_ack_timeout_ms)
        self.queue = RedisQueue(self.core)  # wake-ups, leases, timers (_queue.py)
        self.requests = RedisRequests(self.queue)  # request streams and replies (_requests.py)
        self.presence = RedisPresence(self.core)  # workers' status and health (_presence.py)
        self.hook_tokens = RedisHookTokens(self.core)  # token reservations (_hook_tokens.py)
        self.compaction = RedisCompaction(self.core)  # finished runs' logs (_compact.py)
        # payload encryption: ``codec``, else WORKFLOW_ENCRYPTION_KEY (see worker._codec)
        self.codec = codec or PayloadCodec.from_env()
        self.retention_s = retention_s or int(
            os.environ.get("WORKFLOW_RETENTION_SECONDS", DEFAULT_RETENTION_S)
        )
        self.max_payload_bytes = max_payload_bytes or int(
            os.environ.get("WORKFLOW_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD)
        )
        # the deployment new runs are pinned to when start() names none and chose none ("":
        # unpinned, pinned by the first worker that takes the run; see _deployments.py)
        self.deployment = deployment or ""
        self.streams = RedisStreams(self)
        self.pools = RedisPools(self.queue)  # worker pools: queue streams (see _pools.py)
        self.children = RedisChildren(self.core)  # child runs' links to parents (_children.py)
        self.deployments = RedisDeployments(self)  # the registry, runs' pins (_deployments.py)
        self.gauges = RedisGauges(self.core)  # what metrics read from Redis (_gauges.py)
        self.dead_letters = RedisDeadLetters(self.core)  # list, drop, replay (_dlq.py)
        self.schedules = RedisSchedules(self.core)  # schedules and their due index (_schedules.py)
        self.flow = RedisFlow(self.core)  # flow control: slots, waiters, rates (_flow.py)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ssl_ca_certs: str | None = None,
        cluster: bool | None = None,
        **kwargs: Any,
    ) -> RedisWorld:
        """A World on the server at ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``),
        which may be any node of a Redis Cluster.

        ``ssl_ca_certs`` is the CA bundle that verifies a ``rediss://`` server's certificate (the
        URL's ``?ssl_ca_certs=/path`` query does the same; redis-py passes query arguments on).
        ``cluster``: None (default, or ``WORKFLOW_REDIS_CLUSTER`` when set) asks the server at
        first use (``INFO cluster``); True or False says it. Other keyword arguments configure
        the World; ``prefix`` and ``partitions`` default to ``WORKFLOW_PREFIX`` and
        ``WORKFLOW_PARTITIONS`` as ``get_world()`` reads them. No connection is made here.
        """
        # Replies are decoded to str, but a byte that is not UTF-8 becomes a lone surrogate
        # (surrogateescape) instead of failing the whole reply: one bad entry written by another
        # service must not make a batch of requests or a reclaim unreadable. The queue checks each
        # entry (``_queue.undecodable``) and moves a bad one aside with its raw bytes, which
        # ``s.encode("utf-8", "surrogateescape")`` gives back. Chosen over a second, bytes-only
        # client for stream reads: one connection pool, and every other reply keeps its str
        # types. Checked with the hiredis parser and with redis-py's pure-Python parser (the tests
        # run with whichever is installed). Writing such a string back writes the original bytes.
        tls: dict[str, Any] = {}
        if ssl_ca_certs:
            # A plain connection would reject the option only at its first command, far from
            # the setting that caused it.
            if not url.startswith("rediss://"):
                raise ValueError(f"ssl_ca_certs needs a rediss:// URL, got {url.split(':')[0]}://")
            tls["ssl_ca_certs"] = ssl_ca_certs
        options: dict[str, Any] = {
            "decode_responses": True,
            "encoding_errors": "surrogateescape",
            "health_check_interval": 30,
            **tls,
        }
        if "prefix" not in kwargs and os.environ.get("WORKFLOW_PREFIX"):
            kwargs["prefix"] = os.environ["WORKFLOW_PREFIX"]
        if "partitions" not in kwargs and os.environ.get("WORKFLOW_PARTITIONS"):
            raw = os.environ["WORKFLOW_PARTITIONS"]
            try:
                kwargs["partitions"] = int(raw)
            except ValueError:
                raise ValueError(f"WORKFLOW_PARTITIONS={raw!r} is not a whole number") from None
        topology = cluster if cluster is not None else cluster_setting()
        return cls(ClientFactory(url, topology, options), **kwargs)

    # -- the shared client and settings (_core.py) ----------------------------------------------

    @property
    def keys(self) -> Keys:
        return self.core.keys

    @property
    def redis(self) -> RedisClient:
        """The client; on a cluster, the cluster client once the first-use check has run."""
        return self.core.redis

    @property
    def cluster(self) -> bool:
        return self.core.cluster

    @property
    def codec(self) -> PayloadCodec | None:
        """Payload encryption, shared by every part (None: payloads stored as they are)."""
        return self.core.codec

    @codec.setter
    def codec(self, codec: PayloadCodec | None) -> None:
        self.core.codec = codec

    async def check_config(self) -> None:
        """Resolve the client and agree on the partition count (see ``RedisCore.check_config``)."""
        await self.core.check_config()

    async def close(self) -> None:
        await self.core.close()

    # -- the queue (_queue.py) -----------------------------------------------------------------

    async def ensure_groups(self) -> None:
        await self.queue.ensure_groups()

    async def read_wakeups(self, consumer: str, count: int, block_ms: int) -> list[Wakeup]:
        return await self.queue.read_wakeups(consumer, count, block_ms)

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Wakeup]:
        return await self.queue.reclaim(consumer, min_idle_ms, count)

    async def ack(self, wakeups: Sequence[Wakeup]) -> None:
        await self.queue.ack(wakeups)

    async def requeue(self, wakeup: Wakeup, reason: str) -> None:
        await self.queue.requeue(wakeup, reason)

    # acquire and release go through acquire_many and release_many: one place to wrap for both
    async def acquire(
        self, run_id: str, token: str, lease_ms: int, after_seq: int = -1, deployment: str = ""
    ) -> Acquired:
        (result,) = await self.acquire_many(token, lease_ms, [(run_id, after_seq)], deployment)
        return result

    async def acquire_many(
        self, token: str, lease_ms: int, runs: Sequence[tuple[str, int]], deployment: str = ""
    ) -> list[Acquired]:
        return await self.queue.acquire_many(token, lease_ms, runs, deployment)

    async def release(
        self, run_id: str, token: str, seq: int, wakeup: Wakeup | None = None
    ) -> tuple[str, int]:
        (result,) = await self.release_many(token, [(run_id, seq, wakeup)])
        return result

    async def release_many(
        self, token: str, runs: Sequence[tuple[str, int, Wakeup | None]]
    ) -> list[tuple[str, int]]:
        return await self.queue.release_many(token, runs)

    async def heartbeat(
        self, token: str, run_ids: Sequence[str], wakeups: Sequence[Wakeup], lease_ms: int
    ) -> dict[str, int]:
        return await self.queue.heartbeat(token, run_ids, wakeups, lease_ms)

    async def promote_timers(self) -> int | None:
        return await self.queue.promote_timers()

    async def dead_letter(self, wakeup: Wakeup, reason: str) -> None:
        await self.queue.dead_letter(wakeup, reason)

    # -- requests and replies (_requests.py) ---------------------------------------------------

    async def read_start_requests(
        self, consumer: str, count: int, block_ms: int
    ) -> list[StartRequest]:
        return await self.requests.read_start_requests(consumer, count, block_ms)

    async def reclaim_start_requests(
        self, consumer: str, min_idle_ms: int, count: int
    ) -> list[StartRequest]:
        return await self.requests.reclaim_start_requests(consumer, min_idle_ms, count)

    async def reject_start_request(self, request: StartRequest, reason: str) -> None:
        await self.requests.reject_start_request(request, reason)

    async def ack_start_requests(self, requests: Sequence[StartRequest]) -> None:
        await self.requests.ack_start_requests(requests)

    def reply_key(self, run_id: str, reply_id: str) -> str:
        return self.requests.reply_key(run_id, reply_id)

    async def push_reply(self, run_id: str, reply_id: str, data: str, ttl_s: int = 300) -> None:
        await self.requests.push_reply(run_id, reply_id, data, ttl_s)

    async def pop_reply(self, run_id: str, reply_id: str, timeout_s: float) -> str | None:
        return await self.requests.pop_reply(run_id, reply_id, timeout_s)

    # -- workers' presence and health (_presence.py) -------------------------------------------

    async def publish_worker_status(self, worker: str, status: str) -> None:
        await self.presence.publish_worker_status(worker, status)

    async def forget_workers(self, workers: list[str]) -> None:
        await self.presence.forget_workers(workers)

    async def worker_statuses(self) -> dict[str, str]:
        return await self.presence.worker_statuses()

    async def enqueue_health_check(self, check_id: str) -> None:
        await self.presence.enqueue_health_check(check_id)

    async def read_health_checks(self, consumer: str, block_ms: int) -> list[tuple[str, str]]:
        return await self.presence.read_health_checks(consumer, block_ms)

    async def done_health_checks(self, message_ids: list[str]) -> None:
        await self.presence.done_health_checks(message_ids)

    async def ensure_health_group(self) -> None:
        await self.presence.ensure_health_group()

    async def server_time_ms(self) -> int:
        return await self.presence.server_time_ms()

    async def partition_health(self) -> list[dict[str, Any]]:
        return await self.presence.partition_health()

    async def server_warnings(self) -> list[str]:
        return await self.presence.server_warnings()

    # -- runs --------------------------------------------------------------------------------

    async def create_run(
        self,
        run_id: str,
        workflow: str,
        input_json: str,
        deployment: str = "",
        trace: str = "",
        parent: str = "",
        priority: int = 0,
    ) -> bool:
        await self.core._ready()
        k = self.keys
        p = k.partition(run_id)
        run, ev, *_ = k.run_keys(run_id)
        if self.codec is not None:
            input_json = self.codec.encrypt(input_json, run_id=run_id, field="input")
        try:
            reply = await self.core._eval(
                "create_run",
                [
                    run,
                    ev,
                    k.ready(p, band_of(priority)),
                    k.idx_status(p, "pending"),
                    k.idx_workflow(p, workflow),
                    k.workflows(p),
                    k.log(run_id),
                ],
                [
                    run_id,
                    workflow,
                    input_json,
                    "",  # no event id: the entry id 1-0 is the event's id
                    deployment or self.deployment,
                    secrets.token_hex(16),
                    trace,
                    parent,
                    priority,
                ],
            )
        except ReplicaAckTimeoutError as exc:  # the caller repeats start() with this run id
            raise ReplicaAckTimeoutError(
                "start", exc.acked, exc.wanted, exc.timeout_ms, run_id
            ) from exc
        return bool(reply[0] == "created")

    async def get_run(self, run_id: str) -> RunInfo | None:
        await self.core._ready()
        data = text_dict(await with_retry(self.redis.hgetall, self.keys.run(run_id)))
        if not data:  # gone, or a finished run compacted: its run hash is in its log
            try:
                data = await self.compaction.read_run(run_id)
            except CompactedLogError:  # shown with every field named unreadable, as for a hash
                data = {"log": "unreadable"}
        return run_info(run_id, data, self.codec) if data else None

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
        workflow index is walked page by page until enough runs of that status are found. With
        none, the status indexes (a run is in the one of its status) are walked together; a run
        that changes status meanwhile is listed once.
        """
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        await self.core._ready()
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
            elif status is not None:
                keys.append(k.idx_status(p, status))
            else:
                keys += [k.idx_status(p, s) for s in STATUSES]
        out: list[RunInfo] = []
        seen: set[str] = set()
        last: tuple[int, str] | None = None
        # pages of about a listing's length: a page per index is read at once, and most listings
        # end within the first
        page = min(500, max(50, 2 * limit))
        walks = [self._walk_index(k, after, page) for k in keys]
        async for score, run_id in merge_newest_first(walks):
            last = (score, run_id)
            if run_id in seen:
                continue
            seen.add(run_id)
            info = await self.get_run(run_id)
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
            for row in rows:
                if not isinstance(row, tuple | list):
                    continue  # a member without its score: WITHSCORES always gives both
                member, score = row
                item = (int(score), _s(member))
                if after is None or item < after:
                    yield item
            if len(rows) < page:
                return
            offset += page

    async def read_events(self, run_id: str, after_seq: int = 0) -> list[Event]:
        await self.core._ready()
        key = self.keys.events(run_id)
        start = f"({after_seq}-0" if after_seq > 0 else "-"
        rows = entries(await with_retry(self.redis.xrange, key, start, "+"))
        if not rows:  # nothing new, or a finished run compacted (its stream is gone)
            log = await self.compaction.read_log(run_id)
            rows = log.entries(after_seq) if log is not None else []
        return self.queue._log_events(run_id, rows)

    async def wait_for_events(self, run_id: str, after_seq: int, timeout_ms: int) -> list[Event]:
        """Block until the run's log holds events after ``after_seq``, then return them (a page
        of them); [] at the timeout, and also when an entry does not parse (the caller then
        looks at the run itself)."""
        await self.core._ready()
        key = self.keys.events(run_id)
        lean = self.core.lean
        if lean is not None:  # a raw connection of its own while it blocks (see _lean.py)
            command = ["XREAD", "COUNT", WAIT_PAGE, "BLOCK", timeout_ms, "STREAMS", key]
            found = stream_rows(
                await with_retry(
                    lean.execute_blocking, *command, f"{after_seq}-0", wait_s=timeout_ms / 1000
                )
            )
        else:
            reply = await with_retry(
                self.redis.xread, {key: f"{after_seq}-0"}, count=WAIT_PAGE, block=timeout_ms
            )
            found = stream_replies(reply)
        rows = [entry for _, page in found for entry in page]
        if not rows:  # nothing new, or a compacted run (no stream to block on)
            log = await self.compaction.read_log(run_id)
            rows = log.entries(after_seq) if log is not None else []
        try:
            return self.queue._log_events(run_id, rows)
        except CorruptEventError:
            return []

    async def compact_runs(self, run_ids: Sequence[str]) -> int:
        """Compact the finished runs among ``run_ids`` (see _compact.py): how many were."""
        return await self.compaction.compact_runs(run_ids)

    async def compact_finished(self, older_than_ms: int, batch: int = 200, owner: str = "") -> int:
        """Compact runs finished more than ``older_than_ms`` ago (see _compact.py)."""
        return await self.compaction.compact_finished(older_than_ms, batch, owner)

    async def list_steps(self, run_id: str) -> list[StepInfo]:
        """The run's steps in creation order, materialized from its event log."""
        return steps_from_events(await self.read_events(run_id))

    # -- the commit script -------------------------------------------------------------------

    async def commit(self, commits: Sequence[Commit]) -> list[CommitResult]:
        """Append events for several runs; one script call per partition.

        The hook tokens the commits ask for are reserved first, and the tokens of the hooks they
        end are released after (see _hook_tokens.py)."""
        await self.core._ready()
        n = len(commits)
        if self.keys.partitions == 1:  # one call for all (no partition to work out per run)
            by_partition: Mapping[int, Sequence[int]] = {0: range(n)}
        else:
            by_partition = self.queue._by_partition([c.run_id for c in commits])
        batches = [
            (p, idxs, commits if len(idxs) == n else [commits[i] for i in idxs])
            for p, idxs in by_partition.items()
        ]
        flats: list[list[Any]] = []
        hooked = False  # a hook_created among the events
        for _, _, batch in batches:
            flat, has_hook = self._commit_batch(batch, None)
            flats.append(flat)
            hooked = hooked or has_hook
        reserved: Reserved = {}
        # the tokens the hooks ask for are reserved first, and the batches made again with the
        # hooks whose token another holds
        if hooked:
            taken, reserved = await self.hook_tokens.reserve(commits)
            flats = [
                self._commit_batch(batch, [taken[i] for i in idxs])[0] for _, idxs, batch in batches
            ]
        results: list[CommitResult | None] = [None] * n
        freed: list[list[Any]] = [[] for _ in commits]
        # one script call per partition (on a cluster a script's keys share one slot), all in
        # flight at once: a failed one fails the batch (once all have ended), whose runs are
        # replayed (fenced) from what the others committed
        calls = [
            self.core._eval(
                "commit",
                self.keys.partition_keys(p),
                # the script names each run's keys from the prefix (see commit.lua's header)
                [self.retention_s, _MSGPACK.encode(flat_batch), self.keys.run_prefix(p)],
            )
            for (p, _, _), flat_batch in zip(batches, flats, strict=True)
        ]
        for (_, idxs, batch), flat in zip(batches, await all_at_once(calls), strict=True):
            at = 0  # the reply is one flat array (see commit.lua's header)
            for i, c in zip(idxs, batch, strict=True):
                end = at + 4 + 2 * int(flat[at + 3])
                m = int(flat[end])
                results[i] = self._commit_result(c, flat, at, end)
                if m:
                    freed[i] = flat[end + 1 : end + 1 + m]
                at = end + 1 + m
            if at != len(flat):
                raise WorkflowError(
                    f"commit.lua answered {len(flat)} values; {at} were expected for "
                    f"{len(batch)} runs"
                )
        done = [r for r in results if r is not None]
        if reserved or any(freed):  # else no token to release (see RedisHookTokens.release)
            await self.hook_tokens.release(commits, done, freed, reserved)
        return done

    def _commit_batch(
        self, batch: Sequence[Commit], taken: Sequence[list[str]] | None
    ) -> tuple[list[Any], bool]:
        """The batch argument of commit.lua, before it is packed as one flat MessagePack array
        (see the script's header), and whether a hook_created is among its events; ``taken``:
        per commit, its hooks whose token another hook holds (None: no commit asks for a
        token)."""
        out: list[Any] = []
        hooked = False
        add, push = out.extend, out.append  # (the quickest way to flatten a few pairs)
        codec = self.codec
        for i, c in enumerate(batch):
            hooks = taken[i] if taken is not None else ()
            done, acquire, events = c.done, c.acquire, c.events
            if done is None and acquire is None and not hooks:  # a step's commit: no options
                if len(events) == 3 and codec is None:
                    # the commonest commit (the inline path's): a step's result with its time,
                    # the next step's creation and start; the same values as the loops below
                    # make, in one tuple
                    head, created, started = events
                    hf, cf = head.fields, created.fields
                    if (
                        head.type == "step_completed"
                        and created.type == "step_created"
                        and started.type == "step_started"
                        and len(hf) == 3
                        and len(cf) == 2
                        and not started.fields
                    ):
                        try:
                            add(
                                (
                                    c.run_id, c.token, c.expected_seq, c.wake, 0, 3,
                                    "step_completed", head.corr, hf["ts"], 4,
                                    "result", hf["result"], "attempt", hf["attempt"],
                                    "step_created", created.corr, "", 4,
                                    "name", cf["name"], "input", cf["input"],
                                    "step_started", started.corr, "", 0,
                                )
                            )  # fmt: skip
                            continue
                        except KeyError:  # other fields: the general path below
                            pass
                add((c.run_id, c.token, c.expected_seq, c.wake, 0, len(events)))
            else:
                add((c.run_id, c.token, c.expected_seq, c.wake, 5 + len(hooks)))
                if done is None:
                    add(("", "", ""))
                else:
                    add((self.queue.wake_stream(done), GROUP, done.message_id))
                add((-1, "") if acquire is None else acquire)
                add((*hooks, len(events)))
            for ev in events:
                if ev.type == "hook_created":
                    hooked = True
                fields = ev.fields
                if not fields:
                    add((ev.type, ev.corr, "", 0))
                    continue
                if codec is not None:
                    fields = codec.seal_fields(c.run_id, ev.corr, fields)
                ts = fields.get("ts")
                if ts is None:
                    add((ev.type, ev.corr, "", 2 * len(fields)))
                    for k, v in fields.items():
                        push(k)
                        push(v)
                else:  # the event's time travels apart from its other fields
                    add((ev.type, ev.corr, ts, 2 * len(fields) - 2))
                    for k, v in fields.items():
                        if k != "ts":
                            push(k)
                            push(v)
        return out, hooked

    @staticmethod
    def _commit_result(c: Commit, flat: list[Any], at: int, end: int) -> CommitResult:
        """One run's result from the reply: its head at flat[at:at + 3], then its events'
        (status, extra) pairs up to flat[end] (see commit.lua's header)."""
        # replies are already str (decode_responses=True) and ints
        code = COMMIT_CODE_OF.get(flat[at]) or commit_code(flat[at])  # (a word it never answers)
        seq, now = int(flat[at + 1]), int(flat[at + 2])
        known = _EVENT_RESULTS
        if end - at == 10:  # three events (a step's result, the next step's creation and start)
            r0 = known.get((flat[at + 4], flat[at + 5]))
            r1 = known.get((flat[at + 6], flat[at + 7]))
            r2 = known.get((flat[at + 8], flat[at + 9]))
            results = [r0, r1, r2] if r0 and r1 and r2 else _event_results(flat, at, end)
        else:
            results = _event_results(flat, at, end)
        # the worker feeds its instance itself (Commit.fed): nothing to build then
        appended = (
            [] if c.fed >= len(c.events) else appended_events(c.events, results, seq, now, c.fed)
        )
        return CommitResult(code=code, seq=seq, now_ms=now, results=results, appended=appended)

    async def list_hooks(self, run_id: str) -> list[tuple[str, str, str]]:
        """The run's live hooks: (hook id, token, metadata JSON), in creation order."""
        await self.core._ready()
        fields = text_dict(await with_retry(self.redis.hgetall, self.keys.run_hooks(run_id)))
        hooks = [
            (hook_id, token, self._hook_meta(run_id, hook_id, fields.get(f"{hook_id}|meta")))
            for hook_id, token in fields.items()
            if "|" not in hook_id
        ]
        return sorted(hooks)

    async def find_hook(self, token: str) -> tuple[str, str, str] | None:
        """(run id, hook id, metadata JSON) of the live hook holding ``token``, if any.

        The token's reservation names the holder; a reservation whose run does not hold the hook
        (its writer died before the commit, or before the release) is no holder."""
        await self.core._ready()
        holder = await with_retry(self.redis.get, self.keys.hook_token(token))
        if not holder:
            return None
        run_id, _, hook_id = _s(holder).partition("|")
        held, meta = await with_retry(
            self.redis.hmget, self.keys.run_hooks(run_id), [hook_id, f"{hook_id}|meta"]
        )
        if text(held) != token:
            return None
        return run_id, hook_id, self._hook_meta(run_id, hook_id, text(meta))

    def _hook_meta(self, run_id: str, hook_id: str, meta: str | None) -> str:
        """A hook's stored metadata, decrypted (DecryptionError when it cannot be)."""
        if not meta:
            return "null"
        if self.codec is None:
            return meta
        return self.codec.decrypt(meta, run_id=run_id, field="metadata", context=hook_id)

    async def expire_indexes(self) -> int:
        """Drop expired runs from the indexes: one script call per partition, concurrently."""
        await self.core._ready()
        k = self.keys

        async def expire(p: int) -> int:
            names = await with_retry(self.redis.smembers, k.workflows(p))
            keys = [k.idx_done(p), k.idx_all(p), *(k.idx_status(p, s) for s in STATUSES)]
            keys += [k.idx_workflow(p, text(n)) for n in sorted(names)]
            done = int(await self.core._eval("expire_index", keys, [self.retention_s * 1000, 1000]))
            # compacted runs left idx:done: their own list says when they expire (_compact.py)
            return done + await self.compaction.expire_compacted(p, keys[1:])

        return sum(await asyncio.gather(*(expire(p) for p in range(k.partitions))))
