"""Prometheus metrics: a worker's own (``wf worker --metrics-port N``) and what Redis holds
(``/metrics`` of the worker and of ``wf serve``), with prometheus-client.

A worker counts what it does: runs it finished, steps it ran (by outcome), how long steps, runs
and commits took, and the runs it holds. Gauges read from Redis (queue lag and pending entries,
timers due, dead letters, runs per status) are read when scraped, at most every
``REDIS_CACHE_S`` seconds. Labels are workflow and step names, queue names, deployment ids,
partitions and statuses: bounded by the code and the configuration, never a run id.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._client import get_world
from ._deployments import base_queue, lane_deployment
from ._pool_world import pool_queues

REDIS_CACHE_S = 5.0
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)
RUN_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 21600.0, 86400.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
STEP_STATUS = {"step_completed": "completed", "step_failed": "failed", "step_retrying": "retrying"}


class RedisGauges(Collector):
    """Gauges of what Redis holds, from a snapshot refreshed when older than REDIS_CACHE_S."""

    def __init__(self, world: Any | None) -> None:
        self.world = world  # None: the process's world (get_world()) when read
        self.queues: list[Any] = []
        self.partitions: list[Any] = []
        self.read_at = float("-inf")

    async def refresh(self) -> None:
        if time.monotonic() - self.read_at < REDIS_CACHE_S:
            return
        world = self.world if self.world is not None else get_world()
        self.queues = await pool_queues(world).queue_stats()
        gauges = getattr(world, "gauges", None)
        self.partitions = await gauges.partition_gauges() if gauges is not None else []
        self.read_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        labels = ["partition", "queue", "deployment"]
        lag = GaugeMetricFamily(
            "workflow_queue_lag", "Entries of a queue stream no worker has read yet", labels=labels
        )
        pending = GaugeMetricFamily(
            "workflow_queue_pending",
            "Entries of a queue stream read and not acknowledged yet (being processed, or held "
            "by a dead worker until reclaimed)",
            labels=labels,
        )
        for q in self.queues:
            values = [str(q.partition), base_queue(q.queue), lane_deployment(q.queue)]
            lag.add_metric(values, q.lag)
            pending.add_metric(values, q.pending)
        due = GaugeMetricFamily(
            "workflow_timers_due",
            "Durable sleeps and retry delays whose time has come, not yet handed to a worker",
            labels=["partition"],
        )
        dead = GaugeMetricFamily(
            "workflow_dead_letters", "Entries of the dead-letter stream", labels=["partition"]
        )
        runs = GaugeMetricFamily(
            "workflow_runs",
            "Runs in each status (finished ones until their retention ends)",
            labels=["partition", "status"],
        )
        for p in self.partitions:
            due.add_metric([str(p.partition)], p.timers_due)
            dead.add_metric([str(p.partition)], p.dead_letters)
            for status, count in p.runs.items():
                runs.add_metric([str(p.partition), status], count)
        yield from (lag, pending, due, dead, runs)


class WorkerMetrics:
    """What one worker process does (its registry also carries the Redis gauges)."""

    def __init__(self, world: Any, held: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.redis = RedisGauges(world)
        self.registry.register(self.redis)
        r = self.registry
        self.runs = Counter(
            "workflow_runs", "Runs this worker ended", ["workflow", "status"], registry=r
        )
        self.steps = Counter(
            "workflow_steps",
            "Step attempts this worker ran, by outcome",
            ["step", "status"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "workflow_step_duration_seconds",
            "Time a step attempt took",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.run_seconds = Histogram(
            "workflow_run_duration_seconds",
            "Time from a run's start to its end",
            ["workflow"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "workflow_commit_duration_seconds",
            "Time a batched commit took (one script call per partition)",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        held_runs = Gauge("workflow_held_runs", "Runs this worker holds", registry=r)
        held_runs.set_function(held)
        self._step_labels: dict[tuple[str, str], tuple[Any, Any]] = {}

    def step_done(self, step: str, event_type: str, seconds: float) -> None:
        key = (step, event_type)
        children = self._step_labels.get(key)
        if children is None:  # label lookups once per step name and outcome
            status = STEP_STATUS.get(event_type, event_type)
            children = (self.steps.labels(step, status), self.step_seconds.labels(step))
            self._step_labels[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def run_done(self, workflow: str, status: str, seconds: float) -> None:
        self.runs.labels(workflow, status).inc()
        self.run_seconds.labels(workflow).observe(max(0.0, seconds))

    def commit_done(self, seconds: float) -> None:
        self.commit_seconds.observe(seconds)


async def exposition(registry: CollectorRegistry, gauges: RedisGauges) -> bytes:
    """The registry in Prometheus's text format, the Redis gauges refreshed when stale."""
    await gauges.refresh()
    return generate_latest(registry)


def metrics_app(registry: CollectorRegistry, gauges: RedisGauges, token: str | None = None) -> Any:
    """A Starlette app answering ``GET /metrics``."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/metrics", metrics_endpoint(registry, gauges, token))])


def metrics_endpoint(
    registry: CollectorRegistry, gauges: RedisGauges, token: str | None = None
) -> Callable[[Any], Awaitable[Any]]:
    """The ``GET /metrics`` handler (behind ``Authorization: Bearer <token>`` when a token is
    given, as the HTTP API is)."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response

    async def metrics(request: Request) -> Response:
        given = request.headers.get("authorization", "")
        if token is not None and not hmac.compare_digest(given, f"Bearer {token}"):
            return PlainTextResponse("unauthorized", 401, headers={"WWW-Authenticate": "Bearer"})
        return Response(await exposition(registry, gauges), media_type=CONTENT_TYPE_LATEST)

    return metrics


def redis_metrics(world: Any | None = None) -> tuple[CollectorRegistry, RedisGauges]:
    """A registry of the Redis gauges alone (what ``wf serve`` exposes)."""
    registry = CollectorRegistry()
    gauges = RedisGauges(world)
    registry.register(gauges)
    return registry, gauges
