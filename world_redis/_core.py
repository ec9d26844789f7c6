"""The connection a RedisWorld's parts share: the client (resolved at first use to a single
server or a cluster), the deployment's settings (the partition count, agreed once), the Lua
scripts, the keys and the payload codec."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Sequence
from importlib import resources
from typing import Any, TypeVar, cast

from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from worker.world import (
    PartitionCountMismatchError,
    PayloadCodec,
    ReplicaAckTimeoutError,
    WorkflowError,
    get_logger,
)

from ._client import ClientFactory, RedisClient, text
from ._keys import Keys, band_of
from ._lean import LeanRedis
from ._retry import with_retry

_log = get_logger(component="world_redis")

PARTITIONS_PER_MASTER = 16  # the default partition count on a cluster, per master


def lean_enabled() -> bool:
    """Script calls and blocking reads on raw connections (_lean.py) unless
    ``WORKFLOW_REDIS_LEAN=0``: then redis-py serves every command."""
    return os.environ.get("WORKFLOW_REDIS_LEAN", "1").strip() not in ("0", "false", "no")


# scripts whose writes no replica is waited for: they write nothing (read_bands), or what they
# write is housekeeping that a failover may lose at no cost (a lease renewed, taken or let go, a
# due timer moved to its ready stream, a slot's hold renewed, expired index entries dropped, a
# finished run's log compacted): each is done again, and commits are fenced against it
UNACKED_SCRIPTS = frozenset(
    {
        "read_bands",
        "acquire",
        "heartbeat",
        "release",
        "promote_timers",
        "flow_renew",
        "expire_index",
        "expire_compacted",
        "compact",
    }
)
ACK_SLICE_MS = 1000  # each WAIT's timeout while replicas are awaited with no end
ACK_LOG_EVERY_S = 10.0  # how often a write still awaiting its replicas is logged


def replica_ack_settings(acks: int | None, timeout_ms: int | None) -> tuple[int, int]:
    """How many replicas must acknowledge each script's writes before its caller goes on
    (``acks``, else ``WORKFLOW_REPLICA_ACKS``, default 0: none, Redis's asynchronous
    replication) and how long to wait for them before ReplicaAckTimeoutError (``timeout_ms``,
    else ``WORKFLOW_REPLICA_ACK_TIMEOUT_MS``; default 0: as long as it takes, as a synchronous
    standby makes a PostgreSQL commit wait); ValueError naming the setting."""

    def whole(value: int | str | None, name: str) -> int:
        if value is None or value == "":
            return 0
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={value!r} is not a whole number") from None
        if isinstance(value, bool) or n < 0 or str(n) != str(value).strip():
            raise ValueError(f"{name}={value!r}: expected a whole number >= 0")
        return n

    env = os.environ.get
    wanted = whole(
        acks if acks is not None else env("WORKFLOW_REPLICA_ACKS"), "WORKFLOW_REPLICA_ACKS"
    )
    timeout = whole(
        timeout_ms if timeout_ms is not None else env("WORKFLOW_REPLICA_ACK_TIMEOUT_MS"),
        "WORKFLOW_REPLICA_ACK_TIMEOUT_MS",
    )
    return wanted, timeout


T = TypeVar("T")


async def all_at_once(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Each call's result, in order, all in flight at once (a batch's script calls, one per
    partition: on a cluster each goes to its own slot); one call is awaited as it is, without a
    task. The first error is raised once every call has ended, so that none is still writing."""
    if len(calls) == 1:
        return [await calls[0]]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)


def _script_source(name: str) -> str:
    return resources.files("world_redis").joinpath("lua", f"{name}.lua").read_text()


