"""``wf dev MODULE...``: the embedded Redis (or ``WORKFLOW_REDIS_URL``), a worker and the
dashboard in one command; the worker restarts when a file of the modules changes.

The worker runs as ``wf worker MODULE...`` in a child process under the deployment id ``dev``,
so runs started before a change are served by the restarted worker (with the new code: a change
that alters what a running run already did fails that run with NondeterminismError, as it would
in production without ``patched()``). Files are polled every ``POLL_S`` seconds: the ``.py``
files under each module's directory.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

POLL_S = 0.5


def watched_files(modules: list[str]) -> dict[Path, float]:
    """Every ``.py`` file under the directories of ``modules``, with its modification time."""
    sys.path.insert(0, os.getcwd())
    roots = set()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            roots.add(Path(spec.origin).parent)
    return {f: f.stat().st_mtime for root in roots for f in root.rglob("*.py") if f.is_file()}


def start_worker(modules: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from worker._cli import main; main()", "worker", *modules]
    return subprocess.Popen(command, env=env)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the worker drains and hands its runs over), SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def dev_command(args: argparse.Namespace) -> None:
    import uvicorn

    import world_redis

    from ._dashboard import create_dashboard_app
    from ._http import check_bind

    check_bind(args.host, token=os.environ.get("WORKFLOW_HTTP_TOKEN") or None)
    url = os.environ.get("WORKFLOW_REDIS_URL") or world_redis.ensure_embedded()
    env = {**os.environ, "WORKFLOW_REDIS_URL": url, "WORKFLOW_DEPLOYMENT_ID": "dev"}
    os.environ["WORKFLOW_REDIS_URL"] = url  # the dashboard's world: the same Redis
    files = watched_files(args.modules)
    worker = start_worker(args.modules, env)
    print(f"wf dev: worker started; dashboard at http://{args.host}:{args.port}", flush=True)
    config = uvicorn.Config(create_dashboard_app(), host=args.host, port=args.port)
    server = asyncio.create_task(uvicorn.Server(config).serve())
    try:
        while not server.done():
            await asyncio.sleep(POLL_S)
            now = watched_files(args.modules)
            changed = sorted(
                str(f) for f in now.keys() | files.keys() if now.get(f) != files.get(f)
            )
            if changed or worker.poll() is not None:
                why = f"changed: {', '.join(changed)}" if changed else "the worker exited"
                print(f"wf dev: {why}; restarting the worker", flush=True)
                await asyncio.to_thread(stop_worker, worker)
                files, worker = now, start_worker(args.modules, env)
                # from here on no process of the old code takes a run (the old one has exited)
                print("wf dev: worker restarted", flush=True)
    finally:
        await asyncio.to_thread(stop_worker, worker)
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
