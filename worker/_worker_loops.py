"""The worker's background duties: leases, timers, reclaiming, retention, requests, the watchdog.

Functions of a :class:`worker._worker.Worker`, kept apart so that the core (driving runs and
executing steps) reads on its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import traceback
from math import inf
from typing import TYPE_CHECKING, Any

from . import _health_http
from ._batcher import Batcher
from ._compactor import add_compactor
from ._deployments import leave as leave_deployment
from ._deployments import register_interval_s, register_loop
from ._events import NewEvent
from ._health import STATUS_INTERVAL_S, answer_health_check, presence, status_report
from ._replay import error_json
from ._requests import request_loop
from ._schedule_firing import schedule_loop
from ._supervisor import Duty, DutyBody
from ._world import Commit, Wakeup

if TYPE_CHECKING:
    from ._worker import Worker

FORGET_AFTER_MS = 3600 * 1000  # a worker silent for an hour is dropped from the status hash


def supervise(worker: Worker) -> None:
    """Put every background duty of ``worker`` under its supervisor.

    ``stale_after_s``: how long a duty may go without a success before health checks name it
    (``WORKFLOW_DUTY_QUIET_SECONDS``, 60 by default: more than the Redis retry window, 30 s, that
    a duty may spend waiting on Redis; the heartbeat gets one lease, as leases lapse after that).
    """
    sup = worker.supervisor
    lease_s = worker.config.lease_ms / 1000.0
    quiet_s = worker.config.duty_quiet_s
    if worker.serves_default:  # a pool-only worker (--queues gpu) replays no runs
        sup.add("read-wakeups", worker.read_loop, stale_after_s=quiet_s)
    # two loops share the committer: one batch is prepared while another is on the wire
    for name, batcher in (
        ("commit-a", worker.committer),
        ("commit-b", worker.committer),
        ("acquire", worker.acquirer),
        ("release", worker.releaser),
    ):
        sup.add(name, batcher_duty(batcher), stale_after_s=quiet_s, idle=batcher.idle)
    sup.add("heartbeat", lambda d: heartbeat_loop(worker, d), stale_after_s=max(lease_s, 5.0))
    sup.add("timers", lambda d: timer_loop(worker, d), stale_after_s=quiet_s)
    if worker.serves_default:
        sup.add("reclaim", lambda d: reclaim_loop(worker, d), stale_after_s=quiet_s + 3 * lease_s)
    worker.pools.supervise()  # queue streams and the deployment's lanes (see _pools.py)
    worker.flow.supervise()  # flow control's renewals and sweeper, when used (_flow_gate.py)
    sup.add("requests", lambda d: request_loop(worker, d), stale_after_s=quiet_s)
    # a success per renewal: quiet only when several renewals in a row failed
    register_s = max(quiet_s, 3 * register_interval_s(worker.config.lease_ms))
    sup.add("deployment", lambda d: register_loop(worker, d), stale_after_s=register_s)
    sup.add("schedules", lambda d: schedule_loop(worker, d), stale_after_s=quiet_s)
    sup.add("janitor", lambda d: janitor_loop(worker, d), stale_after_s=max(quiet_s, 300.0))
    add_compactor(worker)  # finished runs' logs compacted (WORKFLOW_COMPACT_AFTER_S)
    sup.add("health", lambda d: health_loop(worker, d), stale_after_s=quiet_s)
    status_s = max(quiet_s, 3 * STATUS_INTERVAL_S)
    sup.add("status", lambda d: status_loop(worker, d), stale_after_s=status_s)
    sock = worker.health_socket
    if sock is not None:  # it answers when asked: no success to expect while nobody asks
        serve = _health_http.serve
        sup.add("health-http", lambda d: serve(sock, lambda: report(worker), d), stale_after_s=inf)
    msock, metrics = worker.metrics_socket, worker.metrics
    if msock is not None and metrics is not None:
        from ._metrics import metrics_app

        app = metrics_app(metrics.registry, metrics.redis)
        sup.add("metrics-http", lambda d: _health_http.serve_app(msock, app, d), stale_after_s=inf)


def batcher_duty(batcher: Batcher[Any, Any]) -> DutyBody:
    async def body(duty: Duty) -> None:
        await batcher.run(duty.ok)

    return body


def report(worker: Worker) -> dict[str, Any]:
    """The worker's status report: its duties, held runs and concurrency."""
    return status_report(
        worker.name,
        worker.supervisor.report(),
        held=len(worker.held),
        concurrency=worker.config.concurrency,
        queues=list(worker.config.queues),
        deployment=worker.deployment,
        pool_tasks=len(worker.pools.running),
        pid=os.getpid(),
    )


async def health_loop(worker: Worker, duty: Duty) -> None:
    """Answer health checks, ahead of any backlog of wake-ups (they have a stream of their own)."""
    world = presence(worker.world)
    await world.ensure_health_group()
    while True:
        checks = await world.read_health_checks(worker.name, 1000)
        for message_id, check_id in checks:
            await answer_health_check(worker.world, check_id, report(worker))
            worker.log.debug("health_check_answered", message_id=message_id)
        await world.done_health_checks([m for m, _ in checks])
        duty.ok()