class RedisCore:
    """The client, settings and scripts of a RedisWorld (composed: ``RedisWorld.core``, shared by
    its parts)."""

    def __init__(
        self,
        client: RedisClient | ClientFactory,
        prefix: str,
        partitions: int | None,
        replica_acks: int | None = None,
        replica_ack_timeout_ms: int | None = None,
    ) -> None:
        # a factory's first client may be replaced at first use (see _client.py)
        if isinstance(client, ClientFactory):
            self._client, final = client.first()
            self._factory = None if final else client
        else:
            self._client, self._factory = client, None
        self.cluster = isinstance(self._client, RedisCluster)
        self._configured_partitions = partitions  # None: the stored count, else a default
        self.keys = Keys(prefix, partitions or 0)  # 0 until the count is known (check_config)
        self.codec: PayloadCodec | None = None  # payload encryption (set by RedisWorld)
        self._scripts: dict[str, AsyncScript] = {}
        self._config_checked = False
        self._config_lock = asyncio.Lock()
        # raw connections for script calls and blocking reads, once the client is resolved to
        # a single server whose connections they can reproduce (see _lean.py)
        self.lean: LeanRedis | None = None
        # WAIT after each writing script (0: Redis's asynchronous replication, no WAIT)
        self.replica_acks, self.replica_ack_timeout_ms = replica_ack_settings(
            replica_acks, replica_ack_timeout_ms
        )

    @property
    def redis(self) -> RedisClient:
        """The client; on a cluster, the cluster client once the first-use check has run."""
        return self._client

    async def close(self) -> None:
        if self.lean is not None:
            self.lean.close()
        await self._client.aclose()

    async def ready_of(self, run_id: str) -> str:
        """The ready stream of the run's priority band (its run hash's "priority"; a run whose
        hash is gone gets the priority-0 stream), for wake-ups added outside the run's scripts."""
        prio = await with_retry(self._client.hget, self.keys.run(run_id), "priority")
        return self.keys.ready(self.keys.partition(run_id), band_of(text(prio)))

    async def _ready(self) -> None:
        """The first-use check: the client resolved, the partition count known and agreed."""
        if not self._config_checked:
            await self.check_config()

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self.redis.register_script(_script_source(name))
            self._scripts[name] = script
        return script

    async def _eval(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._script(name)
        if self.replica_acks and name not in UNACKED_SCRIPTS:
            return await with_retry(self._eval_acked, name, script, keys, args)
        if self.lean is not None:
            return await with_retry(self._lean_eval, self.lean, script, keys, args)
        return await with_retry(script, keys=list(keys), args=list(args))

    async def _lean_eval(
        self, lean: LeanRedis, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """EVALSHA on the lean connection; a server that lost the script (restarted, flushed)
        is given it again, as redis-py's Script does."""
        try:
            return await lean.evalsha(script.sha, keys, args)
        except rexc.NoScriptError:
            await lean.execute("SCRIPT", "LOAD", script.script)
            return await lean.evalsha(script.sha, keys, args)

    async def _eval_acked(
        self, name: str, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """The script, then ``WAIT <replica_acks> <ms>`` on the same connection: WAIT counts the
        replicas that hold everything its connection wrote, so only the connection that ran the
        script can ask first. While too few have it, a fence (a small write in the same slot,
        then WAIT, on any connection to the same master) asks again: a master's replication
        stream is in order, so a replica that holds the fence holds the script's writes too.
        ReplicaAckTimeoutError once ``replica_ack_timeout_ms`` have passed (0: never). A
        connection lost on the way, or a slot that moved to another master, is retried
        (``with_retry``), the script with it, as any write whose reply was lost is (every script
        is idempotent or fenced, see _retry.py)."""
        wanted, timeout_ms = self.replica_acks, self.replica_ack_timeout_ms
        slice_ms = min(timeout_ms, ACK_SLICE_MS) if timeout_ms else ACK_SLICE_MS
        evalsha = ["EVALSHA", script.sha, len(keys), *keys, *args]
        wait = ["WAIT", wanted, slice_ms]
        for _ in range(2):  # a second time once the script is loaded again
            reply, acked = await self._then_wait(evalsha, wait, keys[0])
            if not isinstance(reply, rexc.NoScriptError):
                break
            if self.lean is not None:
                await self.lean.execute("SCRIPT", "LOAD", script.script)
            else:
                client: Any = self._client  # (on a cluster: every primary)
                await with_retry(client.script_load, script.script)
        if isinstance(reply, Exception):
            raise reply
        began = time.monotonic()
        logged = began
        while True:
            if isinstance(acked, Exception):
                raise acked
            if int(acked) >= wanted:
                return reply
            waited = time.monotonic() - began + slice_ms / 1e3
            if timeout_ms and waited * 1e3 >= timeout_ms:
                raise ReplicaAckTimeoutError(name, int(acked), wanted, timeout_ms)
            if time.monotonic() - logged >= ACK_LOG_EVERY_S:
                logged = time.monotonic()
                _log.warning(
                    "replica_ack_waiting",
                    script=name,
                    acked=int(acked),
                    wanted=wanted,
                    waited_s=round(waited, 1),
                )
            fence = ["SET", self.keys.replica_fence(keys[0]), str(time.time()), "PX", "600000"]
            _, acked = await self._then_wait(fence, wait, keys[0])

    async def _then_wait(self, command: list[Any], wait: list[Any], key: str) -> list[Any]:
        """``command`` and WAIT on one connection, to the master that serves ``key``: the
        replies (an error reply as its exception). On a cluster, a slot that moved meanwhile
        raises (retried): the WAIT then counted the replicas of another master."""
        if self.lean is not None:
            return await self.lean.execute_together([command, wait], wait[2] / 1e3)
        client: Any = self._client
        pipe = client.pipeline(transaction=False)
        pipe.execute_command(*command)
        if not self.cluster:
            pipe.execute_command(*wait)
            return list(await pipe.execute(raise_on_error=False))
        node = client.get_node_from_key(key)
        pipe.execute_command(*wait, target_nodes=node)
        replies = list(await pipe.execute(raise_on_error=False))
        if client.get_node_from_key(key).name != node.name:
            raise rexc.ClusterError(f"the slot of {key} moved to another master during a write")
        return replies

    # -- the deployment's settings -------------------------------------------------------------

    async def check_config(self) -> None:
        """Resolve the client (a single server or a cluster, see _client.py), then agree on the
        partition count: store this process's count for the prefix if none is stored yet (the
        first process decides), else refuse a different one with PartitionCountMismatchError.
        A process configured with no count takes the stored one; when none is stored either, it
        stores the default: 1 on a single server, PARTITIONS_PER_MASTER per master on a cluster.

        A client and a worker that disagree on the count derive different keys for the same run,
        and the run stays pending without a word. Checked once per World: callers test
        ``_config_checked`` first (``_ready``), so the hot path costs no round trip.
        """
        if self._config_checked:
            return
        async with self._config_lock:
            if self._config_checked:
                return
            if self._factory is not None:
                found = await self._factory.detect()
                if found is not None:
                    await self._client.aclose()
                    self._client, self.cluster = found, True
                self._factory = None
            await self._agree_partitions()
            if not self.cluster and lean_enabled():
                self.lean = LeanRedis.of(self._client)
            self._config_checked = True

    async def _agree_partitions(self) -> None:
        key, configured = self.keys.config(), self._configured_partitions
        stored_text = text(await with_retry(self.redis.hget, key, "partitions"))
        if not stored_text:
            proposed = configured or await self._default_partitions()

            async def run() -> list[Any]:
                pipe = self.redis.pipeline(transaction=True)  # one key: one slot
                pipe.hsetnx(key, "partitions", proposed)
                pipe.hget(key, "partitions")
                return await pipe.execute()

            stored_text = text((await with_retry(run))[1])
        try:
            stored = int(stored_text)
            if stored < 1:
                raise ValueError(stored)
        except (TypeError, ValueError):
            raise WorkflowError(
                f"{key} field 'partitions' holds {stored_text!r}, not a partition count; "
                f"restore it (e.g. HSET {key} partitions {configured or 1})"
            ) from None
        if configured is not None and stored != configured:
            raise PartitionCountMismatchError(self.keys.prefix, stored, configured)
        self.keys.partitions = stored

    async def _default_partitions(self) -> int:
        """1 on a single server; PARTITIONS_PER_MASTER per master on a cluster."""
        client = self.redis
        if not isinstance(client, RedisCluster):
            return 1
        await with_retry(client.initialize)
        return PARTITIONS_PER_MASTER * max(1, len(client.get_primaries()))
