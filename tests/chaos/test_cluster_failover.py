"""A master of a Redis Cluster SIGKILLed under load; its replica takes over; what was lost.

Six nodes: three masters, one replica each (``--cluster-replicas 1``), a 2 s node timeout so the
cluster fails over within seconds, ``appendonly yes`` + ``appendfsync everysec`` on every node. Two
``wf worker`` processes; the runs of ``chaos_mixed`` (steps, retries, sleeps, hooks, child runs)
are started over 20 s. About 8 s in, the master that holds the most of the runs is SIGKILLed; its
replica is promoted by the cluster itself (no ``CLUSTER FAILOVER`` from the test); the workers
and the driver ride it out through their retry boundary (``WORKFLOW_REDIS_RETRY_SECONDS``,
default 30 s).

Redis replication is asynchronous and by default the engine does not use ``WAIT``: a write the
old master acknowledged but had not sent to its replica when it died is gone (the last scenario
sets ``WORKFLOW_REPLICA_ACKS=1``). Measured here:

- ``writes_lost``: just before the kill, the last event of every run (its position in the run's
  log and all its fields, its time included) is read from the masters; once everything has
  settled, an event no longer at its position (or there with other fields: the log went back and
  grew again) was a write of the old master that the replica never received. ``runs_rolled_back`` counts the runs
  concerned, ``events_lost`` the events between the snapshot and what survived.
- ``lost``: runs whose ``start()`` had returned and that the cluster no longer has.
- ``stuck``: runs not terminal at the end (stranded with no wake-up, lease or timer to move them).
- ``duplicate_step_executions``: step executions (recorded in files outside Redis) that the log
  accounts for by no outcome, e.g. a step whose result commit was lost and that ran again.
- ``failover_s``: from the SIGKILL until every surviving node says ``cluster_state:ok`` and the
  dead master's slots are served by its promoted replica.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from tests.chaos.harness import Cluster, Fault, Scenario, run_id_of, run_scenario
from tests.chaos.test_chaos import check
from tests.support import RedisClusterNodes, wait_for
from world_redis._keys import Keys

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

NODE_TIMEOUT_MS = 2000
PERSISTENCE = ("--save", "", "--appendonly", "yes", "--appendfsync", "everysec")
RUNS = 600
KILL_AFTER_S = 8.0  # into the 20 s over which runs are started
LAG_S = 0.5  # how far behind the replica is, in the second scenario


def fingerprint(fields: dict[str, str]) -> str:
    """An event's fields as one string: events carry no id of their own (the entry id is the
    event's position), so a log that went back and was written again at the same position is told
    apart by its fields (a step's result and its time, an event's type)."""
    return json.dumps(fields, sort_keys=True)


@dataclass
class ReplicatedCluster(Cluster):
    """The harness's ``Cluster`` on a 3-master Redis Cluster with one replica per master."""

    nodes: RedisClusterNodes | None = None
    rejoin: bool = False  # start the killed master again once failed over (it rejoins as replica)
    snapshot: dict[str, tuple[str, str]] = field(default_factory=dict)  # run -> (entry, fields)
    keys: Keys | None = None

    @property
    def url(self) -> str:
        assert self.nodes is not None
        return self.nodes.url

    def start(self) -> None:
        self.nodes = RedisClusterNodes.start(
            3, 1, node_timeout_ms=NODE_TIMEOUT_MS, extra=self.redis_args
        )
        self.env["WORKFLOW_REDIS_URL"] = self.nodes.url
        for _ in range(self.workers_wanted):
            self.workers.append(self.new_worker())

    def client(self) -> redis.RedisCluster:
        assert self.nodes is not None
        alive = [
            p
            for p, proc in zip(self.nodes.ports, self.nodes.procs, strict=True)
            if proc.poll() is None
        ]
        return redis.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode("127.0.0.1", p) for p in alive],
            decode_responses=True,
        )

    def kill_busiest_master(self, runs: int, cut_link_s: float) -> None:
        """Snapshot every run's last event, SIGKILL the master holding the most runs, wait for
        the failover; figures into ``details``. With ``cut_link_s``, the master's link to its
        replica is cut (``CLIENT KILL TYPE replica``, and a ``masterauth`` the master refuses so
        the replica cannot link again) that long before the snapshot and the kill: what the
        master acknowledges in between never reaches the replica."""
        assert self.nodes is not None
        with self.client() as r:
            prefix = self.env["WORKFLOW_PREFIX"]
            partitions = wait_for(
                lambda: r.hget(f"{prefix}:config", "partitions"), 30, what="partition count"
            )
            self.keys = Keys(prefix=prefix, partitions=int(str(partitions)))
            masters = self.nodes.masters()
            holder: Counter[int] = Counter()
            for i in range(runs):
                slot = key_slot(self.keys.run(run_id_of(i)).encode())
                holder.update(
                    p for p, ranges in masters.items() if any(lo <= slot <= hi for lo, hi in ranges)
                )
            victim, held = holder.most_common(1)[0]
            if cut_link_s:
                # the replica cannot link again (it sends a password this master refuses)
                for port in self.nodes.ports:
                    if self.nodes.replication(port).get("master_port") == str(victim):
                        self.nodes.cli(port, "CONFIG", "SET", "masterauth", "not-this-one")
                self.nodes.cli(victim, "CLIENT", "KILL", "TYPE", "replica")
                time.sleep(cut_link_s)  # the fault itself: writes go on, unreplicated
            self.snapshot = self.last_events(r, runs)
            began = time.monotonic()
            self.nodes.kill(victim)
        nodes = self.nodes
        survivors = [p for p in nodes.ports if p != victim]

        def failed_over(port: int) -> bool:
            serving = nodes.masters(port)
            return (
                "cluster_state:ok" in nodes.cli(port, "CLUSTER", "INFO")
                and len(serving) == 3
                and victim not in serving
            )

        for port in survivors:
            wait_for(lambda port=port: failed_over(port), 60, what=f"failover seen by port {port}")
        failover = time.monotonic() - began
        promoted = [p for p in nodes.masters(survivors[0]) if p not in masters]
        self.details.update(
            killed_master=victim,
            runs_on_killed_master=held,
            promoted_replica=promoted[0] if promoted else None,
            snapshot_runs=len(self.snapshot),
            failover_s=round(failover, 1),
        )
        if self.rejoin:
            # as a supervisor would: the dead master starts again and becomes the replica of
            # its replacement, which has none until then
            nodes.restart(victim, NODE_TIMEOUT_MS, self.redis_args)
            wait_for(
                lambda: nodes.replication(victim).get("master_link_status") == "up",
                60,
                what=f"port {victim} replicating its replacement",
            )
            self.details.update(rejoined_s=round(time.monotonic() - began, 1))

    def last_events(self, r: redis.RedisCluster, runs: int) -> dict[str, tuple[str, str]]:
        """run id -> (stream entry id, its fields) of its last event, for the runs that exist."""
        assert self.keys is not None
        pipe = r.pipeline(transaction=False)
        ids = [run_id_of(i) for i in range(runs)]
        for run_id in ids:
            pipe.xrevrange(self.keys.events(run_id), count=1)
        found: dict[str, tuple[str, str]] = {}
        for run_id, entries in zip(ids, pipe.execute(), strict=True):
            if entries:
                entry_id, fields = entries[0]
                found[run_id] = (entry_id, fingerprint(fields))
        return found

    def measure_lost_writes(self) -> None:
        """Which snapshotted events the cluster no longer has at their place."""
        if not self.snapshot or self.keys is None:
            self.details.setdefault("writes_lost", "not measured (no kill)")
            return
        rolled_back: list[str] = []
        events_lost = 0
        with self.client() as r:
            pipe = r.pipeline(transaction=False)
            for run_id, (entry_id, _) in self.snapshot.items():
                pipe.xrange(self.keys.events(run_id), min="-", max=entry_id)
            for (run_id, (entry_id, event_id)), entries in zip(
                self.snapshot.items(), pipe.execute(), strict=True
            ):
                kept = [(eid, fingerprint(f)) for eid, f in entries]
                if kept and kept[-1] == (entry_id, event_id):
                    continue
                rolled_back.append(run_id)
                wanted = int(entry_id.split("-")[0])
                # events after the last one that is still the same as before the kill
                same = 0
                for eid, _ in kept:
                    if int(eid.split("-")[0]) <= wanted:
                        same = int(eid.split("-")[0])
                events_lost += wanted - same
        self.details.update(
            writes_lost=len(rolled_back),
            events_lost=events_lost,
            rolled_back_runs=rolled_back[:10],
        )

    def stop(self) -> None:
        try:
            self.measure_lost_writes()
        finally:
            for w in self.workers:
                w.stop(timeout=10)
            if self.nodes is not None:
                self.nodes.stop()


