"""The worker image's install steps, run for real here: the wheel, a clean virtualenv, `wf` from it.

deploy/Dockerfile builds the project's wheel and installs it in a fresh Python; this does the same
in a virtualenv (dependencies from the configured index) and runs what the manifests run. Where a
container engine answers `docker info`, the image itself is built too. The autoscaler's ACL user
is checked on a Redis started by deploy/redis-entrypoint.sh.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.support import free_port, redis_binary, wait_for
from tests.unit.test_deploy import DEPLOY, dockerfile_instruction, worker_argvs
from world_redis._keys import GROUP, Keys

ROOT = DEPLOY.parent
# pip's words for "the index cannot be reached", the only reason to skip rather than fail
NO_INDEX = re.compile(
    r"No matching distribution found|Could not find a version|NewConnectionError|"
    r"Network is unreachable|Temporary failure in name resolution|ConnectTimeout"
)


def run(argv: list[str], cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a clean virtualenv holding the project's wheel and its dependencies only."""
    tmp = tmp_path_factory.mktemp("deploy-install")
    built = run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(tmp / "dist")])
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("redis_workflows-*.whl")
    made = run([sys.executable, "-m", "venv", str(tmp / "venv")])
    assert made.returncode == 0, made.stderr
    bin_dir = tmp / "venv" / "bin"
    done = run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], timeout=120)
    if done.returncode != 0 and NO_INDEX.search(done.stderr):
        pytest.skip(f"no package index to install the dependencies from: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    return bin_dir


@pytest.mark.timeout(180)  # the install happens in this test's setup: ~20 s here
def test_wf_from_the_wheel_lists_the_subcommands_and_flags_the_manifests_use(
    installed: Path,
) -> None:
    """`wf --help` and `wf worker --help` run from the clean install and name every subcommand
    and flag that the image, k8s and compose start workers with."""
    top = run([str(installed / "wf"), "--help"])
    assert top.returncode == 0, top.stderr
    help_worker = run([str(installed / "wf"), "worker", "--help"])
    assert help_worker.returncode == 0, help_worker.stderr
    flags = set(re.findall(r"--[a-z][a-z-]*", help_worker.stdout))
    used: set[str] = set()
    for argv in worker_argvs():
        assert argv[0] == "wf" and re.search(rf"\b{argv[1]}\b", top.stdout), argv
        used |= {a for a in argv if a.startswith("--")}
    assert "--health-port" in used and "--metrics-port" in used
    assert used <= flags, f"{sorted(used - flags)} not in `wf worker --help`"


@pytest.mark.timeout(180)
def test_the_installed_wheel_runs_a_workflow_from_the_image_layout(
    installed: Path, tmp_path: Path
) -> None:
    """From a directory laid out as the image's /app (only examples/), the installed `wf` runs the
    example workflow to completion: the wheel carries the Lua scripts and every dependency."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    try:
        demo = run([str(installed / "wf"), "demo", "examples.order"], cwd=tmp_path)
    finally:  # the embedded Redis the demo started under .workflow/ outlives it: stop it
        stop_embedded(tmp_path / ".workflow" / "redis.sock")
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "result:" in demo.stdout and "completed" in demo.stdout


def stop_embedded(sock: Path) -> None:
    if not sock.exists():
        return
    with contextlib.suppress(redis.ConnectionError):  # the answer to SHUTDOWN is the closed socket
        redis.Redis(unix_socket_path=str(sock)).shutdown(nosave=True)


@pytest.mark.timeout(900)
def test_image_builds_where_a_container_engine_answers() -> None:
    """`docker build -f deploy/Dockerfile .` succeeds (skipped without a Docker daemon)."""
    if shutil.which("docker") is None:
        pytest.skip("no `docker` command on this machine: the image is not built")
    info = run(["docker", "info"], timeout=30)
    if info.returncode != 0:
        pytest.skip(f"`docker info` fails (no daemon): {info.stderr.strip()[-200:]}")
    built = run(
        ["docker", "build", "-f", "deploy/Dockerfile", "-t", "redis-workflows-worker:test", "."],
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    user = run(
        ["docker", "image", "inspect", "-f", "{{.Config.User}}", "redis-workflows-worker:test"]
    )
    assert user.stdout.strip() == dockerfile_instruction("USER")[0]


def test_keda_user_reads_the_lag_and_writes_nothing(tmp_path: Path) -> None:
    """deploy/'s Redis started by its entrypoint with KEDA_PASSWORD: the user `keda` runs what
    KEDA's lag mode sends (INFO, XINFO GROUPS, XLEN) on a ready stream and is refused writes."""

    port, passwords = free_port(), {"wf": secrets.token_hex(16), "keda": secrets.token_hex(16)}
    env = {
        "PATH": f"{Path(redis_binary()).parent}:{os.environ['PATH']}",
        "REDIS_PASSWORD": passwords["wf"],
        "KEDA_PASSWORD": passwords["keda"],
        "REDIS_CONF": str(DEPLOY / "redis.conf"),
        "REDIS_ACL_FILE": str(tmp_path / "users.acl"),
        "REDIS_ACL_TEMPLATE": str(DEPLOY / "redis-users.acl"),
    }
    argv = ["sh", str(DEPLOY / "redis-entrypoint.sh"), "--bind", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--dir", str(tmp_path), "--appendonly", "no"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    wf, keda = (
        redis.Redis(port=port, username=u, password=p, decode_responses=True)
        for u, p in passwords.items()
    )
    try:
        wait_for(lambda: proc.poll() is None and _pings(wf), 10, what="the deployed Redis")
        ready = Keys().ready(0)
        wf.xgroup_create(ready, GROUP, id="0", mkstream=True)
        wf.xadd(ready, {"run": "r1"})
        assert keda.info("server")["redis_version"].startswith("7")
        (group,) = keda.xinfo_groups(ready)
        assert group["name"] == GROUP and group["lag"] == 1
        assert keda.xlen(ready) == 1
        for write in (
            lambda: keda.xadd(ready, {"run": "r2"}),
            lambda: keda.xreadgroup(GROUP, "c", {ready: ">"}),
            lambda: keda.xlen("other:stream"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                write()
    finally:
        wf.close()
        keda.close()
        proc.terminate()
        proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
