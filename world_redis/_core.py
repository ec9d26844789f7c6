"""The connection a RedisWorld's parts share: the client (resolved at first use to a single
server or a cluster), the deployment's settings (the partition count, agreed once), the Lua
scripts, the keys and the payload codec."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from worker.world import PartitionCountMismatchError, PayloadCodec, WorkflowError

from ._client import ClientFactory, RedisClient, text
from ._keys import Keys, band_of
from ._lean import LeanRedis
from ._retry import with_retry

PARTITIONS_PER_MASTER = 16  # the default partition count on a cluster, per master


def lean_enabled() -> bool:
    """Script calls and blocking reads on raw connections (_lean.py) unless
    ``WORKFLOW_REDIS_LEAN=0``: then redis-py serves every command."""
    return os.environ.get("WORKFLOW_REDIS_LEAN", "1").strip() not in ("0", "false", "no")


def _script_source(name: str) -> str:
    return resources.files("world_redis").joinpath("lua", f"{name}.lua").read_text()


class RedisCore:
    """The client, settings and scripts of a RedisWorld (composed: ``RedisWorld.core``, shared by
    its parts)."""

    def __init__(
        self, client: RedisClient | ClientFactory, prefix: str, partitions: int | None
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
