"""Health checks that go through the queue itself, and the HTTP ``?__health`` answer.

``health_check(endpoint)`` puts a health-check message on the health stream, which every worker
reads ahead of its wake-ups (a backlog of work never delays the answer). A live worker answers by
pushing a reply under the check id, with the report of its duties; the check measures that round
trip. No answer within the timeout means no worker is alive; an answer from a worker with a duty
that has not succeeded recently (its supervisor's report) is unhealthy too, naming the duty.
``check_health`` also reads the status reports every worker publishes (see :class:`Presence`), so
one quiet duty of any live worker shows. (Older clients put checks on the ready stream as a wake-up
with no run and reason ``health:<check id>``; workers still answer those.)

The reply channel (``push_reply`` / ``pop_reply`` / ``enqueue_health_check``) is not part of the
core World protocol: a World offers it by implementing :class:`ReplyChannel` (``RedisWorld`` does).
Webhook responses travel through the same channel.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Protocol, runtime_checkable

from ._errors import WorkflowError
from ._ids import new_id
from ._logging import get_logger
from ._world import Wakeup, World

HEALTH_REASON = "health:"
ENDPOINTS = ("workflow", "step")
DEFAULT_TIMEOUT_S = 30.0
STATUS_INTERVAL_S = 5.0  # how often a worker publishes its status report
LIVE_WITHIN_S = 3 * STATUS_INTERVAL_S  # a worker whose report is older is taken for gone
_CHECK_ID = re.compile(r"hc_[0-9A-Za-z]{1,64}")


@runtime_checkable
class ReplyChannel(Protocol):
    """One-shot replies between processes: a waiter pops what another process pushes."""

    async def push_reply(self, run_id: str, reply_id: str, data: str, ttl_s: int = 300) -> None: ...
    async def pop_reply(self, run_id: str, reply_id: str, timeout_s: float) -> str | None: ...
    async def enqueue_health_check(self, check_id: str) -> None: ...


@runtime_checkable
class Presence(Protocol):
    """Workers' status reports, the health-check stream and the server clock."""

    async def publish_worker_status(self, worker: str, status: str) -> None: ...
    async def forget_workers(self, workers: list[str]) -> None: ...
    async def worker_statuses(self) -> dict[str, str]: ...
    async def ensure_health_group(self) -> None: ...
    async def read_health_checks(self, consumer: str, block_ms: int) -> list[tuple[str, str]]: ...
    async def done_health_checks(self, message_ids: list[str]) -> None: ...
    async def server_time_ms(self) -> int: ...


@runtime_checkable
class PartitionHealth(Protocol):
    """Per-partition state of the work queue (a World with partitions offers it)."""

    async def partition_health(self) -> list[dict[str, Any]]: ...


def presence(world: World) -> Presence:
    """``world`` as a Presence; WorkflowError when its class does not offer one."""
    if not isinstance(world, Presence):
        raise WorkflowError(
            f"{type(world).__name__} has no worker presence (status reports, health stream)"
        )
    return world


def reply_channel(world: World) -> ReplyChannel:
    """``world`` as a ReplyChannel; WorkflowError when its class does not offer one."""
    if not isinstance(world, ReplyChannel):
        raise WorkflowError(
            f"{type(world).__name__} has no reply channel (push_reply, pop_reply, "
            "enqueue_health_check); webhooks with manual responses and health checks need one"
        )
    return world


def health_check_id(wakeup: Wakeup) -> str | None:
    """The check id when ``wakeup`` is a health check (no run, reason ``health:hc_...``)."""
    if wakeup.run_id or not wakeup.reason.startswith(HEALTH_REASON):
        return None
    check_id = wakeup.reason[len(HEALTH_REASON) :]
    return check_id if _CHECK_ID.fullmatch(check_id) else None


async def answer_health_check(world: World, check_id: str, report: dict[str, Any]) -> None:
    """Worker side: reply to the check with the worker's status report (see ``status_report``)."""
    if not _CHECK_ID.fullmatch(check_id):
        get_logger().warning("malformed_health_check", check_id=check_id[:100])
        return
    await reply_channel(world).push_reply("", check_id, json.dumps(report), ttl_s=60)