def kill_busiest_master(cut_link_s: float = 0.0, rejoin: bool = False) -> Fault:
    """One fault, KILL_AFTER_S into the scenario; ``rejoin``: the killed master is started
    again once the cluster has failed over."""

    def fault(cluster: Cluster, stop: threading.Event, rng: random.Random) -> int:
        assert isinstance(cluster, ReplicatedCluster)
        if stop.wait(KILL_AFTER_S):
            return 0
        cluster.rejoin = rejoin
        cluster.kill_busiest_master(RUNS, cut_link_s)
        return 1

    return fault


def scenario(name: str, fault: Fault) -> Scenario:
    return Scenario(
        name,
        fault,
        runs=RUNS,
        start_seconds=20.0,
        fault_seconds=KILL_AFTER_S + 90,
        workers=2,
        redis_args=PERSISTENCE,
        writes_may_be_lost=True,
        worker_deaths=True,  # a lost step commit makes the step run again
        topology=ReplicatedCluster,
    )


def test_master_sigkilled_replica_promoted(tmp_path: Path) -> None:
    """Every run completes with its value after the failover, except what replication lost
    (reported as figures: lost runs, rolled-back runs, duplicate step executions)."""
    figures = run_scenario(scenario("cluster-master-sigkill", kill_busiest_master()), tmp_path)
    assert figures.faults == 1, figures.problems
    check(figures, may_lose=True)


