"""What a World offers worker pools: queue names, pool tasks, and the protocol of their storage.

A step declared with ``@step(queue="gpu")`` runs only on workers that serve the queue ``gpu``
(``wf worker ... --queues gpu``); a workflow declared with ``@workflow(queue="q")`` is replayed
only by workers serving ``q``. ``default`` is the queue of workflows and steps without one.
The run's holder hands such a step to its queue as a *pool task* ("run R's step S is due"); a
pool worker takes the task, executes one attempt and commits its outcome under a step-level
claim (see ``worker/_pools.py`` for the flow and ``world_redis/_pools.py`` for the Redis side).

Pool storage is not part of the core World protocol: a World offers it through an attribute
``pools`` that implements :class:`PoolQueues` (``RedisWorld`` does).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol, runtime_checkable

import msgspec

from ._errors import WorkflowError
from ._world import Wakeup

DEFAULT_QUEUE = "default"
_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

RouteCode = Literal["queued", "exists", "running", "done", "too_early", "not_found", "terminal"]


class InvalidQueueNameError(WorkflowError, ValueError):
    """A queue name that is not 1-64 letters, digits, ``_``, ``.`` or ``-`` (starting with a
    letter or digit): it becomes part of a Redis key and of a command-line list."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"invalid queue name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (e.g. 'gpu', 'io-bound')"
        )
        self.name = name


def check_queue(name: str) -> str:
    """``name`` when it is a valid queue name, else InvalidQueueNameError."""
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise InvalidQueueNameError(str(name))
    return name


def parse_queues(text: str | Iterable[str]) -> tuple[str, ...]:
    """The queues of ``--queues a,b`` (or of several such values), checked, in order, no repeats.

    An empty list is an error too: a worker serving nothing would sit idle without a word."""
    parts = [text] if isinstance(text, str) else list(text)
    names: list[str] = []
    for part in parts:
        for name in part.split(","):
            name = name.strip()
            if name not in names:
                names.append(check_queue(name))
    return tuple(names)


class PoolTask(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a queue's stream: "step ``step_id`` of run ``run_id`` is due".

    ``queue`` and ``partition`` name the stream, ``message_id`` the entry (the step's claim is
    bound to it), ``deliveries`` how often it was handed to a pool worker, this time included.
    """

    queue: str
    partition: int
    message_id: str
    run_id: str
    step_id: str
    step_name: str = ""
    deliveries: int = 1
    band: str = ""  # the priority band of the stream ("hi", "" or "lo": world_redis/_keys.py)


class QueueStats(msgspec.Struct, frozen=True, kw_only=True):
    """One queue stream of one partition, as ``wf inspect queues`` shows it.

    ``lag``: entries no pool worker has read yet; ``pending``: read and not yet acknowledged
    (being executed, or held by a worker that died and will be reclaimed); ``oldest_age_ms``:
    age of the oldest entry still in the stream (None when empty)."""

    partition: int
    queue: str
    length: int
    lag: int
    pending: int
    oldest_age_ms: int | None = None


@runtime_checkable
class PoolQueues(Protocol):
    """The storage of worker pools: queue streams per partition, read through consumer groups."""

    @property
    def partitions(self) -> int:
        """The partition count: each queue has one stream per partition."""
        ...

    async def ensure_queue_groups(self, queues: Sequence[str]) -> None: ...
    async def route_steps(
        self, run_id: str, steps: Sequence[tuple[str, str, str]], priority: int = 0
    ) -> list[RouteCode]: ...
    async def read_queues(
        self, consumer: str, queues: Sequence[str], count: int, block_ms: int
    ) -> list[PoolTask | Wakeup]:
        """At most ``count`` new entries of the streams of ``queues`` over every partition."""
        ...

    async def read_tasks(
        self, consumer: str, queue: str, partition: int, count: int, block_ms: int
    ) -> list[PoolTask | Wakeup]:
        """New entries of one queue stream: step tasks, and wake-ups of runs of workflows
        declared with the queue (forwarded there by ``forward_wakeup``)."""
        ...

    async def reclaim_tasks(
        self, consumer: str, queue: str, partition: int, min_idle_ms: int, count: int
    ) -> list[PoolTask | Wakeup]: ...
    async def forward_wakeup(self, wakeup: Wakeup, queue: str) -> None: ...
    async def heartbeat_tasks(self, consumer: str, tasks: Sequence[PoolTask]) -> None: ...
    async def ack_tasks(self, tasks: Sequence[PoolTask]) -> None: ...
    async def dead_letter_task(self, task: PoolTask, reason: str) -> None: ...
    async def queue_stats(self) -> list[QueueStats]: ...
    async def waiting_on(self, run_id: str) -> list[tuple[str, str, int]]:
        """(step id, queue, partition) of the run's steps handed to a queue, not finished."""
        ...


def pool_queues(world: object) -> PoolQueues:
    """The pool storage of ``world``; WorkflowError when its class offers none."""
    pools = getattr(world, "pools", None)
    if not isinstance(pools, PoolQueues):
        raise WorkflowError(
            f"{type(world).__name__} has no worker pools (steps with a queue other than "
            f"{DEFAULT_QUEUE!r} cannot run on it)"
        )
    return pools
