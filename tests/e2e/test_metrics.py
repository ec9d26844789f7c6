"""Prometheus metrics as an operator scrapes them: a real `wf worker --metrics-port` process and
`wf serve`'s /metrics, read over HTTP and parsed with prometheus-client's own parser."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import workflows as w
from tests.support import eventually, free_port
from worker import start
from worker._http import create_app
from world_redis import RedisWorld

MODULE = "tests.e2e.workflows"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def total(found: dict[Any, float], name: str, **labels: str) -> float:
    """The sum over every partition (and other labels not given) of ``name``'s samples."""
    return sum(
        v for (n, have), v in found.items() if n == name and set(labels.items()) <= set(have)
    )


async def scrape(url: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url, headers=headers, timeout=10)


async def test_a_worker_counts_steps_runs_and_exposes_what_redis_holds(
    world: RedisWorld, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """After a run whose step failed twice and then succeeded, the worker's /metrics counts two
    retries and one completion of that step, one completed run, their durations, the held runs,
    and the queue and partition gauges read from Redis."""
    port = free_port()
    start_worker(MODULE, WORKFLOW_METRICS_PORT=str(port))
    run = await start(w.retry_attempt_counter)
    assert await run.result(timeout=30) == {"finalAttempt": 3}
    url = f"http://127.0.0.1:{port}/metrics"
    text = (await eventually(lambda: scrape_ok(url), what="the metrics endpoint answers")).text
    found = samples(text)
    step = "tests.e2e.workflows:fail_twice"
    assert value(found, "workflow_steps_total", step=step, status="retrying") == 2
    assert value(found, "workflow_steps_total", step=step, status="completed") == 1
    assert value(found, "workflow_step_duration_seconds_count", step=step) == 3
    flow = "retry_attempt_counter"
    assert value(found, "workflow_runs_total", workflow=flow, status="completed") == 1
    assert value(found, "workflow_run_duration_seconds_count", workflow=flow) == 1
    assert value(found, "workflow_commit_duration_seconds_count") >= 3  # type: ignore[operator]
    assert value(found, "workflow_held_runs") == 0
    assert total(found, "workflow_runs", status="completed") == 1
    assert total(found, "workflow_dead_letters") == 0
    assert total(found, "workflow_timers_due") == 0
    assert total(found, "workflow_queue_lag", queue="default", deployment="") == 0
    partitions = {dict(labels)["partition"] for n, labels in found if n == "workflow_runs"}
    assert len(partitions) == world.keys.partitions  # one series per partition
    assert not any("wrun_" in str(labels) for _, labels in found)  # no run ids in labels


async def scrape_ok(url: str) -> httpx.Response | None:
    try:
        response = await scrape(url)
    except httpx.TransportError:
        return None
    return response if response.status_code == 200 else None


async def test_the_http_app_serves_redis_gauges_behind_its_token(world: RedisWorld) -> None:
    """`wf serve`'s app answers /metrics with the Redis gauges, and only with its bearer token
    when it has one."""
    await start(w.sleep_then_step, 3600, world=world)
    app = create_app(world, token="s3cret")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        answered = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert answered.status_code == 200
    found = samples(answered.text)
    assert total(found, "workflow_runs", status="pending") == 1