def test_master_sigkilled_with_replication_behind(tmp_path: Path) -> None:
    """The same with the replica LAG_S behind (its link cut before the kill): acknowledged
    writes are lost for sure, and measured. Nothing fails, no result is wrong or committed
    twice; runs whose start was lost are gone (``lost``), and runs whose log went back while a
    worker held them are stranded (``stuck``): a known gap, see the README's "Chaos testing"."""
    sc = scenario("cluster-master-sigkill-lagging", kill_busiest_master(LAG_S))
    sc.settle_seconds = 60.0
    figures = run_scenario(sc, tmp_path)
    problems = "\n".join(figures.problems[:20])
    assert figures.faults == 1, problems
    assert figures.failed == 0 and figures.wrong_result == 0, problems
    assert figures.double_commits == 0, problems
    assert figures.completed + figures.lost + figures.stuck == figures.runs, problems


def test_master_sigkilled_behind_with_replica_acks(tmp_path: Path) -> None:
    """The same fault with ``WORKFLOW_REPLICA_ACKS=1`` for the workers and the driver: every
    write that acknowledges something (a start, a step's result, a hook's payload) waits for the
    replica before its caller goes on, so what the master wrote while its replica was cut off
    was acknowledged to no one. The killed master is started again once failed over (until it
    rejoins as a replica, its replacement has none, and writes to its slots wait). No run whose
    start() returned is lost, none is stranded, every run completes with its value. The master's
    unreplicated writes are still measured (``writes_lost``): writes nobody was told of, done
    again by the workers from what the promoted replica holds."""
    sc = scenario("cluster-master-sigkill-lagging-acked", kill_busiest_master(LAG_S, True))
    sc.env = {"WORKFLOW_REPLICA_ACKS": "1"}
    sc.settle_seconds = 60.0
    figures = run_scenario(sc, tmp_path)
    problems = "\n".join(figures.problems[:20])
    assert figures.faults == 1, problems
    assert figures.lost == 0 and figures.stuck == 0, problems
    assert figures.completed == figures.runs, problems
    assert figures.failed == 0 and figures.wrong_result == 0, problems
    assert figures.double_commits == 0, problems
