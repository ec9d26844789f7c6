"""The worker duty that compacts finished runs (``WORKFLOW_COMPACT_AFTER_S``).

A World that can compact (``world_redis.RedisWorld``: one compressed value per finished run in
place of its event stream) offers ``compact_finished``; the duty calls it in rounds, each taking
the runs finished more than the configured time ago, partition by partition, from where the last
round (of any worker) left off. What compaction keeps and why: world_redis/_compact.py.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ._errors import WorkflowError
from ._supervisor import Duty, DutyBody
from ._world import World

if TYPE_CHECKING:
    from ._worker import Worker

COMPACT_ENV = "WORKFLOW_COMPACT_AFTER_S"
DEFAULT_COMPACT_AFTER_S = 300.0
BATCH = 200  # runs per partition and round
MAX_PAUSE_S = 10.0


@runtime_checkable
class Compacting(Protocol):
    """A World that compacts finished runs."""

    async def compact_finished(
        self, older_than_ms: int, batch: int = BATCH, owner: str = ""
    ) -> int: ...


def compact_after_s(raw: str | None) -> float | None:
    """``WORKFLOW_COMPACT_AFTER_S`` as seconds; None (compaction off) for ``off`` or a negative
    number; the default when unset or empty. WorkflowError for any other text."""
    text = (raw or "").strip().lower()
    if not text:
        return DEFAULT_COMPACT_AFTER_S
    if text == "off":
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise WorkflowError(
            f"{COMPACT_ENV}={raw!r}: expected seconds (0: as soon as runs finish) or 'off'"
        ) from None
    return None if seconds < 0 else seconds


def compactor_duty(world: World, owner: str) -> DutyBody | None:
    """The duty's body for ``world`` as configured now (``owner``: the worker's name, in the
    partitions' compaction locks); None when compaction is off or the World cannot compact."""
    after_s = compact_after_s(os.environ.get(COMPACT_ENV))
    if after_s is None or not isinstance(world, Compacting):
        return None
    compacting: Compacting = world
    # a run becomes due after_s after it finished: looking ten times per after_s is often enough
    pause_s = min(MAX_PAUSE_S, max(0.5, after_s / 10))

    async def body(duty: Duty) -> None:
        while True:
            done = await compacting.compact_finished(int(after_s * 1000), BATCH, owner)
            duty.ok()
            if done < BATCH:  # a full round: more may be due at once
                await asyncio.sleep(pause_s)

    return body


def add_compactor(worker: Worker) -> None:
    """Register the compaction duty with ``worker``'s supervisor, when it applies."""
    body = compactor_duty(worker.world, worker.name)
    if body is not None:
        quiet_s = max(worker.config.duty_quiet_s, 2 * MAX_PAUSE_S)
        worker.supervisor.add("compactor", body, stale_after_s=quiet_s)
