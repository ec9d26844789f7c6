"""Retries of Redis connection errors, in one place.

Only connection-level failures (refused, reset, timeout, Redis loading its dataset) and a Redis
Cluster's passing states (a slot moving or migrating: ``MOVED``/``ASK`` past redis-py's own
redirections, ``TRYAGAIN``, ``CLUSTERDOWN``, a master down, a slot not covered yet during a
failover) are retried, with
exponential backoff capped at 2 s, for up to ``WORKFLOW_REDIS_RETRY_SECONDS`` (default 30 s). The
trade-off: a worker rides out a Redis restart or failover without losing its place, at the price of
stalling for that long before it reports ``WorldUnavailableError``. Every engine write is idempotent
or fenced (explicit stream ids, lease tokens), so repeating a call whose reply was lost is safe: the
repeat answers "exists"/"conflict" and the caller re-reads. Logic errors (a refused transition, a bad
script) are never retried here; step retries are events, never loops.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis import exceptions as rexc
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_delay,
    wait_exponential,
)

from worker.world import ReplicaAckTimeoutError, WorldUnavailableError

T = TypeVar("T")

RETRYABLE = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    # a Redis Cluster while its topology changes; never CROSSSLOT, a bug that no retry mends.
    # ClusterError itself is what redis-py raises when its redirections run out (MOVED/ASK)
    rexc.ClusterError,
    rexc.AskError,  # MovedError too
    rexc.TryAgainError,
    rexc.SlotNotCoveredError,
    ConnectionError,
    OSError,
)


def _budget() -> float:
    return float(os.environ.get("WORKFLOW_REDIS_RETRY_SECONDS", "30"))


async def with_retry(call: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run ``call(*args, **kwargs)``; retry connection errors; WorldUnavailableError at the end."""
    try:
        return await call(*args, **kwargs)  # the common case, without the retry machinery
    except ReplicaAckTimeoutError:
        raise  # Redis answered: the write is there, its replicas are behind (see _core.py)
    except RETRYABLE:
        pass
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(RETRYABLE)
            & retry_if_not_exception_type(ReplicaAckTimeoutError),
            wait=wait_exponential(multiplier=0.05, max=2.0),
            stop=stop_after_delay(_budget()),
            reraise=True,
        ):
            with attempt:
                return await call(*args, **kwargs)
    except ReplicaAckTimeoutError:
        raise
    except RETRYABLE as exc:
        raise WorldUnavailableError(f"Redis unavailable: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover
