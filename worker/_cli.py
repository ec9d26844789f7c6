"""The ``wf`` command: run workers, start, inspect and cancel runs, serve HTTP, check health, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import json
import os
import signal
import sys
from datetime import UTC, datetime
from typing import Any

from . import _serde
from ._client import get_run, get_world, start
from ._deployments import (
    InvalidDeploymentIdError,
    MigrateError,
    UnknownDeploymentError,
    base_queue,
    check_deployment_id,
    deployment_store,
    lane_deployment,
    live_window_ms,
    migrate_run,
)
from ._errors import (
    DecryptionError,
    EncryptionKeyError,
    PartitionCountMismatchError,
    RunNotFoundError,
    WorkflowNameError,
)
from ._logging import configure
from ._pool_world import InvalidQueueNameError, parse_queues, pool_queues
from ._registry import get_workflow, resolve_workflow_name
from ._supervisor import DutyFailedError
from ._worker import Worker, WorkerConfig


def _import_modules(modules: list[str]) -> None:
    sys.path.insert(0, os.getcwd())
    for name in modules:
        importlib.import_module(name)


async def _run_worker(args: argparse.Namespace) -> None:
    # a worker allocates many short-lived objects per step: collect the young generation less
    # often, and keep the objects of imported modules out of every collection
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    config = WorkerConfig(
        concurrency=args.concurrency,
        health_host=args.health_host,
        health_port=args.health_port,
        queues=args.queues,
        deployment=args.deployment,
    )
    worker = Worker(get_world(), config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    except DutyFailedError as exc:
        # logged by the worker: exit non-zero so that the orchestrator replaces this process
        raise SystemExit(f"wf worker: {exc}") from None


INVALID = "<invalid>"


def _ts(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def _short(text: str | None, width: int = 60) -> str:
    text = "" if text is None else text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _valid(run: Any, field: str, text: str) -> str:
    """``text`` for a cell of ``field``, or ``<invalid>`` when the run's stored field is corrupt."""
    return INVALID if field in run.corrupt_fields else text


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


async def print_events(run_id: str) -> None:
    events = await get_run(run_id).events()
    rows = []
    for ev in events:
        payload = " ".join(
            f"{k}={_exception_summary(v) if k == 'error' else v}"
            for k, v in _struct_fields(ev).items()
            if k not in ("seq", "id", "ts", "corr", "seed")  # the seed keys hook tokens: not shown
        )
        rows.append(
            [
                str(ev.seq),
                _ts(ev.ts),
                str(ev.__struct_config__.tag),
                ev.corr or "-",
                _short(payload, 70),
            ]
        )
    print_table(rows, ["seq", "time", "event", "correlation id", "data"])


def _exception_summary(text: str) -> str:
    """``Type: message`` of a serialized error, for one table cell."""
    try:
        value = _serde.loads(text)
    except Exception:
        return text
    if isinstance(value, BaseException):
        return f"{getattr(value, 'type_name', type(value).__name__)}: {value}"
    return text


def _struct_fields(ev: Any) -> dict[str, Any]:
    return {f: getattr(ev, f) for f in ev.__struct_fields__}


async def _demo(args: argparse.Namespace) -> None:
    """Run the example with an in-process worker; print the result and the event log."""
    _import_modules([args.module])
    mod = sys.modules[args.module]
    wf = get_workflow(mod.DEMO_WORKFLOW)
    demo_args = getattr(mod, "DEMO_ARGS", [])
    worker = Worker(get_world(), WorkerConfig(concurrency=10))
    task = asyncio.create_task(worker.run())
    try:
        run = await start(wf, *demo_args)
        print(f"started {wf.name} as {run.run_id}")
        result = await run.result(timeout=60)
        print(f"result: {result!r}\n")
        await print_events(run.run_id)
        print()
        steps = await run.steps()
        print_table(
            [[s.step_id, s.name, s.status, str(s.attempt), _short(s.output, 30)] for s in steps],
            ["step id", "name", "status", "attempt", "output"],
        )
    finally:
        worker.stop()
        await task


