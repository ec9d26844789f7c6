"""`wf dev` as a developer runs it: a worker that picks up a changed module, and the dashboard."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import WF, eventually, free_port
from worker import get_run, start
from world_redis import RedisWorld

FLOW = """
from worker import step, workflow


@step(name="devflow.answer")
async def answer() -> str:
    return "{version}"


@workflow(name="devflow.ask")
async def ask() -> str:
    return await answer()
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "devflow.py").write_text(FLOW.format(version="v1"))
    return tmp_path


@pytest.fixture
def dev(project: Path, worker_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path / "dev.log"
    env = {**worker_env, "PYTHONPATH": os.pathsep.join([str(project), os.getcwd()])}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [WF, "dev", "devflow", "--port", str(port)],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.send_signal(2)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def dashboard_up(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(url, timeout=2)).status_code == 200
    except httpx.TransportError:
        return False


async def test_a_changed_module_is_served_by_the_restarted_worker(
    world: RedisWorld, project: Path, dev: tuple[str, Path]
) -> None:
    """A run answers v1; the module is edited to answer v2; `wf dev` restarts its worker and
    the next run answers v2; the dashboard lists both runs."""
    url, log = dev
    await eventually(lambda: dashboard_up(url), 30, what="the dashboard answers")
    first = await start("devflow.ask")
    assert await first.result(timeout=30) == "v1"
    (project / "devflow.py").write_text(FLOW.format(version="v2"))
    # "restarting" is printed while the old worker still runs (and may take a run, draining it
    # with the old code): start the next run once the old worker has exited
    await eventually(lambda: "worker restarted" in log.read_text(), 30, what="a restart")
    second = await start("devflow.ask")
    assert await second.result(timeout=30) == "v2"
    assert (await get_run(first.run_id).info()).deployment == "dev"
    async with httpx.AsyncClient() as client:
        page = (await client.get(url, timeout=10)).text
    assert first.run_id in page and second.run_id in page
