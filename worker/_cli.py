"""The ``wf`` command: run workers, start, inspect and cancel runs, serve HTTP, check health, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable

from ._cli_dev import dev_command
from ._cli_runs import CommandArgumentError, cancel_command, runs_command, start_command
from ._cli_schedule import add_parser as add_schedule_parser
from ._cli_schedule import schedule_command
from ._cli_show import inspect_command, print_events, print_table, short
from ._client import get_world, start
from ._deployments import (
    InvalidDeploymentIdError,
    check_deployment_id,
)
from ._dlq import dlq_command
from ._errors import (
    EncryptionKeyError,
    PartitionCountMismatchError,
    UnsafeBindError,
    WorkflowError,
)
from ._logging import configure
from ._pool_world import InvalidQueueNameError, parse_queues
from ._registry import get_workflow, import_workflow_modules
from ._supervisor import DutyFailedError
from ._worker import Worker, WorkerConfig


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (a dependency except on Windows): the worker's
    I/O and callbacks cost less there; asyncio's own loop otherwise. ``WORKFLOW_EVENT_LOOP=
    asyncio`` keeps asyncio's."""
    if os.environ.get("WORKFLOW_EVENT_LOOP", "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def tune_gc() -> None:
    """A worker allocates many short-lived objects per step: collect the young generation less
    often, and keep the objects of imported modules out of every collection."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _run_worker(args: argparse.Namespace) -> None:
    tune_gc()
    config = WorkerConfig(
        concurrency=args.concurrency,
        health_host=args.health_host,
        health_port=args.health_port,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
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


async def _demo(args: argparse.Namespace) -> None:
    """Run the example with an in-process worker; print the result and the event log."""
    import_workflow_modules([args.module])
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
            [[s.step_id, s.name, s.status, str(s.attempt), short(s.output, 30)] for s in steps],
            ["step id", "name", "status", "attempt", "output"],
        )
    finally:
        worker.stop()
        await task


async def _serve(args: argparse.Namespace) -> None:
    """Serve the HTTP app (webhooks, run and hook API, health) with uvicorn."""
    import uvicorn

    from ._http import check_bind, create_app

    token = os.environ.get("WORKFLOW_HTTP_TOKEN") or None
    try:
        check_bind(args.host, token=token, allow_unauthenticated=args.allow_unauthenticated)
    except UnsafeBindError as exc:
        print(f"wf serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    import_workflow_modules(args.modules)
    level = os.environ.get("WORKFLOW_LOG_LEVEL", "info").lower()
    config = uvicorn.Config(create_app(), host=args.host, port=args.port, log_level=level)
    await uvicorn.Server(config).serve()


async def _dashboard(args: argparse.Namespace) -> None:
    """Serve the web dashboard with uvicorn; beyond loopback only with WORKFLOW_HTTP_TOKEN."""
    import uvicorn

    from ._dashboard import create_dashboard_app
    from ._http import check_bind

    token = os.environ.get("WORKFLOW_HTTP_TOKEN") or None
    try:
        check_bind(args.host, token=token)
    except UnsafeBindError as exc:
        print(f"wf dashboard: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    level = os.environ.get("WORKFLOW_LOG_LEVEL", "info").lower()
    config = uvicorn.Config(create_dashboard_app(), host=args.host, port=args.port, log_level=level)
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


def add_endpoint_flags(p: argparse.ArgumentParser, name: str, port_help: str) -> None:
    """``--NAME-port`` and ``--NAME-host`` of a worker's HTTP endpoint, defaulting to
    ``WORKFLOW_NAME_PORT`` (none: not served) and ``WORKFLOW_NAME_HOST`` (loopback)."""
    env = f"WORKFLOW_{name.upper()}"
    port = os.environ.get(f"{env}_PORT")
    p.add_argument(f"--{name}-port", type=int, default=int(port) if port else None, help=port_help)
    p.add_argument(
        f"--{name}-host",
        default=os.environ.get(f"{env}_HOST", "127.0.0.1"),
        help=f"address of the {name} endpoint (default loopback)",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wf", description="Durable workflows on Redis Streams")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=os.environ.get("WORKFLOW_DEBUG", "") not in ("", "0"),
        help="print the traceback of an error (also WORKFLOW_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="process runs of the workflows defined in MODULEs")
    p.add_argument("modules", nargs="+")
    p.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("WORKFLOW_CONCURRENCY", "100"))
    )
    add_endpoint_flags(
        p, "health", "serve GET /healthz (200 healthy, 503 a duty has gone quiet) on this port"
    )
    add_endpoint_flags(
        p, "metrics", "serve Prometheus metrics at GET /metrics on this port (see the README)"
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
    p.add_argument("--priority", type=int, help="-1000..1000: served first where work waits")
    p.add_argument("--wait", action="store_true")
    p.add_argument("--timeout", type=float, default=60)

    p = sub.add_parser(
        "inspect", aliases=["i"], help="list runs, or show a run's events, steps, hooks or streams"
    )
    p.add_argument(
        "what",
        choices=[
            "runs",
            "run",
            "events",
            "steps",
            "sleeps",
            "hooks",
            "streams",
            "queues",
            "deployments",
            "flow",
        ],
    )
    p.add_argument("id", nargs="?")
    p.add_argument("--status")
    p.add_argument("--workflow")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("runs", help="act on runs: rerun RUN, migrate RUN --to DEPLOYMENT")
    runs = p.add_subparsers(dest="action", required=True)
    r = runs.add_parser("rerun", help="start a new run of a run's workflow with the same input")
    r.add_argument("run_id")
    r.add_argument("--run-id", dest="new_run_id", help="the new run's id (default: a fresh one)")
    m = runs.add_parser("migrate", help="pin a run to another deployment and wake it there")
    m.add_argument("run_id")
    m.add_argument("--to", required=True, help="the deployment id to move the run to")

    p = sub.add_parser(
        "dev", help="embedded Redis, a worker that restarts on file changes, and the dashboard"
    )
    p.add_argument("modules", nargs="+")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8788)

    p = sub.add_parser("dlq", help="dead letters: list, replay NAME..., drop NAME...")
    dlq = p.add_subparsers(dest="action", required=True)
    d = dlq.add_parser("list", help="the oldest dead letters of every partition")
    d.add_argument("--limit", type=int, default=100)
    d.add_argument("--json", action="store_true")
    for action, what in (("replay", "wake the run of"), ("drop", "delete")):
        d = dlq.add_parser(action, help=f"{what} dead letters named <partition>:<entry id>")
        d.add_argument("names", nargs="+")

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

    p = sub.add_parser("dashboard", help="serve the web dashboard (runs, a run's steps and log)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8788)

    p = sub.add_parser("health", help="check through the queue that workers answer")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    p.add_argument("--json", action="store_true")

    add_schedule_parser(sub)

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
    if args.command == "runs" and args.action == "migrate":
        try:
            check_deployment_id(args.to)
        except InvalidDeploymentIdError as exc:
            parser.error(f"--to: {exc}")
    configure()
    if args.command == "worker":
        import_workflow_modules(args.modules)
    sys.exit(run_command(args))


# exit codes (README "The wf command"): 0 done; 1 the command failed (what it acts on does not
# exist or refuses, Redis is unreachable, a health check failed); 2 usage or configuration
EXIT_FAILED, EXIT_CONFIG = 1, 2


def run_command(args: argparse.Namespace) -> int:
    """Run the command; an error is one line on stderr (its traceback too with --debug)."""
    handlers = {
        "worker": _run_worker,
        "demo": _demo,
        "start": start_command,
        "inspect": inspect_command,
        "i": inspect_command,
        "cancel": cancel_command,
        "runs": runs_command,
        "serve": _serve,
        "dashboard": _dashboard,
        "dlq": dlq_command,
        "dev": dev_command,
        "health": _health,
        "schedule": schedule_command,
    }
    try:
        with (
            contextlib.suppress(KeyboardInterrupt),
            asyncio.Runner(loop_factory=_loop_factory()) as r,
        ):
            r.run(handlers[args.command](args))
        return 0
    except SystemExit:
        raise
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        code = EXIT_CONFIG if isinstance(exc, CONFIGURATION_ERRORS) else EXIT_FAILED
        print(f"wf {args.command}: {_one_line(exc)}", file=sys.stderr)
        if not args.debug and not isinstance(exc, WorkflowError | ConnectionError):
            print("(run with --debug for the traceback)", file=sys.stderr)
        return code


# configuration, not a failure of the command: the message says what to fix
CONFIGURATION_ERRORS = (
    EncryptionKeyError,
    PartitionCountMismatchError,
    CommandArgumentError,
    UnsafeBindError,
)


def _one_line(exc: BaseException) -> str:
    """The error as ``wf`` reports it: our errors by their message, others with their type."""
    text = str(exc).strip()
    return text if isinstance(exc, WorkflowError) and text else f"{type(exc).__name__}: {text}"


if __name__ == "__main__":
    main()
