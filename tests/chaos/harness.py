"""The chaos harness: a private redis-server, real ``wf worker`` processes, a driver, a fault.

A scenario starts a redis-server with the persistence it needs and N workers (as the README says:
``wf worker MODULE``), starts runs of ``chaos_mixed`` while a fault injector acts in a background
thread for a bounded time, resumes the runs' hooks as they appear, then waits (with a deadline)
until every run is terminal and gives its verdict: every run ``completed`` with the value computed
from its input, none stuck, no step result committed twice, and the step executions that the log
does not account for (duplicates) counted from the records the steps write (see
``chaos_workflows.record``).

Figures are printed one line per scenario and merged into ``tests/chaos/results/latest.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.chaos import chaos_workflows as cw
from tests.support import RedisServer, WorkerProcess, redis_binary
from worker import HookNotFoundError, resume_hook, start
from world_redis import RedisWorld

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
MODULE = "tests.chaos.chaos_workflows"
TERMINAL = ("completed", "failed", "cancelled")
# short leases, so that runs of dead or paused workers are reclaimed within a second or two
BASE_ENV = {
    "WORKFLOW_LEASE_MS": "1500",
    "WORKFLOW_HEARTBEAT_MS": "300",
    "WORKFLOW_MAX_DELIVERIES": "50",
    "WORKFLOW_LOG_FORMAT": "json",
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class Cluster:
    """A redis-server and worker processes that a fault injector may kill, pause and restart."""

    directory: Path
    redis_args: tuple[str, ...]
    env: dict[str, str]
    workers_wanted: int
    concurrency: int
    server: RedisServer | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: int = 0
    expected_exits: set[int] = field(default_factory=set)  # pids the injector killed
    unexpected_exits: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)  # what a fault measured

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def start(self) -> None:
        (self.directory / "redis").mkdir()
        self.server = RedisServer.start(*self.redis_args, directory=str(self.directory / "redis"))
        self.env["WORKFLOW_REDIS_URL"] = self.server.url
        for _ in range(self.workers_wanted):
            self.workers.append(self.new_worker())

    def new_worker(self) -> WorkerProcess:
        self.started += 1
        log = self.directory / f"worker{self.started}.log"
        return WorkerProcess.start([MODULE], dict(self.env), log, self.concurrency)

    # -- faults on workers -----------------------------------------------------------------

    def kill_worker(self, index: int) -> None:
        """SIGKILL one worker and start a replacement."""
        with self.lock:
            victim = self.workers[index]
            self.expected_exits.add(victim.proc.pid)
            victim.kill()
            self.workers[index] = self.new_worker()

    def pause_worker(self, index: int, seconds: float, stop: threading.Event) -> None:
        """SIGSTOP one worker for ``seconds`` (past its lease), then SIGCONT it."""
        proc = self.workers[index].proc
        proc.send_signal(signal.SIGSTOP)
        try:
            stop.wait(seconds)
        finally:
            proc.send_signal(signal.SIGCONT)

    def replace_dead_workers(self) -> None:
        """A worker that exited on its own is reported and replaced (runs need workers)."""
        with self.lock:
            for i, w in enumerate(self.workers):
                code = w.proc.poll()
                if code is not None and w.proc.pid not in self.expected_exits:
                    tail = w.output().strip().splitlines()[-3:]
                    self.unexpected_exits.append(f"pid {w.proc.pid} exit {code}: {tail}")
                    self.workers[i] = self.new_worker()

    # -- faults on redis -------------------------------------------------------------------

    def kill_redis(self) -> None:
        """SIGKILL redis-server and start it again on the same port and directory (AOF)."""
        assert self.server is not None
        self.server.proc.send_signal(signal.SIGKILL)
        self.server.proc.wait(10)
        self.server = RedisServer.start(
            *self.redis_args, port=self.server.port, directory=self.server.directory
        )

    def pause_redis(self, seconds: float, stop: threading.Event) -> None:
        assert self.server is not None
        self.server.proc.send_signal(signal.SIGSTOP)
        try:
            stop.wait(seconds)
        finally:
            self.server.proc.send_signal(signal.SIGCONT)

    def kill_clients(self) -> int:
        """CLIENT KILL TYPE normal: every normal connection (workers, driver) but this one."""
        with redis.Redis.from_url(self.url, socket_timeout=5) as r:
            return int(r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))

    def stop(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGCONT)
            w.stop(timeout=10)
        if self.server is not None:
            self.server.proc.send_signal(signal.SIGCONT)
            self.server.stop()


# a fault: acts on the cluster until ``stop`` is set; returns how many faults it injected
Fault = Callable[[Cluster, threading.Event, random.Random], int]


def every(
    low: float, high: float, act: Callable[[Cluster, threading.Event, random.Random], None]
) -> Fault:
    """A fault that ``act``s at random intervals between ``low`` and ``high`` seconds."""

    def fault(cluster: Cluster, stop: threading.Event, rng: random.Random) -> int:
        count = 0
        while not stop.wait(rng.uniform(low, high)):
            act(cluster, stop, rng)
            count += 1
        return count

    return fault


@dataclass
class Scenario:
    name: str
    fault: Fault
    # CHAOS_RUNS / CHAOS_FAULT_SECONDS shrink a scenario for a quick look; figures use the defaults
    fault_seconds: float = field(
        default_factory=lambda: float(os.environ.get("CHAOS_FAULT_SECONDS", 45))
    )
    runs: int = field(default_factory=lambda: int(os.environ.get("CHAOS_RUNS", 1000)))
    start_seconds: float = 40.0  # runs are started over this long, under the fault
    workers: int = 3
    concurrency: int = 50
    redis_args: tuple[str, ...] = ("--appendonly", "yes", "--appendfsync", "always")
    env: dict[str, str] = field(default_factory=dict)
    settle_seconds: float = 240.0
    worker_deaths: bool = False  # a step's code may run again only when its worker died
    writes_may_be_lost: bool = False  # appendfsync everysec: the last second of writes
    topology: type[Cluster] = Cluster  # the Redis side: one server, or a subclass (a cluster)


@dataclass
class Figures:
    scenario: str
    runs: int
    completed: int = 0
    wrong_result: int = 0
    failed: int = 0
    stuck: int = 0
    lost: int = 0  # runs whose start() had returned and that Redis no longer had
    duplicate_step_executions: int = 0  # executions the log accounts for by no outcome
    same_attempt_executions: int = 0  # executions of an attempt that had run already
    double_commits: int = 0  # step or run results in a log more than once
    step_executions: int = 0
    faults: int = 0
    unexpected_worker_exits: int = 0
    wall_seconds: float = 0.0
    log_events: dict[str, int] = field(default_factory=dict)  # evidence the fault bit
    details: dict[str, object] = field(default_factory=dict)  # a scenario's own figures
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        own = "".join(f" {name}={value}" for name, value in self.details.items())
        return (
            f"chaos {self.scenario}: runs={self.runs} completed={self.completed} "
            f"failed={self.failed} wrong={self.wrong_result} stuck={self.stuck} lost={self.lost} "
            f"duplicate_step_executions={self.duplicate_step_executions} "
            f"(same attempt {self.same_attempt_executions}, of {self.step_executions}) "
            f"double_commits={self.double_commits} faults={self.faults} "
            f"unexpected_worker_exits={self.unexpected_worker_exits} "
            f"wall={self.wall_seconds:.1f}s{own}"
        )


def run_scenario(scenario: Scenario, directory: Path) -> Figures:
    """Run one scenario end to end and return its figures (they are also saved and printed)."""
    exec_dir = directory / "exec"
    exec_dir.mkdir(parents=True)
    prefix = f"chaos{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **BASE_ENV,
        **scenario.env,
        "WORKFLOW_PREFIX": prefix,
        "CHAOS_EXEC_DIR": str(exec_dir),
    }
    cluster = scenario.topology(
        directory, scenario.redis_args, env, scenario.workers, scenario.concurrency
    )
    began = time.monotonic()
    cluster.start()
    try:
        figures = asyncio.run(_drive(scenario, cluster, prefix, exec_dir))
    finally:
        cluster.stop()
    figures.wall_seconds = time.monotonic() - began
    figures.unexpected_worker_exits = len(cluster.unexpected_exits)
    figures.details.update(cluster.details)
    figures.problems += cluster.unexpected_exits[:5]
    figures.log_events = worker_log_events(directory)
    save(figures)
    print("\n" + figures.line(), flush=True)
    print(f"  worker logs: {figures.log_events}", flush=True)
    for problem in figures.problems[:20]:
        print("  " + problem, flush=True)
    return figures


# what workers log when a fault reaches them (see worker._worker and worker._worker_loops)
EVIDENCE = (
    "lease_lost",
    "run_taken_over",
    "step_result_discarded",
    "wakeup_reclaimed",
    "run_processing_failed",
    "run_hand_over_failed",
    "duty_failed",
    "worker_failed",
)


def worker_log_events(directory: Path) -> dict[str, int]:
    """How often the workers of a scenario logged each EVIDENCE event."""
    counts: Counter[str] = Counter()
    for path in directory.glob("worker*.log"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line).get("event")
            except (ValueError, AttributeError):
                continue
            if event in EVIDENCE:
                counts[event] += 1
    return {name: counts[name] for name in EVIDENCE}


def run_id_of(i: int) -> str:
    return f"wrun_chaos{i:05d}"


async def _drive(scenario: Scenario, cluster: Cluster, prefix: str, exec_dir: Path) -> Figures:
    # the driver's World waits for replicas as the workers do (their env says how many)
    acks = int(scenario.env.get("WORKFLOW_REPLICA_ACKS", "0"))
    world = RedisWorld.from_url(cluster.url, prefix=prefix, replica_acks=acks)
    figures = Figures(scenario.name, scenario.runs)
    acked: set[int] = set()
    stop_fault = threading.Event()
    fault_count: list[int] = []
    rng = random.Random(scenario.name)

    def inject() -> None:
        fault_count.append(scenario.fault(cluster, stop_fault, rng))

    injector = threading.Thread(target=inject, name=f"fault-{scenario.name}", daemon=True)
    injector.start()
    fault_ends = time.monotonic() + scenario.fault_seconds
    done = asyncio.Event()
    hooks = {i for i in range(scenario.runs) if i % 5 == 0}
    try:
        starter = asyncio.create_task(_start_runs(world, scenario, acked))
        resumer = asyncio.create_task(_resume_hooks(world, hooks, done))
        keeper = asyncio.create_task(_keep_workers(cluster, done))
        await starter
        await asyncio.to_thread(injector.join, max(0.0, fault_ends - time.monotonic()))
        stop_fault.set()
        await asyncio.to_thread(injector.join, 60)
        figures.faults = fault_count[0] if fault_count else -1
        statuses = await _settle(world, scenario, time.monotonic() + scenario.settle_seconds)
        done.set()
        await asyncio.gather(resumer, keeper)
        await _verdict(world, scenario, statuses, acked, exec_dir, figures)
    finally:
        stop_fault.set()
        done.set()
        await world.close()
    return figures


async def _start_runs(world: RedisWorld, scenario: Scenario, acked: set[int]) -> None:
    """Start the runs at an even pace; a start that fails is tried again (it is idempotent)."""
    pace = scenario.start_seconds / scenario.runs
    t0 = time.monotonic()
    for i in range(scenario.runs):
        delay = t0 + i * pace - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        while True:
            try:
                await start(cw.chaos_mixed, i, run_id=run_id_of(i), world=world)
                acked.add(i)
                break
            except Exception:  # an outage: the same start again, once Redis answers
                await asyncio.sleep(0.2)


async def _resume_hooks(world: RedisWorld, waiting: set[int], done: asyncio.Event) -> None:
    """Resume every hook run's hook, as often as needed: a resume has a request id, so a repeat
    is received once; a hook not created yet (or gone) is tried again on the next pass."""
    while waiting and not done.is_set():
        for i in sorted(waiting):
            run_id = run_id_of(i)
            try:
                info = await world.get_run(run_id)
                if info is not None and info.status in TERMINAL:
                    waiting.discard(i)
                    continue
                await resume_hook(
                    cw.hook_token(run_id), cw.hook_payload(i), world, request_id="driver"
                )
            except HookNotFoundError:
                pass
            except Exception:  # an outage: next pass
                await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)


async def _keep_workers(cluster: Cluster, done: asyncio.Event) -> None:
    while not done.is_set():
        await asyncio.to_thread(cluster.replace_dead_workers)
        await asyncio.sleep(1.0)


async def _statuses(world: RedisWorld, run_ids: list[str]) -> dict[str, str | None]:
    pipe = world.redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(world.keys.run(run_id), "status")
    return dict(zip(run_ids, await pipe.execute(), strict=True))


async def _settle(world: RedisWorld, scenario: Scenario, deadline: float) -> dict[str, str | None]:
    """Wait until every run is terminal (or gone), until ``deadline``; the last statuses seen."""
    run_ids = [run_id_of(i) for i in range(scenario.runs)]
    statuses: dict[str, str | None] = {}
    while True:
        try:
            statuses = await _statuses(world, run_ids)
        except Exception:  # a connection killed a moment ago: look again
            await asyncio.sleep(0.5)
            continue
        if all(s is None or s in TERMINAL for s in statuses.values()):
            return statuses
        if time.monotonic() >= deadline:
            return statuses
        await asyncio.sleep(0.5)


def _executions(exec_dir: Path) -> dict[tuple[str, str], Counter[int]]:
    """(run id, step id) -> attempt -> how many times its code started."""
    seen: dict[tuple[str, str], Counter[int]] = defaultdict(Counter)
    for path in exec_dir.glob("exec-*.log"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4:
                seen[(parts[0], parts[1])][int(parts[2])] += 1
    return seen


async def _verdict(
    world: RedisWorld,
    scenario: Scenario,
    statuses: dict[str, str | None],
    acked: set[int],
    exec_dir: Path,
    figures: Figures,
) -> None:
    lost_runs: set[str] = set()
    for i in range(scenario.runs):
        run_id = run_id_of(i)
        info = await world.get_run(run_id)
        if info is None:
            figures.lost += 1
            lost_runs.add(run_id)
            figures.problems.append(f"{run_id}: gone (start acknowledged: {i in acked})")
        elif info.status == "completed":
            value = json.loads(info.output or "null")
            if value == cw.expected(i):
                figures.completed += 1
            else:
                figures.wrong_result += 1
                figures.problems.append(f"{run_id}: {value} != {cw.expected(i)}")
        elif info.status in TERMINAL:
            figures.failed += 1
            figures.problems.append(f"{run_id}: {info.status}: {(info.error or '')[:300]}")
        else:
            figures.stuck += 1
            figures.problems.append(
                f"{run_id}: stuck {info.status}, seq {info.seq}, lease {info.lease_owner!r}"
            )
    executions = _executions(exec_dir)
    figures.step_executions = sum(sum(c.values()) for c in executions.values())
    run_ids = {run_id for run_id, _ in executions} | {run_id_of(i) for i in range(scenario.runs)}
    outcomes: dict[tuple[str, str], int] = Counter()
    for run_id in sorted(run_ids - lost_runs):
        events = await world.read_events(run_id)
        tags = Counter((e.__struct_config__.tag, e.corr) for e in events)
        for (tag, corr), n in tags.items():
            if tag in ("step_completed", "step_failed", "run_completed", "run_failed") and n > 1:
                figures.double_commits += n - 1
                figures.problems.append(f"{run_id}: {tag} {corr!r} {n} times")
            if tag in ("step_completed", "step_failed", "step_retrying"):
                outcomes[(run_id, corr)] += n
    for key, attempts in executions.items():
        if key[0] in lost_runs:
            continue
        figures.same_attempt_executions += sum(n - 1 for n in attempts.values())
        figures.duplicate_step_executions += max(0, sum(attempts.values()) - outcomes[key])
    if figures.duplicate_step_executions and not scenario.worker_deaths:
        # reported, not failed: design §8 promises one execution unless a worker dies mid-step
        figures.problems.append(
            f"{figures.duplicate_step_executions} step executions again without a worker death"
        )


def save(figures: Figures) -> None:
    """Merge the scenario's figures into ``results/latest.json`` with the machine they ran on."""
    RESULTS.parent.mkdir(exist_ok=True)
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        data = {}
    version = subprocess.run([redis_binary(), "--version"], capture_output=True, text=True)
    data["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "redis": version.stdout.strip(),
        "note": "shared with other test runs",
    }
    data["command"] = "make chaos"
    scenarios = data.setdefault("scenarios", {})
    scenarios[figures.scenario] = {
        **{k: v for k, v in vars(figures).items() if k != "problems"},
        "problems": figures.problems[:20],
        "line": figures.line(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
