"""``python -m bench.profile``: where one worker's time goes on the throughput workload (py-spy).

Starts a private redis-server, creates ``--runs`` (5,000) ten-step runs with ``start()``, then runs
ONE ``wf worker bench.workloads --concurrency 200`` under ``py-spy record -r 500 -f raw`` (start-up
included) until every run completed, and prints steps/s and the top entries of the worker's MAIN
thread by self and by inclusive time, in % of its samples. Other threads (the ``wf-watchdog``
thread, which py-spy counts as busy while it sleeps, and any thread pool) are left out: a stack
counts when its outermost frame is not ``threading``'s ``_bootstrap``. File paths are normalised
(no line numbers, no site-packages or interpreter prefix, project files from the repository root).

``python -m bench.profile --raw FILE`` aggregates a raw file recorded earlier instead.
Needs py-spy (the ``bench`` extra); bench/PROFILE.md keeps the results.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bench import workloads
from bench.infra import ROOT, byte_compile, log, private_redis
from bench.ours import client, create_ten_step_runs, engine, wait_count, worker_command, worker_env

RUNS = 5_000
RATE_HZ = 500
TOP_SELF, TOP_INCLUSIVE = 30, 40

_LINE = re.compile(r":\d+\)$")
_PREFIXES = (
    re.compile(r"\(.*/site-packages/"),
    re.compile(r"\(.*/lib/python3\.\d+/"),
    re.compile(r"\(/[^()]*?/(?=(?:worker|world_redis|bench|examples)/)"),
)


def normalise(frame: str) -> str:
    """``func (/abs/.venv/lib/python3.11/site-packages/redis/x.py:12)`` -> ``func (redis/x.py)``."""
    frame = _LINE.sub(")", frame)
    for prefix in _PREFIXES:
        frame = prefix.sub("(", frame, count=1)
    return frame


def main_thread(frames: list[str]) -> bool:
    """Whether a stack (outermost frame first) belongs to the main thread."""
    return not frames or not re.match(r"(Thread\.)?_bootstrap \(threading\.py", frames[0])


@dataclass
class Profile:
    """Sample counts of the main thread: per frame as the innermost one (self) and anywhere."""

    total: int = 0
    other_threads: int = 0
    self_time: collections.Counter[str] = field(default_factory=collections.Counter)
    inclusive: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, frames: list[str], n: int) -> None:
        if not main_thread(frames):
            self.other_threads += n
            return
        names = [normalise(f) for f in frames]
        self.total += n
        self.self_time[names[-1]] += n
        for name in set(names):
            self.inclusive[name] += n


def parse_raw(lines: Iterable[str]) -> Profile:
    """A py-spy ``-f raw`` file: one ``frame;frame;... count`` per line, outermost frame first."""
    profile = Profile()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            profile.add(stack.split(";"), int(count))
    return profile


def render(profile: Profile, top_self: int = TOP_SELF, top_inclusive: int = TOP_INCLUSIVE) -> str:
    """The top entries by self and inclusive time, in % of the main thread's samples."""
    total = max(profile.total, 1)
    out = [
        f"main thread: {profile.total} samples (other threads, left out: {profile.other_threads})",
        "--- self",
    ]
    out += [f"{100 * n / total:5.1f}% {f}" for f, n in profile.self_time.most_common(top_self)]
    out.append("--- inclusive")
    out += [f"{100 * n / total:5.1f}% {f}" for f, n in profile.inclusive.most_common(top_inclusive)]
    return "\n".join(out)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(found):
        raise SystemExit("py-spy not found: pip install -e '.[bench]'")
    return found


def spawn_profiled(url: str, raw: Path, nonblocking: bool = False) -> subprocess.Popen[bytes]:
    """``py-spy record`` running one worker on the prefix ``wfprof``, writing ``raw``.

    ``nonblocking``: py-spy reads the worker's stacks without stopping it. By default it stops
    the process for each sample, which over-counts lines that make a system call (measured in
    bench/PROFILE.md, last section)."""
    cmd = [py_spy(), "record", "-r", str(RATE_HZ), "-f", "raw", "-o", str(raw)]
    cmd += ["--nonblocking", "--"] if nonblocking else ["--"]
    return subprocess.Popen(
        [*cmd, *worker_command()],
        cwd=str(ROOT),
        env=worker_env(url, "wfprof"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # one SIGINT to py-spy and the worker it runs
    )


async def record(runs: int, raw: Path, nonblocking: bool = False) -> float:
    """Profile one worker draining ``runs`` pre-created ten-step runs; returns steps/s."""
    byte_compile()
    with private_redis() as server:
        log(f"private redis-server on 127.0.0.1:{server.port}; creating {runs:,} runs")
        async with engine(server.url, "wfprof") as world:
            await create_ten_step_runs(runs, 50)
            t0 = time.perf_counter()
            proc = spawn_profiled(server.url, raw, nonblocking)
            try:
                seconds, _ = await wait_count(
                    client(world), world.keys.idx_status(0, "completed"), runs, 600, t0=t0
                )
            finally:
                os.killpg(proc.pid, signal.SIGINT)
                await asyncio.to_thread(proc.wait, 60)
    return runs * workloads.STEPS_PER_RUN / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=RUNS, help=f"ten-step runs (default {RUNS:,})")
    parser.add_argument("--raw", type=Path, help="aggregate this raw py-spy file instead")
    parser.add_argument("--keep", type=Path, help="keep the raw profile at this path")
    parser.add_argument(
        "--nonblocking",
        action="store_true",
        help="sample without stopping the worker (no bias towards system calls; stacks may tear)",
    )
    args = parser.parse_args(argv)
    raw = args.raw
    if raw is None:
        raw = args.keep or Path(tempfile.mkdtemp(prefix="wfprof-")) / "worker.raw"
        rate = asyncio.run(record(args.runs, raw, args.nonblocking))
        print(
            f"{args.runs:,} runs x 10 steps, 1 worker, concurrency 200: {rate:,.0f} steps/s (start-up included, under py-spy)"
        )
    print(render(parse_raw(raw.read_text().splitlines())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