def status_report(worker: str, duties: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A worker's status: healthy unless a duty has not succeeded within its allowance."""
    stale = sorted(name for name, d in duties.items() if not d["healthy"])
    return {
        "worker": worker,
        "at_ms": int(time.time() * 1000),
        "healthy": not stale,
        "stale": stale,
        "duties": duties,
        **extra,
    }


def _stale_message(report: dict[str, Any]) -> str:
    duties = report.get("duties") or {}
    parts = [
        f"{name} (no success for {duties.get(name, {}).get('silent_s', '?')} s"
        + (
            f"; last error: {duties[name]['last_error']}"
            if duties.get(name, {}).get("last_error")
            else ""
        )
        + ")"
        for name in report.get("stale", [])
    ]
    return f"worker {report.get('worker', '?')}: duty " + ", ".join(parts)


async def health_check(
    endpoint: str = "workflow", *, world: World | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """``{"endpoint", "healthy", "latencyMs"[, "error"]}``: a live worker answered within ``timeout``."""
    from ._client import get_world

    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {', '.join(ENDPOINTS)}")
    started = time.perf_counter()
    result: dict[str, Any] = {"endpoint": endpoint, "healthy": False}
    try:
        async with asyncio.timeout(timeout + 1.0):
            reply = await _round_trip(reply_channel(world or get_world()), timeout)
        if reply is None:
            result["error"] = f"no worker answered within {timeout:g} s"
        else:
            report = _parse_report(reply)
            result["worker"] = report.get("worker", "")
            result["healthy"] = report.get("healthy", True) is not False
            if not result["healthy"]:
                result["error"] = _stale_message(report)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    result["latencyMs"] = max(0.001, round((time.perf_counter() - started) * 1000, 3))
    return result


async def _round_trip(channel: ReplyChannel, timeout: float) -> str | None:
    check_id = new_id("hc")
    await channel.enqueue_health_check(check_id)
    return await channel.pop_reply("", check_id, max(0.01, timeout))


def _parse_report(text: str) -> dict[str, Any]:
    try:
        report = json.loads(text)
    except ValueError:
        return {"healthy": False, "stale": [], "worker": f"<unreadable report {text[:80]!r}>"}
    return report if isinstance(report, dict) else {"healthy": False, "stale": []}


async def worker_reports(
    world: World, live_within_s: float = LIVE_WITHIN_S
) -> list[dict[str, Any]]:
    """The status reports of the workers that published one within ``live_within_s``."""
    now_ms = int(time.time() * 1000)
    out = []
    for name, text in sorted((await presence(world).worker_statuses()).items()):
        report = _parse_report(text)
        report.setdefault("worker", name)
        age_s = (now_ms - int(report.get("at_ms") or 0)) / 1000.0
        if age_s <= live_within_s:
            out.append(report)
    return out


async def check_health(
    world: World | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """Both endpoints, and every live worker's duties (what ``wf health`` prints).

    ``{"allHealthy": bool, "results": [...], "workers": [...], "partitions": {...}}``: healthy
    when a worker answers each check, no live worker reports a duty that has not succeeded
    recently, and every partition's queue answers on its node (on a cluster, a master down takes
    its partitions with it while the health stream may live elsewhere). ``partitions``:
    ``{"count", "pending", "lag", "unreachable": [{"partition", "error"}...]}``.
    """
    from ._client import get_world

    world = world or get_world()
    await world.check_config()  # a client on another partition count is misconfigured, say so
    results, partitions = await asyncio.gather(
        asyncio.gather(*(health_check(e, world=world, timeout=timeout) for e in ENDPOINTS)),
        _partitions_report(world),
    )
    workers = await worker_reports(world)
    healthy = (
        all(r["healthy"] for r in results)
        and all(w.get("healthy") for w in workers)
        and not partitions["unreachable"]
    )
    return {
        "allHealthy": healthy,
        "results": list(results),
        "workers": workers,
        "partitions": partitions,
    }


async def _partitions_report(world: World) -> dict[str, Any]:
    if not isinstance(world, PartitionHealth):
        return {"count": 0, "pending": 0, "lag": 0, "unreachable": []}
    rows = await world.partition_health()
    ok = [r for r in rows if "error" not in r]
    return {
        "count": len(rows),
        "pending": sum(int(r["pending"]) for r in ok),
        "lag": sum(int(r["lag"] or 0) for r in ok),
        "unreachable": [r for r in rows if "error" in r],
    }


def http_health_message(path: str) -> str:
    """The body of a ``?__health`` answer (SPEC 4.9)."""
    return f'Workflow DevKit "{path}" endpoint is healthy'
