"""Figure 10, scale-out: steps/s of 1 and 2 worker processes on one server with 1 and 4 partitions
and on a local 3-master Redis Cluster, measured in the same run.

Each configuration drains 1,000 ten-step runs created with ``start()`` while no worker runs (as
figure 1 does), on a fresh key prefix: the clock runs from spawning the ``wf worker bench.workloads``
processes until every partition's ``idx:completed`` counts 1,000 together. Reported per
configuration: steps/s, the CPU seconds per step of the workers (summed) and of redis-server (summed
over the cluster's nodes), and every output checked. The machine has few cores: with 2 workers the
workers and Redis share them, which the CPU figures show. ``docs/SCALING.md`` reads these figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.infra import RedisServer, log
from bench.ours import (
    RUNS,
    check_outputs,
    client,
    create_ten_step_runs,
    process_cpu_s,
    spawn_worker,
    stop_worker,
    worker_log_tail,
)
from bench.workloads import STEPS_PER_RUN
from worker import set_world
from world_redis import RedisWorld

TIMEOUT_S = 300.0
POLL_S = 0.01


@dataclass(frozen=True)
class Topology:
    """Where a configuration runs: its URL and how to read the CPU time of its Redis processes."""

    name: str
    url: str
    ports: tuple[int, ...]

    def redis_cpu_s(self) -> float:
        total = 0.0
        for port in self.ports:
            with redis.Redis(host="127.0.0.1", port=port, decode_responses=True) as r:
                cpu = r.info("cpu")
                total += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return total


def server_topology(server: RedisServer) -> Topology:
    return Topology("server", server.url, (server.port,))


@contextlib.contextmanager
def local_cluster() -> Iterator[Topology]:
    """A local 3-master Redis Cluster (the one the test suite starts), stopped afterwards."""
    from tests.support import RedisClusterNodes

    nodes = RedisClusterNodes.start()
    try:
        yield Topology("cluster", nodes.url, tuple(nodes.ports))
    finally:
        nodes.stop()


async def completed(world: RedisWorld) -> tuple[int, int]:
    """(completed, failed) runs over every partition."""
    keys = world.keys
    counts = await asyncio.gather(
        *(
            client(world).zcard(keys.idx_status(p, status))
            for status in ("completed", "failed")
            for p in range(keys.partitions)
        )
    )
    n = keys.partitions
    return sum(int(c) for c in counts[:n]), sum(int(c) for c in counts[n:])


async def drain(
    topology: Topology, partitions: int | None, workers: int, prefix: str
) -> dict[str, Any]:
    """Steps/s of ``workers`` worker processes draining RUNS pre-created ten-step runs."""
    world = RedisWorld.from_url(topology.url, prefix=prefix, partitions=partitions)
    set_world(world)
    workdir = Path(tempfile.mkdtemp(prefix="wfbench-scale-"))
    try:
        await world.check_config()  # on a cluster this settles the default partition count
        n = world.keys.partitions
        run_ids = await create_ten_step_runs(RUNS, 50)
        env = {"WORKFLOW_PARTITIONS": str(n)}
        redis_cpu0 = topology.redis_cpu_s()
        t0 = time.perf_counter()
        procs = [
            spawn_worker(topology.url, prefix, workdir / f"worker{i}.log", env)
            for i in range(workers)
        ]
        cpu: dict[int, float] = {}
        try:
            while True:
                done, failed = await completed(world)
                seconds = time.perf_counter() - t0
                for proc in procs:
                    cpu[proc.pid] = process_cpu_s(proc.pid) or cpu.get(proc.pid, 0.0)
                if done >= RUNS:
                    break
                if failed:
                    raise RuntimeError(f"{failed} runs failed")
                if any(proc.poll() is not None for proc in procs):
                    raise RuntimeError(f"a worker exited with {done}/{RUNS} runs completed")
                if seconds > TIMEOUT_S:
                    raise RuntimeError(f"timed out with {done}/{RUNS} runs completed")
                await asyncio.sleep(POLL_S)
            redis_cpu = topology.redis_cpu_s() - redis_cpu0
        except RuntimeError as exc:
            tails = "\n".join(worker_log_tail(workdir / f"worker{i}.log") for i in range(workers))
            raise RuntimeError(f"{exc}\nworker logs:\n{tails}") from None
        finally:
            for proc in procs:
                await asyncio.to_thread(stop_worker, proc)
        checks = await check_outputs(world, run_ids)
    finally:
        set_world(None)
        await world.close()
    steps = RUNS * STEPS_PER_RUN
    return {
        "topology": topology.name,
        "partitions": n,
        "workers": workers,
        "seconds": round(seconds, 3),
        "steps_per_s": round(steps / seconds, 1),
        "worker_cpu_us_per_step": round(sum(cpu.values()) * 1e6 / steps, 1),
        "redis_cpu_us_per_step": round(redis_cpu * 1e6 / steps, 1),
        **checks,
    }


CONFIGS: tuple[tuple[str, int | None, int], ...] = (
    ("server", 1, 1),
    ("server", 1, 2),
    ("server", 4, 1),
    ("server", 4, 2),
    ("cluster", None, 1),  # the cluster's default partition count (16 per master)
    ("cluster", None, 2),
)


async def scale_out(
    server: RedisServer, tag: str, cluster: Callable[[], Any] = local_cluster
) -> list[dict[str, Any]]:
    """Every configuration of CONFIGS; one that fails records its error and the others still run."""
    out: list[dict[str, Any]] = []
    single = server_topology(server)
    with contextlib.ExitStack() as stack:
        topologies: dict[str, Topology | Exception] = {"server": single}
        for i, (where, partitions, workers) in enumerate(CONFIGS):
            if where not in topologies:
                try:
                    topologies[where] = stack.enter_context(cluster())
                except Exception as exc:  # no redis-cli, ports...: the figure says why
                    topologies[where] = exc
            topology = topologies[where]
            shown = f"{where}, {partitions or 'default'} partitions, {workers} worker(s)"
            if isinstance(topology, Exception):
                out.append({"topology": where, "workers": workers, "error": f"{topology}"})
                continue
            log(f"ours: figure 5, scale-out: {shown}")
            try:
                out.append(await drain(topology, partitions, workers, f"wfb{tag}sc{i}"))
            except Exception as exc:
                out.append(
                    {
                        "topology": where,
                        "partitions": partitions,
                        "workers": workers,
                        "error": str(exc),
                    }
                )
    return out
