"""The Redis side of deployments: the registry, moving runs between deployments, their figures.

Keys (see worker/_deployments.py for the rules):

    wf:deployments                  hash    deployment id -> JSON {"workflows": [...],
                                            "first_seen_ms": ms, "last_seen_ms": ms, "workers":
                                            {name: ms}}, renewed by each worker of the deployment
                                            and left when it stops (register_deployment.lua,
                                            server clock); live = a worker renewed within a lease
    wf:{pN}:run:<id>                hash    field "deployment": the run's pin ("" while unpinned;
                                            set by create_run.lua, acquire.lua or migrate.lua)
    wf:{pN}:q:<queue>@<deployment>  stream  a lane: the deployment's wake-ups (queue "default")
                                            and pool tasks (other queues) in the partition, a
                                            queue stream like any other (_pools.py), its name
                                            added to wf:{pN}:queues

Runs pinned per deployment are counted by walking each partition's pending and running indexes
and reading each run's pin (pipelined, per partition): a cost in the number of active runs, paid
by ``wf inspect deployments`` only, so that no script has to maintain an index across the
run's life.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from redis import exceptions as rexc

from worker.world import (
    Deployment,
    DeploymentStats,
    MigrateError,
    RunNotFoundError,
    lane_deployment,
)

from ._keys import BANDS, GROUP, band_of
from ._queue import _s
from ._retry import with_retry

if TYPE_CHECKING:
    from ._world import RedisWorld

MIGRATE_SCAN = 10_000  # entries of the old lane looked through for the run's wake-ups


class _Entry(msgspec.Struct):
    workflows: list[str] | dict[str, Any] = []
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    workers: dict[str, int] | list[Any] = {}  # an empty object may come back as a list


_ENTRY = msgspec.json.Decoder(_Entry)


class RedisDeployments:
    """The deployment registry of a RedisWorld (composed: ``RedisWorld.deployments``)."""

    def __init__(self, world: RedisWorld) -> None:
        self.world = world

    @property
    def redis(self) -> Any:
        return self.world.redis

    async def _now_ms(self) -> int:
        return await self.world.server_time_ms()

    async def register(
        self, deployment_id: str, worker: str, workflows: Sequence[str], live_ms: int
    ) -> None:
        await self.world.core._ready()
        keys = [self.world.keys.deployments()]
        args = [deployment_id, json.dumps(list(workflows)), live_ms, worker, "register"]
        await self.world.core._eval("register_deployment", keys, args)

    async def leave(self, deployment_id: str, worker: str, live_ms: int) -> None:
        await self.world.core._ready()
        keys = [self.world.keys.deployments()]
        args = [deployment_id, "[]", live_ms, worker, "leave"]
        await self.world.core._eval("register_deployment", keys, args)

    async def registry(self, live_ms: int) -> list[Deployment]:
        await self.world.core._ready()
        now = await self._now_ms()
        raw = await with_retry(self.redis.hgetall, self.world.keys.deployments())
        out: list[Deployment] = []
        for name, text in sorted(raw.items()):
            try:
                entry = _ENTRY.decode(_s(text))
            except (msgspec.DecodeError, msgspec.ValidationError):
                entry = _Entry()  # shown with no workflows: never chosen by default
            workflows = entry.workflows if isinstance(entry.workflows, list) else []
            seen = entry.workers if isinstance(entry.workers, dict) else {}
            workers = sorted(w for w, at in seen.items() if at >= now - live_ms)
            out.append(
                Deployment(
                    deployment_id=_s(name),
                    workflows=sorted(workflows),
                    first_seen_ms=entry.first_seen_ms,
                    last_seen_ms=entry.last_seen_ms,
                    live=bool(workers),
                    workers=workers,
                )
            )
        return out

    async def migrate(self, run_id: str, deployment_id: str) -> str:
        await self.world.core._ready()
        keys = self.world.keys
        p = keys.partition(run_id)
        run = keys.run(run_id)
        lane, prio = (
            _s(v or "") for v in await with_retry(self.redis.hmget, run, ["queue", "priority"])
        )
        script_keys = [run, keys.ready(p, band_of(prio))]
        args: list[Any] = [run_id, deployment_id, GROUP]
        if lane_deployment(lane):
            stream = keys.queue_stream(p, lane, band_of(prio))
            script_keys.append(stream)
            rows = await with_retry(self.redis.xrange, stream, "-", "+", count=MIGRATE_SCAN)
            args += [_s(mid) for mid, fields in rows if (fields or {}).get("run") == run_id]
        code, detail = await self.world.core._eval("migrate", script_keys, args)
        if _s(code) == "no_run":  # or compacted: a finished run without run hash
            info = await self.world.get_run(run_id)
            if info is None:
                raise RunNotFoundError(run_id)
            code, detail = "terminal", info.status
        if _s(code) == "terminal":
            raise MigrateError(
                f"run {run_id} is {_s(detail)}: a finished run stays on the deployment it ran on"
            )
        return _s(detail)

    async def pinned_counts(self) -> dict[str, int]:
        """Pending and running runs per deployment ("" for runs not pinned yet)."""
        await self.world.core._ready()
        keys = self.world.keys
        counts: dict[str, int] = {}
        for p in range(keys.partitions):
            for status in ("pending", "running"):
                run_ids = await with_retry(self.redis.zrange, keys.idx_status(p, status), 0, -1)
                for start in range(0, len(run_ids), 500):
                    batch = [_s(r) for r in run_ids[start : start + 500]]

                    async def read(batch: list[str] = batch) -> Any:
                        pipe = self.redis.pipeline(transaction=False)
                        for r in batch:
                            pipe.hget(keys.run(r), "deployment")
                        return await pipe.execute()

                    for pin in await with_retry(read):
                        counts[_s(pin or "")] = counts.get(_s(pin or ""), 0) + 1
        return counts

    async def lane_load(self) -> dict[str, tuple[int, int]]:
        """(lag, pending) summed over every lane of each deployment, all partitions."""
        await self.world.core._ready()
        keys = self.world.keys
        out: dict[str, tuple[int, int]] = {}
        for p in range(keys.partitions):
            names = await with_retry(self.redis.smembers, keys.queue_names(p))
            for name in sorted(_s(n) for n in names):
                dep = lane_deployment(name)
                if not dep:
                    continue
                for band in BANDS:  # the lane's priority bands count too
                    lag, pending = await self._lane_figures(keys.queue_stream(p, name, band))
                    old = out.get(dep, (0, 0))
                    out[dep] = (old[0] + lag, old[1] + pending)
        return out

    async def _lane_figures(self, stream: str) -> tuple[int, int]:
        length = int(await with_retry(self.redis.xlen, stream))
        try:
            groups = await with_retry(self.redis.xinfo_groups, stream)
        except rexc.ResponseError:  # no such stream (yet): nothing waits in it
            return length, 0
        for g in groups:
            if _s(g.get("name")) == GROUP:
                pending = int(g.get("pending") or 0)
                raw = g.get("lag")
                lag = int(raw) if raw is not None else max(0, length - pending)
                return lag, pending
        return length, 0

    async def stats(self, live_ms: int) -> list[DeploymentStats]:
        await self.world.core._ready()
        registry = {d.deployment_id: d for d in await self.registry(live_ms)}
        pinned = await self.pinned_counts()
        load = await self.lane_load()
        ids = sorted(set(registry) | {d for d in pinned if d} | set(load))
        out: list[DeploymentStats] = []
        for dep in ids:
            reg = registry.get(dep)
            lag, pending = load.get(dep, (0, 0))
            out.append(
                DeploymentStats(
                    deployment_id=dep,
                    live=bool(reg and reg.live),
                    workers=list(reg.workers) if reg else [],
                    workflows=list(reg.workflows) if reg else [],
                    first_seen_ms=reg.first_seen_ms if reg else 0,
                    last_seen_ms=reg.last_seen_ms if reg else 0,
                    runs_pinned=pinned.get(dep, 0),
                    waiting=lag,
                    pending=pending,
                )
            )
        return out
