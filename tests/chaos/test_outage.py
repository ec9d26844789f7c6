"""A Redis outage longer than the workers' retry window under a flood of start requests.

Two defects of "Nothing lost under faults", reproduced end to end: runs stranded for good after
an outage longer than ``WORKFLOW_REDIS_RETRY_SECONDS``, and background duties (the request loop,
health) dying silently in it. One worker, 5,000 ``XADD <prefix>:start`` requests, a 3 s retry
window, and a 10 s outage of one of two kinds:

- ``sigstop``: redis-server paused (SIGSTOP) and continued. Its connections stay open, so most
  commands simply wait for it; the clients' errors come when it continues.
- ``down``: redis-server SIGKILLed and started again from its AOF (``appendfsync always``) 10 s
  later: every command is refused for the whole outage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis

from tests.chaos.harness import MODULE, Figures, save
from tests.support import WF, RedisServer, WorkerProcess, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

REQUESTS = 5000
LATER = 200
PAUSE_S = 10.0
SETTLE_S = 180.0


def flood(r: redis.Redis, prefix: str, first: int, count: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(first, first + count):
        fields = {
            "workflow": "chaos_light",
            "args": json.dumps([i]),
            "run_id": f"wrun_flood{i:05d}",
        }
        pipe.xadd(f"{prefix}:start", fields)  # type: ignore[arg-type]
    pipe.execute()


def statuses(
    r: redis.Redis, prefix: str, first: int, count: int
) -> list[tuple[int, str | None, str | None]]:
    pipe = r.pipeline(transaction=False)
    for i in range(first, first + count):
        pipe.hmget(f"{prefix}:{{p0}}:run:wrun_flood{i:05d}", "status", "output")
    return [(first + n, s, o) for n, (s, o) in enumerate(pipe.execute())]


def wait_terminal(
    r: redis.Redis, prefix: str, first: int, count: int
) -> list[tuple[int, str | None, str | None]]:
    """The runs' statuses once all are terminal, or as they are at the deadline."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        got = statuses(r, prefix, first, count)
        if all(s in ("completed", "failed", "cancelled") for _, s, _ in got):
            return got
        if time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def healthy(env: dict[str, str]) -> bool:
    done = subprocess.run(
        [WF, "health", "--timeout", "5", "--json"], env=env, capture_output=True, text=True
    )
    try:
        return done.returncode == 0 and bool(json.loads(done.stdout).get("allHealthy"))
    except ValueError:
        return False


def verdict(got: list[tuple[int, str | None, str | None]]) -> tuple[Counter[str], list[str]]:
    counts: Counter[str] = Counter()
    problems = []
    for i, status, output in got:
        if status == "completed" and output is not None and json.loads(output) == i + 1:
            counts["completed"] += 1
        else:
            counts[str(status)] += 1
            if len(problems) < 10:
                problems.append(f"wrun_flood{i:05d}: {status} {output}")
    return counts, problems


@pytest.fixture(params=["sigstop", "down"])
def outage(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """One worker, 5,000 start requests queued, then a 10 s outage of Redis (``request.param``)."""
    persistence = ("--appendonly", "yes", "--appendfsync", "always")
    server = RedisServer.start(*persistence)
    prefix = f"flood{uuid.uuid4().hex[:8]}"
    exec_dir = tmp_path / "exec"
    exec_dir.mkdir()
    env = {
        **os.environ,
        "WORKFLOW_REDIS_URL": server.url,
        "WORKFLOW_PREFIX": prefix,
        "WORKFLOW_REDIS_RETRY_SECONDS": "3",
        "WORKFLOW_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        "CHAOS_EXEC_DIR": str(exec_dir),
    }
    worker = WorkerProcess.start([MODULE], env, tmp_path / "worker.log", 50)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    began = time.monotonic()
    try:
        flood(r, prefix, 0, REQUESTS)
        # the worker is at work on the flood when Redis stops
        wait_for(lambda: r.exists(f"{prefix}:{{p0}}:run:wrun_flood00100"), 60, what="runs created")
        if request.param == "sigstop":
            server.proc.send_signal(signal.SIGSTOP)
            time.sleep(PAUSE_S)  # the fault itself, not a synchronization
            server.proc.send_signal(signal.SIGCONT)
        else:
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
            time.sleep(PAUSE_S)  # the fault itself, not a synchronization
            server = RedisServer.start(*persistence, port=server.port, directory=server.directory)
        yield r, prefix, env, worker, began, request.param
    finally:
        server.proc.send_signal(signal.SIGCONT)
        r.close()
        worker.stop()
        server.stop()


def executions(worker: WorkerProcess) -> tuple[int, int]:
    """Step executions recorded beside the worker's log, and how many ran a step again."""
    seen: Counter[tuple[str, str]] = Counter()
    for path in (worker.log_path.parent / "exec").glob("exec-*.log"):
        for line in path.read_text().splitlines():
            run_id, step_id = line.split()[:2]
            seen[(run_id, step_id)] += 1
    return sum(seen.values()), sum(n - 1 for n in seen.values())


def report(
    name: str,
    runs: int,
    counts: Counter[str],
    began: float,
    problems: list[str],
    worker: WorkerProcess,
) -> None:
    exits = 0 if worker.proc.poll() is None else 1
    total, again = executions(worker)
    figures = Figures(
        name,
        runs,
        completed=counts["completed"],
        failed=counts["failed"],
        stuck=runs - counts["completed"] - counts["failed"] - counts["cancelled"],
        faults=1,
        step_executions=total,
        duplicate_step_executions=again,
        unexpected_worker_exits=exits,
        wall_seconds=time.monotonic() - began,
        problems=problems,
    )
    save(figures)
    print("\n" + figures.line(), flush=True)
    for p in problems:
        print("  " + p, flush=True)


def test_outage_past_retry_window_strands_no_request(outage) -> None:  # type: ignore[no-untyped-def]
    """Every one of the 5,000 requests becomes a run and every run completes with its value:
    none left pending or running with nothing to move it, no valid request turned into a failed run."""
    r, prefix, _, worker, began, kind = outage
    got = wait_terminal(r, prefix, 0, REQUESTS)
    counts, problems = verdict(got)
    rejected = r.xlen(f"{prefix}:start:rejected")
    if rejected:
        problems.append(
            f"{rejected} requests rejected: {r.xrange(f'{prefix}:start:rejected', count=2)}"
        )
    report(f"redis-{kind}-flood", REQUESTS, counts, began, problems, worker)
    assert counts["completed"] == REQUESTS and not rejected, "\n".join(problems)


def test_duties_live_on_after_outage(outage) -> None:  # type: ignore[no-untyped-def]
    """After the outage the worker still reads new start requests (they become runs and complete)
    and ``wf health`` reports it healthy again."""
    r, prefix, env, worker, began, kind = outage
    flood(r, prefix, REQUESTS, LATER)
    got = wait_terminal(r, prefix, REQUESTS, LATER)
    counts, problems = verdict(got)
    deadline = time.monotonic() + 60
    ok = healthy(env)
    while not ok and time.monotonic() < deadline:
        time.sleep(1)  # ok: polls `wf health` (a subprocess) until a deadline
        ok = healthy(env)
    if not ok:
        problems.append("wf health: not healthy within 60 s")
    report(f"redis-{kind}-duties", LATER, counts, began, problems, worker)
    assert counts["completed"] == LATER, "\n".join(problems)
    assert ok, "\n".join(problems)
