"""Requests from other services: run starts (``<prefix>:start``) and hook resumes (``<prefix>:hooks:resume``).

Requests get the same at-least-once treatment as wake-ups: an entry stays pending until it is
decided, a worker that dies leaves its entries to be reclaimed by another once they have been idle
for a lease, and an entry delivered more than ``max_deliveries`` times is rejected. Handling is
idempotent, so a redelivered request converges: a start without ``run_id`` gets one derived from
its stream id (the same on every delivery), and a resume carries its stream id as the request id
of its ``hook_received`` event (a second one is answered "exists").

Only a verdict about the request itself rejects it (malformed, unknown workflow, bad arguments,
invalid run id, too large, no such hook). An infrastructure error leaves it pending, to be retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import _serde
from ._deployments import (
    InvalidDeploymentIdError,
    UnknownDeploymentError,
    resolve_deployment,
)
from ._errors import (
    FlowControlError,
    HookNotFoundError,
    InvalidRunIdError,
    MalformedMessageError,
    PayloadTooLargeError,
    SerializationError,
    WorkflowNotRegisteredError,
    WorldUnavailableError,
)
from ._events import NewEvent
from ._flow import check_priority
from ._hooks import resume_hook
from ._ids import _ulid_text, check_run_id
from ._registry import convert_args, get_workflow, has_workflow
from ._replay import error_json
from ._world import Commit, StartRequest

if TYPE_CHECKING:
    from ._supervisor import Duty
    from ._worker import Worker

BATCH = 100
BLOCK_MS = 500

# verdicts about a request itself: it is rejected at once, with the error as the reason
VERDICTS = (
    FlowControlError,
    MalformedMessageError,
    WorkflowNotRegisteredError,
    InvalidRunIdError,
    PayloadTooLargeError,
    SerializationError,
    HookNotFoundError,
    UnknownDeploymentError,
    InvalidDeploymentIdError,
)


async def request_loop(worker: Worker, duty: Duty) -> None:
    """Read and handle requests until the worker stops; reclaim those of dead workers.

    A worker duty (see ``_worker_loops.supervise``): an error that escapes, such as Redis staying
    unreachable past the retry window, ends this run of the loop and the supervisor restarts it;
    the requests it had read and not decided stay pending, to be reclaimed.
    """
    interval = max(0.2, worker.config.lease_ms / 3000.0)
    block_ms = min(BLOCK_MS, int(interval * 1000))
    next_reclaim = 0.0
    while not worker.stopping.is_set():
        if time.monotonic() >= next_reclaim:
            next_reclaim = time.monotonic() + interval
            await handle_requests(worker, await reclaim_requests(worker))
        await handle_requests(
            worker, await worker.world.read_start_requests(worker.name, BATCH, block_ms)
        )
        duty.ok()


async def reclaim_requests(worker: Worker) -> list[StartRequest]:
    """Take over requests idle for longer than a lease (their worker died or stalled)."""
    got = await worker.world.reclaim_start_requests(worker.name, worker.config.lease_ms, BATCH)
    for req in got:
        worker.log.info(
            "request_reclaimed", message_id=req.message_id, kind=req.kind, deliveries=req.deliveries
        )
    return got


async def handle_requests(worker: Worker, requests: Sequence[StartRequest]) -> None:
    """Handle each request on its own; acknowledge the ones decided (done or rejected).

    The start requests of a batch are handled concurrently (each creates its own run, and
    creating a run is idempotent); resume requests one after the other, in stream order, so a
    hook receives its payloads in the order they were sent. An error that escapes a request
    (Redis unreachable) ends the batch: the requests decided are still acknowledged, the others
    stay pending.
    """
    decided: list[StartRequest] = []
    try:
        starts = [req for req in requests if req.kind != "resume"]
        outcomes = await asyncio.gather(
            *(handle_request(worker, req) for req in starts), return_exceptions=True
        )
        decided += [req for req, done in zip(starts, outcomes, strict=True) if done is True]
        failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is not None:
            raise failure
        for req in requests:
            if req.kind == "resume" and await handle_request(worker, req):
                decided.append(req)
    finally:
        await worker.world.ack_start_requests(decided)


async def handle_request(worker: Worker, req: StartRequest) -> bool:
    """Decide one request: True when it is done or rejected, False to leave it pending."""
    try:
        if req.deliveries > worker.config.max_deliveries:
            reason = (
                f"request delivered {req.deliveries} times without being decided "
                f"(max {worker.config.max_deliveries}); workers handling it crashed or failed"
            )
            worker.log.error("request_dead_lettered", message_id=req.message_id, reason=reason)
            await worker.world.reject_start_request(req, reason)
        elif req.kind == "resume":
            await handle_resume_request(worker, req)
        else:
            await handle_start_request(worker, req)
        return True
    except WorldUnavailableError:
        raise  # Redis is unreachable: so it is for the rest of the batch too (see handle_requests)
    except Exception as exc:
        # not a verdict about the request: it stays pending and is retried until max_deliveries
        worker.log.error(
            "request_failed", message_id=req.message_id, error=repr(exc), exc_info=True
        )
    return False


def request_trace(fields: dict[str, str]) -> str:
    """The W3C trace context a start request carries (fields ``traceparent`` and, optionally,
    ``tracestate``), stored with the run so that its spans join the caller's trace."""
    carrier = {k: fields[k] for k in ("traceparent", "tracestate") if fields.get(k)}
    return json.dumps(carrier, separators=(",", ":")) if "traceparent" in carrier else ""


