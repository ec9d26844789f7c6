"""The worker's background duties: leases, timers, reclaiming, retention, requests, the watchdog.

Functions of a :class:`worker._worker.Worker`, kept apart so that the core (driving runs and
executing steps) reads on its own.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

from . import _serde
from ._errors import InvalidRunIdError, MalformedMessageError, WorkflowNotRegisteredError
from ._events import NewEvent
from ._hooks import resume_hook
from ._ids import check_run_id, new_run_id
from ._registry import convert_args, get_workflow, has_workflow
from ._replay import error_json
from ._world import Commit, StartRequest, Wakeup

if TYPE_CHECKING:
    from ._worker import Worker


async def heartbeat_loop(worker: Worker) -> None:
    interval = worker.config.heartbeat_ms / 1000.0
    while True:
        await asyncio.sleep(interval)
        try:
            await heartbeat_once(worker)
        except Exception as exc:
            worker.log.warning("heartbeat_failed", error=str(exc))


async def heartbeat_once(worker: Worker) -> None:
    """Renew the leases this worker holds; flag the lost ones, nudge the ones with new events."""
    # a run whose lease is still being acquired is not "lost": it has no lease yet
    held = [h for h in worker.held.values() if h.leased]
    if not held:
        return
    seqs = await worker.world.heartbeat(
        worker.token, [h.run_id for h in held], [h.wakeup for h in held], worker.config.lease_ms
    )
    for h in held:
        seq = seqs.get(h.run_id, 0)
        if seq < 0:
            h.lost = True
            h.nudge.set()
        elif seq > h.known_seq:
            h.known_seq = seq
            h.nudge.set()


async def timer_loop(worker: Worker) -> None:
    while True:
        try:
            nxt = await worker.world.promote_timers()
        except Exception as exc:
            worker.log.warning("timer_promotion_failed", error=str(exc))
            nxt = None
        wait = 0.5 if nxt is None else (nxt - time.time() * 1000) / 1000.0
        await asyncio.sleep(min(0.5, max(0.005, wait)))


async def reclaim_loop(worker: Worker) -> None:
    interval = max(0.2, worker.config.lease_ms / 3000.0)
    while not worker.stopping.is_set():
        await asyncio.sleep(interval)
        if len(worker.held) >= worker.config.concurrency:
            continue
        try:
            wakeups = await worker.world.reclaim(worker.name, worker.config.lease_ms, 50)
        except Exception as exc:
            worker.log.warning("reclaim_failed", error=str(exc))
            continue
        for w in wakeups:
            if w.deliveries > worker.config.max_deliveries:
                await dead_letter(worker, w)
            else:
                worker.log.info("wakeup_reclaimed", run_id=w.run_id, deliveries=w.deliveries)
                worker._dispatch(w)


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


async def janitor_loop(worker: Worker) -> None:
    while True:
        await asyncio.sleep(60)
        try:
            await worker.world.expire_indexes()
        except Exception as exc:
            worker.log.warning("janitor_failed", error=str(exc))


async def start_request_loop(worker: Worker) -> None:
    while not worker.stopping.is_set():
        try:
            requests = await worker.world.read_start_requests(worker.name, 100, 500)
        except Exception as exc:
            worker.log.error("read_start_requests_failed", error=str(exc))
            await asyncio.sleep(1)
            continue
        for req in requests:
            if req.kind == "resume":
                await handle_resume_request(worker, req)
            else:
                await handle_start_request(worker, req)
        await worker.world.ack_start_requests(requests)


async def handle_start_request(worker: Worker, req: StartRequest) -> None:
    fields = req.fields
    run_id = fields.get("run_id") or new_run_id()
    try:
        name = fields.get("workflow")
        if not name:
            raise MalformedMessageError("start request has no 'workflow' field")
        check_run_id(run_id)
        args_text = fields.get("args", "[]")
        try:
            args = _serde.loads(args_text)
        except Exception:
            raise MalformedMessageError(
                f"start request 'args' is not valid JSON: {args_text[:200]!r}"
            ) from None
        if not isinstance(args, list):
            raise MalformedMessageError("start request 'args' must be a JSON array")
        if not has_workflow(name):
            raise WorkflowNotRegisteredError(name)
        wf = get_workflow(name)
        convert_args(wf.signature, args, {}, f"workflow {name!r}")
        created = await worker.world.create_run(run_id, name, args_text)
        worker.log.info("run_started_by_request", run_id=run_id, workflow=name, created=created)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        worker.log.warning("start_request_rejected", message_id=req.message_id, reason=reason)
        await worker.world.reject_start_request(req, reason)
        if fields.get("workflow") and _valid_run_id(fields.get("run_id", "")):
            await record_failed_start(worker, fields["run_id"], fields["workflow"], exc)


async def handle_resume_request(worker: Worker, req: StartRequest) -> None:
    """``XADD wf:hooks:resume * token T payload JSON``: deliver the payload to hook T."""
    token = req.fields.get("token", "")
    try:
        if not token:
            raise MalformedMessageError("resume request has no 'token' field")
        text = req.fields.get("payload", "null")
        try:
            payload = _serde.loads(text)
        except Exception:
            raise MalformedMessageError(
                f"resume request 'payload' is not valid JSON: {text[:200]!r}"
            ) from None
        hook = await resume_hook(token, payload, worker.world)
        worker.log.info("hook_resumed_by_request", run_id=hook.run_id, hook_id=hook.hook_id)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        worker.log.warning("resume_request_rejected", message_id=req.message_id, reason=reason)
        await worker.world.reject_start_request(req, reason)


async def record_failed_start(worker: Worker, run_id: str, workflow: str, exc: Exception) -> None:
    """A caller that chose the run id can read why its start failed from the run itself."""
    try:
        created = await worker.world.create_run(run_id, workflow, "[]")
        if created:
            await worker.committer.submit(
                Commit(
                    run_id=run_id,
                    events=[NewEvent("run_failed", "", {"error": error_json(exc)})],
                )
            )
    except Exception:
        pass


# -- watchdog --------------------------------------------------------------------------------


def start_watchdog(worker: Worker) -> None:
    def watch() -> None:
        reported: str | None = None
        while not worker.stopping.is_set():
            time.sleep(0.25)
            run_id = worker._advancing
            took = time.monotonic() - worker._advance_started
            if run_id and took > worker.config.block_threshold_s and reported != run_id:
                reported = run_id
                frame = sys._current_frames().get(worker._main_thread)
                stack = "".join(traceback.format_stack(frame, limit=8)) if frame else ""
                worker.log.warning(
                    "workflow_blocking_loop", run_id=run_id, seconds=round(took, 2), stack=stack
                )
            elif not run_id:
                reported = None

    threading.Thread(target=watch, name="wf-watchdog", daemon=True).start()


def _valid_run_id(run_id: str) -> bool:
    try:
        check_run_id(run_id)
    except InvalidRunIdError:
        return False
    return True
