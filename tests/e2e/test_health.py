"""Health checks: the HTTP `?__health` answer, and `wf health` through the queue itself."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from tests.e2e.test_http import API, serving
from tests.support import WF, RedisServer
from worker import check_health
from world_redis import RedisWorld


async def wf_health(env: dict[str, str], timeout: float) -> tuple[int, dict[str, Any]]:
    """Run `wf health --json` as a subprocess; its exit code and report."""
    proc = await asyncio.create_subprocess_exec(
        WF, "health", "--json", "--timeout", str(timeout), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout + 20)
    assert proc.returncode is not None, err
    return proc.returncode, json.loads(out)


async def test_http_health(world: RedisWorld, redis_server: RedisServer, prefix: str) -> None:
    """`?__health` on workflow routes → 200 text/plain with the exact message (OPTIONS → 204)."""
    with serving(redis_server, prefix, token="secret") as base:
        async with httpx.AsyncClient(base_url=base) as client:
            for path in (f"{API}/flow", f"{API}/step", f"{API}/webhook/some-token", f"{API}/runs"):
                res = await client.get(f"{path}?__health")
                assert res.status_code == 200, path
                assert res.headers["content-type"].startswith("text/plain")
                assert res.text == f'Workflow DevKit "{path}" endpoint is healthy'
            res = await client.options(f"{API}/flow?__health")
            assert res.status_code == 204
            assert (await client.get(f"{API}/flow")).status_code == 404


async def test_wf_health_with_worker(  # type: ignore[no-untyped-def]
    world: RedisWorld, worker_env: dict[str, str], start_worker
) -> None:
    """`wf health --json` with a worker running: both endpoints healthy, latencyMs > 0."""
    start_worker("tests.e2e.webhook_workflows")
    code, report = await wf_health(worker_env, 10)
    assert code == 0 and report["allHealthy"] is True
    assert [r["endpoint"] for r in report["results"]] == ["workflow", "step"]
    assert all(r["healthy"] is True and r["latencyMs"] > 0 for r in report["results"])
    again = await check_health(world, timeout=10)
    assert again["allHealthy"] is True


async def test_wf_health_without_worker(world: RedisWorld, worker_env: dict[str, str]) -> None:
    """With no worker consuming the queue, `wf health` reports unhealthy and exits 1 in time."""
    started = time.monotonic()
    code, report = await wf_health(worker_env, 1)
    assert code == 1 and report["allHealthy"] is False
    assert all(not r["healthy"] and "no worker" in r["error"] for r in report["results"])
    assert time.monotonic() - started < 10