def request_run_id(req: StartRequest) -> str:
    """The run id of a start request without one: derived from its stream and stream id.

    A ULID whose time is the entry's millisecond timestamp and whose random part is a hash of the
    stream name and the entry id, so every delivery of the request names the same run.
    """
    ms = int(req.message_id.split("-", 1)[0]) & ((1 << 48) - 1)
    digest = hashlib.sha256(f"{req.source}|{req.message_id}".encode()).digest()
    return f"wrun_{_ulid_text(ms << 80 | int.from_bytes(digest[:10], 'big'))}"


async def handle_start_request(worker: Worker, req: StartRequest) -> None:
    """``XADD <prefix>:start * workflow NAME args JSON [run_id ID] [deployment ID]``: create the
    run (idempotent)."""
    fields = req.fields
    run_id = fields.get("run_id") or request_run_id(req)
    try:
        name = fields.get("workflow")
        if not name:
            raise MalformedMessageError("start request has no 'workflow' field")
        check_run_id(run_id)
        args_text = fields.get("args", "[]")
        size = len(args_text.encode())
        if size > worker.world.max_payload_bytes:
            raise PayloadTooLargeError(
                "'args' of start request", size, worker.world.max_payload_bytes
            )
        args = _loads(args_text, "start request 'args'")
        if not isinstance(args, list):
            raise MalformedMessageError("start request 'args' must be a JSON array")
        if not has_workflow(name):
            raise WorkflowNotRegisteredError(name)
        convert_args(get_workflow(name).signature, args, {}, f"workflow {name!r}")
        priority = request_priority(fields.get("priority"))
        # pinned like start() pins: the request's "deployment" (registered), else the newest
        # live deployment serving the workflow, if any
        deployment = await resolve_deployment(worker.world, name, fields.get("deployment"))
    except VERDICTS as exc:
        reason = f"{type(exc).__name__}: {exc}"
        worker.log.warning("start_request_rejected", message_id=req.message_id, reason=reason)
        await worker.world.reject_start_request(req, reason)
        if fields.get("workflow") and _valid_run_id(fields.get("run_id", "")):
            await record_failed_start(worker, fields["run_id"], fields["workflow"], exc)
        return
    created = await worker.world.create_run(
        run_id, name, args_text, deployment, request_trace(fields), priority=priority
    )
    worker.log.info("run_started_by_request", run_id=run_id, workflow=name, created=created)


def request_priority(text: str | None) -> int:
    """A start request's optional ``priority`` field (an int, as for ``start()``)."""
    if text is None or text == "":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise FlowControlError(
            "priority", text, "expected an int from -1000 to 1000", "start request"
        ) from None
    return check_priority(value)


async def handle_resume_request(worker: Worker, req: StartRequest) -> None:
    """``XADD <prefix>:hooks:resume * token T payload JSON``: deliver the payload to hook T once."""
    token = req.fields.get("token", "")
    try:
        if not token:
            raise MalformedMessageError("resume request has no 'token' field")
        text = req.fields.get("payload", "null")
        size = len(text.encode())
        if size > worker.world.max_payload_bytes:
            raise PayloadTooLargeError(
                "'payload' of resume request", size, worker.world.max_payload_bytes
            )
        payload = _loads(text, "resume request 'payload'")
        hook = await resume_hook(token, payload, worker.world, request_id=req.message_id)
    except VERDICTS as exc:
        reason = f"{type(exc).__name__}: {exc}"
        worker.log.warning("resume_request_rejected", message_id=req.message_id, reason=reason)
        await worker.world.reject_start_request(req, reason)
        return
    worker.log.info("hook_resumed_by_request", run_id=hook.run_id, hook_id=hook.hook_id)


def _loads(text: str, what: str) -> object:
    try:
        return _serde.loads(text, what=what)
    except SerializationError:
        raise MalformedMessageError(f"{what} is not valid JSON: {text[:200]!r}") from None


async def record_failed_start(worker: Worker, run_id: str, workflow: str, exc: Exception) -> None:
    """A caller that chose the run id can read why its start failed from the run itself.

    Also on a redelivery: a run created ``pending`` for this request whose failure was not yet
    recorded is failed now. A run of that id that already exists otherwise is left alone.
    """
    created = await worker.world.create_run(run_id, workflow, "[]")
    if not created:
        info = await worker.world.get_run(run_id)
        if info is None or info.workflow != workflow or info.status != "pending":
            return
    await worker.committer.submit(
        Commit(run_id=run_id, events=[NewEvent("run_failed", "", {"error": error_json(exc)})])
    )


def _valid_run_id(run_id: str) -> bool:
    try:
        check_run_id(run_id)
    except InvalidRunIdError:
        return False
    return True
