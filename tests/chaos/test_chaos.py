"""The fault matrix: 1,000 runs of mixed workflows under one fault each; nothing lost or doubled.

Opt-in (``make chaos``), one scenario at a time, a few minutes each. Every scenario prints one line
of figures and merges them into ``tests/chaos/results/latest.json``.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from tests.chaos.harness import Cluster, Figures, Scenario, every, run_scenario

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

LEASE_S = 1.5  # harness.BASE_ENV
EVERYSEC = ("--appendonly", "yes", "--appendfsync", "everysec")


def check(figures: Figures, *, may_lose: bool = False) -> None:
    """Every run completed with its value, none stuck or failed, no result committed twice."""
    problems = "\n".join(figures.problems[:20])
    assert figures.failed == 0 and figures.wrong_result == 0, problems
    assert figures.stuck == 0, problems
    assert figures.double_commits == 0, problems
    if not may_lose:
        assert figures.lost == 0, problems
    assert figures.completed + figures.lost == figures.runs, problems


def kill_a_worker(cluster: Cluster, stop: threading.Event, rng: random.Random) -> None:
    cluster.kill_worker(rng.randrange(len(cluster.workers)))


def kill_redis(cluster: Cluster, stop: threading.Event, rng: random.Random) -> None:
    cluster.kill_redis()


def pause_redis(cluster: Cluster, stop: threading.Event, rng: random.Random) -> None:
    cluster.pause_redis(10.0, stop)


def kill_connections(cluster: Cluster, stop: threading.Event, rng: random.Random) -> None:
    cluster.kill_clients()


def pause_a_worker(cluster: Cluster, stop: threading.Event, rng: random.Random) -> None:
    cluster.pause_worker(rng.randrange(len(cluster.workers)), 3 * LEASE_S, stop)


def test_workers_sigkilled(tmp_path: Path) -> None:
    """A worker SIGKILLed every 2-4 s and replaced: every run completes once, right."""
    scenario = Scenario("workers-sigkill", every(2, 4, kill_a_worker), worker_deaths=True)
    check(run_scenario(scenario, tmp_path))


def test_redis_sigkilled_aof_always(tmp_path: Path) -> None:
    """Redis SIGKILLed every 3-5 s and restarted from its AOF (appendfsync always): nothing lost."""
    check(run_scenario(Scenario("redis-sigkill-always", every(3, 5, kill_redis)), tmp_path))


def test_redis_sigkilled_aof_everysec(tmp_path: Path) -> None:
    """The same with appendfsync everysec. Redis write()s the AOF before it replies and only
    fsyncs once a second, so a SIGKILL of the process loses no acknowledged write (the kernel
    still has it); the last second is lost only when the machine goes down, which this harness
    does not do. A run gone although its start() returned is reported (``lost``), not failed."""
    scenario = Scenario(
        "redis-sigkill-everysec",
        every(3, 5, kill_redis),
        redis_args=EVERYSEC,
        writes_may_be_lost=True,
    )
    check(run_scenario(scenario, tmp_path), may_lose=scenario.writes_may_be_lost)


def test_redis_paused_past_retry_window(tmp_path: Path) -> None:
    """Redis SIGSTOPped for 10 s (workers retry for 3 s) every 12-15 s: no run stranded."""
    scenario = Scenario(
        "redis-sigstop",
        every(12, 15, pause_redis),
        env={"WORKFLOW_REDIS_RETRY_SECONDS": "3"},
    )
    check(run_scenario(scenario, tmp_path))


def test_client_connections_killed(tmp_path: Path) -> None:
    """CLIENT KILL TYPE normal of every connection every 1-3 s: runs complete once, right."""
    check(run_scenario(Scenario("client-kill", every(1, 3, kill_connections)), tmp_path))


def test_worker_paused_past_its_lease(tmp_path: Path) -> None:
    """A worker SIGSTOPped for three leases, then continued: it must not commit over the new
    holder (no result twice in a log, no run failed because of it)."""
    scenario = Scenario("worker-sigstop", every(3, 5, pause_a_worker), worker_deaths=True)
    check(run_scenario(scenario, tmp_path))