async def _start(args: argparse.Namespace) -> None:
    _import_modules(args.import_ or [])
    # with modules imported, a short name stands for the one workflow it names; without any, the
    # name is passed as it is (a workflow defined only in the workers' code)
    name = resolve_workflow_name(args.workflow) if args.import_ else args.workflow
    values = [json.loads(a) for a in args.args]
    run = await start(name, *values, run_id=args.run_id, deployment_id=args.deployment)
    print(run.run_id)
    if args.wait:
        print(
            json.dumps(
                _serde.loads(_serde.dumps(await run.result(timeout=args.timeout))), default=str
            )
        )


async def _inspect(args: argparse.Namespace) -> None:
    world = get_world()
    if args.what == "runs":
        runs, cursor = await world.list_runs(
            status=args.status, workflow=args.workflow, limit=args.limit, cursor=args.cursor
        )
        if args.json:
            print(json.dumps([_struct_fields(r) for r in runs]))
            return
        print_table(
            [
                [
                    r.run_id,
                    _valid(r, "workflow", r.workflow),
                    _valid(r, "status", r.status),
                    _valid(r, "created_at", _ts(r.created_at)),
                    _valid(r, "completed_at", _ts(r.completed_at)),
                    _valid(r, "output", _short(r.output, 30)),
                ]
                for r in runs
            ],
            ["run id", "workflow", "status", "created", "completed", "output"],
        )
        bad = [r for r in runs if r.corrupt_fields]
        if bad:
            print()
        for r in bad:
            print(f"{r.run_id}: invalid {', '.join(r.corrupt_fields)} (stored value unreadable)")
        if cursor:
            print(f"\nmore: --cursor {cursor}")
    elif args.what == "run":
        info = await get_run(args.id).info()
        shown = _struct_fields(info)
        if info.status in ("pending", "running"):
            shown["waiting_on"] = await _waiting_on(world, args.id)
            shown.update(await _deployment_state(world, info.deployment))
        print(json.dumps(shown, indent=2))
    elif args.what == "queues":
        await _inspect_queues(world, args.json)
    elif args.what == "deployments":
        await _inspect_deployments(world, args.json)
    elif args.what == "events":
        if args.json:
            events = await get_run(args.id).events()
            print(
                json.dumps([{"type": e.__struct_config__.tag, **_struct_fields(e)} for e in events])
            )
        else:
            await print_events(args.id)
    elif args.what == "steps":
        steps = await get_run(args.id).steps()
        if args.json:
            print(json.dumps([_struct_fields(s) for s in steps]))
            return
        print_table(
            [[s.step_id, s.name, s.status, str(s.attempt), _short(s.output, 30)] for s in steps],
            ["step id", "name", "status", "attempt", "output"],
        )
    elif args.what == "hooks":
        hooks = await world.list_hooks(args.id)
        if args.json:
            print(json.dumps([{"hook_id": h, "token": t, "metadata": m} for h, t, m in hooks]))
            return
        print_table([[h, t, _short(m, 40)] for h, t, m in hooks], ["hook id", "token", "metadata"])
    elif args.what == "streams":
        names = await world.streams.list_streams(args.id)
        print(json.dumps(names) if args.json else "\n".join(names))


async def _waiting_on(world: Any, run_id: str) -> list[dict[str, Any]]:
    """The run's steps waiting in (or running from) a queue other than default, with the lag
    and pending count of that queue's stream in the run's partition."""
    pools = pool_queues(world)
    waiting = await pools.waiting_on(run_id)
    if not waiting:
        return []
    stats = {(s.queue, s.partition): s for s in await pools.queue_stats()}
    out = []
    for step_id, queue, partition in waiting:
        # a lane (``gpu@dpl_x``) shown as its queue and the deployment whose workers serve it
        row: dict[str, Any] = {
            "step_id": step_id,
            "queue": base_queue(queue),
            "deployment": lane_deployment(queue),
            "partition": partition,
        }
        s = stats.get((queue, partition))
        if s is not None:
            row.update(lag=s.lag, pending=s.pending, oldest_age_ms=s.oldest_age_ms)
        out.append(row)
    return out


async def _deployment_state(world: Any, deployment: str) -> dict[str, Any]:
    """Whether an active run's deployment has a live worker: if not, the run waits for one."""
    if not deployment:  # pinned by the first worker that takes it
        return {"deployment_live": None, "waiting_for_deployment": False}
    known = await deployment_store(world).registry(live_window_ms())
    live = any(d.deployment_id == deployment and d.live for d in known)
    return {"deployment_live": live, "waiting_for_deployment": not live}


