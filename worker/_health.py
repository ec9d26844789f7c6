"""Health checks that go through the queue itself, and the HTTP ``?__health`` answer.

``health_check(endpoint)`` puts a health-check message on the ready stream: a wake-up with no run
and reason ``health:<check id>``. A live worker reads it like any wake-up, answers by pushing a
reply under the check id, and acknowledges the message; the check measures that round trip. No
answer within the timeout means no worker is consuming the queue. This engine has one queue family,
so the ``workflow`` and ``step`` checks both travel through the ready stream, each with its own id.

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
_CHECK_ID = re.compile(r"hc_[0-9A-Za-z]{1,64}")


@runtime_checkable
class ReplyChannel(Protocol):
    """One-shot replies between processes: a waiter pops what another process pushes."""

    async def push_reply(self, run_id: str, reply_id: str, data: str, ttl_s: int = 300) -> None: ...
    async def pop_reply(self, run_id: str, reply_id: str, timeout_s: float) -> str | None: ...
    async def enqueue_health_check(self, check_id: str) -> None: ...


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


async def answer_health_check(world: World, wakeup: Wakeup, check_id: str, worker: str) -> None:
    """Worker side: reply to the check, then acknowledge its message."""
    try:
        reply = json.dumps({"worker": worker, "at_ms": int(time.time() * 1000)})
        await reply_channel(world).push_reply("", check_id, reply, ttl_s=60)
    except Exception as exc:
        get_logger().warning("health_check_reply_failed", check_id=check_id, error=str(exc))
    finally:
        await world.ack([wakeup])


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
            result["healthy"] = True
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    result["latencyMs"] = max(0.001, round((time.perf_counter() - started) * 1000, 3))
    return result


async def _round_trip(channel: ReplyChannel, timeout: float) -> str | None:
    check_id = new_id("hc")
    await channel.enqueue_health_check(check_id)
    return await channel.pop_reply("", check_id, max(0.01, timeout))


async def check_health(
    world: World | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """Both endpoints at once: ``{"allHealthy": bool, "results": [...]}`` (what ``wf health`` prints)."""
    results = await asyncio.gather(
        *(health_check(e, world=world, timeout=timeout) for e in ENDPOINTS)
    )
    return {"allHealthy": all(r["healthy"] for r in results), "results": list(results)}


def http_health_message(path: str) -> str:
    """The body of a ``?__health`` answer (SPEC 4.9)."""
    return f'Workflow DevKit "{path}" endpoint is healthy'
