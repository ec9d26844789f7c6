"""The retry boundary: which Redis errors are passing states worth repeating a call for."""

from __future__ import annotations

import pytest
from redis import exceptions as rexc

from worker.world import WorldUnavailableError
from world_redis._retry import with_retry


def failing(errors: list[BaseException]) -> object:
    """A call that raises ``errors`` one by one, then answers "done"; ``calls`` counts its calls."""
    calls = []

    async def call() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "done"

    call.calls = calls  # type: ignore[attr-defined]
    return call


@pytest.mark.parametrize(
    "error",
    [
        rexc.MovedError("3999 127.0.0.1:7001"),
        rexc.AskError("3999 127.0.0.1:7001"),
        rexc.TryAgainError(),
        rexc.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rexc.MasterDownError("MASTERDOWN Link with MASTER is down"),
        rexc.SlotNotCoveredError("slot 3999 is not covered"),
        rexc.ClusterError("TTL exhausted."),
        rexc.ConnectionError("refused"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_cluster_states_and_connection_errors_are_retried(error: BaseException) -> None:
    """A cluster in passing (MOVED/ASK past redis-py's redirections, TRYAGAIN, CLUSTERDOWN...) is retried like a lost connection."""
    call = failing([error, error])
    assert await with_retry(call) == "done"  # type: ignore[arg-type]
    assert len(call.calls) == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "error",
    [
        rexc.ResponseError("CROSSSLOT Keys in request don't hash to the same slot"),
        rexc.RedisClusterException("Keys in request don't hash to the same slot"),
        rexc.NoScriptError("NOSCRIPT"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_logic_errors_are_not_retried(error: BaseException) -> None:
    """CROSSSLOT (a bug no retry mends) and other logic errors surface at once."""
    call = failing([error])
    with pytest.raises(type(error)):
        await with_retry(call)  # type: ignore[arg-type]
    assert len(call.calls) == 1  # type: ignore[attr-defined]


async def test_retries_end_with_world_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster that stays down past WORKFLOW_REDIS_RETRY_SECONDS gives WorldUnavailableError."""
    monkeypatch.setenv("WORKFLOW_REDIS_RETRY_SECONDS", "0.2")
    call = failing([rexc.ClusterDownError("CLUSTERDOWN")] * 1000)
    with pytest.raises(WorldUnavailableError, match="CLUSTERDOWN"):
        await with_retry(call)  # type: ignore[arg-type]