async def _inspect_deployments(world: Any, as_json: bool) -> None:
    stats = await deployment_store(world).stats(live_window_ms())
    if as_json:
        print(json.dumps([_struct_fields(s) for s in stats]))
        return
    print_table(
        [
            [
                s.deployment_id,
                "live" if s.live else "gone",
                str(len(s.workers)),
                _short(",".join(s.workflows), 40) or "-",
                str(s.runs_pinned),
                str(s.waiting),
                str(s.pending),
                _ts(s.first_seen_ms),
                _ts(s.last_seen_ms),
            ]
            for s in stats
        ],
        [
            "deployment",
            "state",
            "workers",
            "workflows",
            "runs pinned",
            "waiting",
            "pending",
            "first seen",
            "last seen",
        ],
    )


async def _runs(args: argparse.Namespace) -> None:
    """``wf runs migrate RUN --to ID``: pin a run to another deployment and wake it there."""
    previous = await migrate_run(get_world(), args.run_id, args.to)
    print(f"migrated {args.run_id} from {previous or '(unpinned)'} to {args.to}")


async def _inspect_queues(world: Any, as_json: bool) -> None:
    stats = await pool_queues(world).queue_stats()
    if as_json:
        shown = [
            {
                **_struct_fields(s),
                "queue": base_queue(s.queue),
                "deployment": lane_deployment(s.queue),
            }
            for s in stats
        ]
        print(json.dumps(shown))
        return

    def age(ms: int | None) -> str:
        return "-" if ms is None else f"{ms / 1000:.1f}s"

    rows = [
        [str(s.partition), base_queue(s.queue), lane_deployment(s.queue) or "-", str(s.length)]
        for s in stats
    ]
    print_table(
        [
            [*row, str(s.lag), str(s.pending), age(s.oldest_age_ms)]
            for row, s in zip(rows, stats, strict=True)
        ],
        ["partition", "queue", "deployment", "length", "lag", "pending", "oldest"],
    )


async def _cancel(args: argparse.Namespace) -> None:
    await get_run(args.run_id).cancel()
    print(f"cancelled {args.run_id}")


