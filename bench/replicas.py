"""``python -m bench.replicas``: what waiting for a replica costs (``WORKFLOW_REPLICA_ACKS``).

A private master (persistence off, as figure 1 of ``make bench``) and one replica of it, both on
this machine, so the replica's round trip is a loopback one: on a network add its latency to
every write that waits. Measured in one run, each without acknowledgements and with
``WORKFLOW_REPLICA_ACKS=1`` (set for the driver's World and the worker process alike):

- throughput: figure 1's workload (``bench.ours.throughput``: 5,000 runs x 10 no-op steps, one
  ``wf worker``), total and steady steps/s, CPU per step;
- latency: figure 4's (``bench.ours_warm.latency``: start() to result() of 200 one-step runs, one
  at a time, a warm worker), p50 and p99.

Prints both rows and writes ``bench/results/replicas-<UTC stamp>.json``. Not part of
``make bench``: its targets are for one server without replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import ours, ours_warm
from bench.infra import RESULTS, RedisServer, log, machine_info, private_redis

MODES = (("none", "0"), ("replica_acks_1", "1"))


@contextlib.contextmanager
def acks_env(value: str) -> Iterator[None]:
    """WORKFLOW_REPLICA_ACKS for the block: read by the Worlds made in it and the workers spawned."""
    before = os.environ.get("WORKFLOW_REPLICA_ACKS")
    os.environ["WORKFLOW_REPLICA_ACKS"] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WORKFLOW_REPLICA_ACKS", None)
        else:
            os.environ["WORKFLOW_REPLICA_ACKS"] = before


def wait_linked(master: RedisServer, timeout_s: float = 30.0) -> None:
    """Until a write on the master is acknowledged by its replica (``WAIT 1`` answers 1)."""
    deadline = time.monotonic() + timeout_s
    with master.client() as r:
        while True:
            r.set("bench:replica-probe", time.time())
            if int(r.execute_command("WAIT", 1, 200)) >= 1:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica did not acknowledge within {timeout_s:.0f} s")


async def measure(master: RedisServer, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, value in MODES:
        with acks_env(value):
            log(f"replicas: throughput, {mode}")
            tp = await ours.throughput(master, f"wfbr{mode}tp", workdir)
            log(f"replicas: latency, {mode}")
            async with (
                ours.engine(master.url, f"wfbr{mode}lat") as world,
                ours.worker_process(master.url, f"wfbr{mode}lat", workdir),
            ):
                lat = await ours_warm.latency()
                acks = world.core.replica_acks
        out[mode] = {"replica_acks": acks, "throughput": tp, "latency_ms": lat}
    return out


def lines(data: dict[str, Any]) -> list[str]:
    m = data["machine"]
    rows = [
        f"replica acknowledgement, one master + one replica on this machine ({data['at']})",
        f"machine: nproc {m['nproc']} | CPU {m['cpu_model']} | load "
        f"{' '.join(map(str, m['load_avg_1m_5m_15m']))} | Python {m['python']} | Redis "
        f"{m['redis']}",
    ]
    for mode, _ in MODES:
        r = data["figures"][mode]
        tp, lat = r["throughput"], r["latency_ms"]
        cpu = tp.get("cpu_us_per_step_steady", {})
        rows.append(
            f"  WORKFLOW_REPLICA_ACKS={r['replica_acks']}: total {tp['steps_per_s']:,.0f} "
            f"steps/s, steady {tp.get('steady_steps_per_s', 0):,.0f}; CPU per step, steady: "
            f"worker {cpu.get('workers_total', '?')} µs, master {cpu.get('redis', '?')} µs; "
            f"start-to-result p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms"
        )
    return rows


async def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="wfbench-replicas-"))
    with private_redis() as master:
        with private_redis(extra=("--replicaof", "127.0.0.1", str(master.port))):
            wait_linked(master)
            figures = await measure(master, workdir)
            info = master.info("replication")
        data = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m bench.replicas",
            "machine": machine_info(master),
            "master_replication": {k: info[k] for k in ("role", "connected_slaves")},
            "figures": figures,
        }
    shutil.rmtree(workdir, ignore_errors=True)
    for line in lines(data):
        print(line, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = data["at"].replace("-", "").replace(":", "")
    path = RESULTS / f"replicas-{stamp}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"results: {path.relative_to(RESULTS.parents[1])}", flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