async def status_loop(worker: Worker, duty: Duty) -> None:
    """Publish the worker's status report for ``wf health``; forget workers long gone."""
    world = presence(worker.world)
    while True:
        await world.publish_worker_status(worker.name, json.dumps(report(worker)))
        now_ms = int(time.time() * 1000)
        gone = []
        for name, text in (await world.worker_statuses()).items():
            try:
                at_ms = int(json.loads(text).get("at_ms", 0))
            except (ValueError, AttributeError, TypeError):
                at_ms = 0
            if now_ms - at_ms > FORGET_AFTER_MS:
                gone.append(name)
        await world.forget_workers(gone)
        duty.ok()
        await asyncio.sleep(STATUS_INTERVAL_S)


async def forget_self(worker: Worker) -> None:
    """A worker that stops takes its status report with it, and leaves its deployment."""
    await leave_deployment(worker)
    try:
        await presence(worker.world).forget_workers([worker.name])
    except Exception as exc:
        worker.log.warning("worker_status_not_removed", error=str(exc))


async def heartbeat_loop(worker: Worker, duty: Duty) -> None:
    interval = worker.config.heartbeat_ms / 1000.0
    while True:
        await asyncio.sleep(interval)
        await heartbeat_once(worker)
        duty.ok()


async def heartbeat_once(worker: Worker) -> None:
    """Renew the leases this worker holds; flag the lost ones, nudge the ones with new events."""
    # a run whose lease is still being acquired is not "lost": it has no lease yet
    held = [h for h in worker.held.values() if h.leased]
    if not held:
        return
    wakeups = [w for h in held for w in (h.wakeup, *h.merged)]
    seqs = await worker.world.heartbeat(
        worker.token, [h.run_id for h in held], wakeups, worker.config.lease_ms
    )
    for h in held:
        seq = seqs.get(h.run_id, 0)
        if seq < 0:
            h.lost = True
            h.nudge.set()
        elif seq > h.known_seq:
            h.known_seq = seq
            h.nudge.set()


async def timer_loop(worker: Worker, duty: Duty) -> None:
    while True:
        nxt = await worker.world.promote_timers()
        duty.ok()
        wait = 0.5 if nxt is None else (nxt - worker.now_ms()) / 1000.0
        await asyncio.sleep(min(0.5, max(0.005, wait)))


async def reclaim_loop(worker: Worker, duty: Duty) -> None:
    interval = max(0.2, worker.config.lease_ms / 3000.0)
    while not worker.stopping.is_set():
        await asyncio.sleep(interval)
        room = min(worker.config.concurrency - len(worker.held) - worker.pool_load, 50)
        if room > 0:
            for w in await worker.world.reclaim(worker.name, worker.config.lease_ms, room):
                if w.deliveries > worker.config.max_deliveries:
                    await dead_letter(worker, w)
                else:
                    worker.log.info("wakeup_reclaimed", run_id=w.run_id, deliveries=w.deliveries)
                    worker._dispatch(w)
        duty.ok()


async def dead_letter(worker: Worker, w: Wakeup) -> None:
    reason = (
        f"wake-up delivered {w.deliveries} times without the run making progress "
        f"(max {worker.config.max_deliveries}); workers processing it crashed or stalled"
    )
    worker.log.error("run_dead_lettered", run_id=w.run_id, deliveries=w.deliveries)
    await worker.world.dead_letter(w, reason)
    err = error_json(RuntimeError(reason))
    await worker.committer.submit(
        Commit(run_id=w.run_id, events=[NewEvent("run_failed", "", {"error": err})])
    )


async def janitor_loop(worker: Worker, duty: Duty) -> None:
    while True:
        await worker.world.expire_indexes()
        duty.ok()
        await asyncio.sleep(60)


# -- watchdog --------------------------------------------------------------------------------


def start_watchdog(worker: Worker) -> None:
    """A thread (the event loop may be the thing that is stuck) that reports workflow code
    blocking the loop, with its stack. It only reads and logs; an error in one look is logged
    and the next look goes on."""

    def look(reported: str | None) -> str | None:
        run_id = worker._advancing
        took = time.monotonic() - worker._advance_started
        if run_id and took > worker.config.block_threshold_s and reported != run_id:
            frame = sys._current_frames().get(worker._main_thread)
            stack = "".join(traceback.format_stack(frame, limit=8)) if frame else ""
            worker.log.warning(
                "workflow_blocking_loop", run_id=run_id, seconds=round(took, 2), stack=stack
            )
            return run_id
        return reported if run_id else None

    def watch() -> None:
        reported: str | None = None
        while not worker.stopping.is_set():
            time.sleep(0.25)
            try:
                reported = look(reported)
            except Exception as exc:
                worker.log.error("watchdog_failed", error=repr(exc), exc_info=True)

    threading.Thread(target=watch, name="wf-watchdog", daemon=True).start()