async def _serve(args: argparse.Namespace) -> None:
    """Serve the HTTP app (webhooks, run and hook API, health) with uvicorn."""
    import uvicorn

    from ._http import UnsafeBindError, check_bind, create_app

    token = os.environ.get("WORKFLOW_HTTP_TOKEN") or None
    try:
        check_bind(args.host, token=token, allow_unauthenticated=args.allow_unauthenticated)
    except UnsafeBindError as exc:
        print(f"wf serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _import_modules(args.modules)
    level = os.environ.get("WORKFLOW_LOG_LEVEL", "info").lower()
    config = uvicorn.Config(create_app(), host=args.host, port=args.port, log_level=level)
    await uvicorn.Server(config).serve()


async def _health(args: argparse.Namespace) -> None:
    """Check through the queue that a live worker answers; exit code 1 when none does."""
    from ._health import check_health

    report = await check_health(get_world(), timeout=args.timeout)
    if args.json:
        print(json.dumps(report))
    else:
        for r in report["results"]:
            state = "healthy" if r["healthy"] else "UNHEALTHY"
            print(f"{r['endpoint']:<9} {state:<9} {r['latencyMs']:9.1f} ms  {r.get('error', '')}")
        for w in report["workers"]:
            state = "healthy" if w.get("healthy") else "UNHEALTHY"
            quiet = ", ".join(w.get("stale", []))
            detail = f"duties not succeeding: {quiet}" if quiet else ""
            print(f"worker {w.get('worker', '?')}  {state}  held {w.get('held', '?')}  {detail}")
        parts = report["partitions"]
        print(f"partitions {parts['count']}  pending {parts['pending']}  lag {parts['lag']}")
        for bad in parts["unreachable"]:
            print(f"partition {bad['partition']}  UNREACHABLE  {bad['error']}")
    if not report["allHealthy"]:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wf", description="Durable workflows on Redis Streams")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="process runs of the workflows defined in MODULEs")
    p.add_argument("modules", nargs="+")
    p.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("WORKFLOW_CONCURRENCY", "100"))
    )
    health_port = os.environ.get("WORKFLOW_HEALTH_PORT")
    p.add_argument(
        "--health-port",
        type=int,
        default=int(health_port) if health_port else None,
        help="serve GET /healthz (200 healthy, 503 a duty has gone quiet) on this port",
    )
    p.add_argument(
        "--health-host",
        default=os.environ.get("WORKFLOW_HEALTH_HOST", "127.0.0.1"),
        help="address of the health endpoint (default loopback)",
    )
    p.add_argument(
        "--queues",
        action="append",
        help="queues to serve, comma-separated (default: 'default', or WORKFLOW_QUEUES): "
        "'default' replays runs; any other name runs the steps declared with @step(queue=...)",
    )
    p.add_argument(
        "--deployment",
        default=os.environ.get("WORKFLOW_DEPLOYMENT_ID") or None,
        help="the deployment id of this worker (default WORKFLOW_DEPLOYMENT_ID, else dpl_ + a "
        "hash of the source of the imported workflow modules): runs pinned to it run here only",
    )

    p = sub.add_parser("demo", help="run an example workflow with an in-process worker")
    p.add_argument("module", nargs="?", default="examples.order")

    p = sub.add_parser("start", help="start a run; prints its id")
    p.add_argument("workflow")
    p.add_argument("args", nargs="*", help="JSON values, one per argument")
    p.add_argument("--import", dest="import_", action="append", help="module defining the workflow")
    p.add_argument("--run-id")
    p.add_argument("--deployment", help="pin the run to this deployment id")
    p.add_argument("--wait", action="store_true")
    p.add_argument("--timeout", type=float, default=60)

    p = sub.add_parser(
        "inspect", aliases=["i"], help="list runs, or show a run's events, steps, hooks or streams"
    )
    p.add_argument(
        "what",
        choices=["runs", "run", "events", "steps", "hooks", "streams", "queues", "deployments"],
    )
    p.add_argument("id", nargs="?")
    p.add_argument("--status")
    p.add_argument("--workflow")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("runs", help="act on runs: migrate RUN --to DEPLOYMENT")
    runs = p.add_subparsers(dest="action", required=True)
    m = runs.add_parser("migrate", help="pin a run to another deployment and wake it there")
    m.add_argument("run_id")
    m.add_argument("--to", required=True, help="the deployment id to move the run to")

    p = sub.add_parser("cancel", help="cancel a run")
    p.add_argument("run_id")

    p = sub.add_parser("serve", help="serve webhooks, the run and hook API and health over HTTP")
    p.add_argument("modules", nargs="*", help="modules defining workflows (checks start arguments)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8787)
    p.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve the API beyond loopback without WORKFLOW_HTTP_TOKEN (a proxy authenticates)",
    )

    p = sub.add_parser("health", help="check through the queue that workers answer")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    p.add_argument("--json", action="store_true")

    args = parser.parse_args(argv)
    if args.command == "worker":
        try:
            args.queues = parse_queues(
                args.queues or os.environ.get("WORKFLOW_QUEUES") or "default"
            )
        except InvalidQueueNameError as exc:
            parser.error(f"--queues: {exc}")  # exit code 2, with the usage line
        try:
            if args.deployment is not None:
                check_deployment_id(args.deployment)
        except InvalidDeploymentIdError as exc:
            parser.error(f"--deployment: {exc}")
    if args.command == "runs":
        try:
            check_deployment_id(args.to)
        except InvalidDeploymentIdError as exc:
            parser.error(f"--to: {exc}")
    configure()
    handlers = {
        "worker": _run_worker,
        "demo": _demo,
        "start": _start,
        "inspect": _inspect,
        "i": _inspect,
        "cancel": _cancel,
        "runs": _runs,
        "serve": _serve,
        "health": _health,
    }
    if args.command == "worker":
        _import_modules(args.modules)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(handlers[args.command](args))
    except (
        UnknownDeploymentError,
        InvalidDeploymentIdError,
        MigrateError,
        RunNotFoundError,
        WorkflowNameError,
    ) as exc:
        print(f"wf {args.command}: {exc}", file=sys.stderr)
        sys.exit(1)
    except (EncryptionKeyError, PartitionCountMismatchError) as exc:
        # configuration, not a crash: say what to fix
        print(f"wf {args.command}: {exc}", file=sys.stderr)
        sys.exit(2)
    except DecryptionError as exc:  # stored data this process has no key for
        print(f"wf {args.command}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
