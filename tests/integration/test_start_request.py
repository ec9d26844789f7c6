"""Starting runs from any service with plain Redis commands: the real redis-cli binary, a real worker."""

from __future__ import annotations

import subprocess

import pytest
import redis
from ulid import ULID

from tests.support import redis_cli_binary, redis_cli_errors, wait_for

pytestmark = pytest.mark.skipif(redis_cli_binary() is None, reason="redis-cli is not installed")


def cli(port: int, *args: str) -> str:
    """Run one redis-cli command against the test server; its stdout (exit code 0 required)."""
    done = subprocess.run(
        [str(redis_cli_binary()), "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0, done
    assert not redis_cli_errors(done.stdout), done.stdout
    return done.stdout.strip()


def wait_status(port: int, prefix: str, run_id: str, status: str, timeout: float = 20) -> None:
    wait_for(
        lambda: cli(port, "HGET", f"{prefix}:{{p0}}:run:{run_id}", "status") == status,
        timeout,
        what=f"run {run_id} {status}",
    )


def xadd_start(port: int, prefix: str, *fields: str) -> str:
    message_id = cli(port, "XADD", f"{prefix}:start", "*", *fields)
    assert message_id.split("-")[0].isdigit(), message_id
    return message_id


def test_redis_cli_xadd_starts_a_run(redis_server, prefix, start_worker) -> None:  # type: ignore[no-untyped-def]
    """One XADD onto <prefix>:start from redis-cli starts add_ten(123); the run hash shows completed, output 133."""
    start_worker("tests.e2e.workflows")
    port = redis_server.port
    run_id = f"wrun_{ULID()}"
    xadd_start(port, prefix, "workflow", "add_ten", "args", "[123]", "run_id", run_id)
    wait_status(port, prefix, run_id, "completed")
    run_key = f"{prefix}:{{p0}}:run:{run_id}"
    assert cli(port, "HGET", run_key, "output") == "133"
    assert cli(port, "HGET", run_key, "input") == "[123]"
    log = cli(port, "XRANGE", f"{run_key}:ev", "-", "+")
    assert log.count("step_completed") == 3 and "run_completed" in log
    assert cli(port, "XLEN", f"{prefix}:start:rejected") == "0"
    assert cli(port, "XLEN", f"{prefix}:start") == "0"  # acknowledged and deleted


def test_malformed_start_requests_are_rejected_and_worker_lives(  # type: ignore[no-untyped-def]
    redis_server, prefix, start_worker
) -> None:
    """Malformed start requests land in <prefix>:start:rejected with a reason; a chosen run id fails visibly; the worker lives on."""
    proc = start_worker("tests.e2e.workflows")
    port = redis_server.port
    unknown_run = f"wrun_{ULID()}"
    bad = {
        xadd_start(port, prefix, "args", "[1]"): "no 'workflow' field",
        xadd_start(port, prefix, "workflow", "add_ten", "args", "[1,"): "not valid JSON",
        xadd_start(port, prefix, "workflow", "add_ten", "args", '{"x": 1}'): "must be a JSON array",
        xadd_start(
            port, prefix, "workflow", "add_ten", "args", "[1]", "run_id", "wrun_bad:id"
        ): "invalid run id",
        xadd_start(
            port, prefix, "workflow", "nope", "args", "[1]", "run_id", unknown_run
        ): "not registered",
    }
    good = f"wrun_{ULID()}"
    xadd_start(port, prefix, "workflow", "add_ten", "args", "[1]", "run_id", good)

    rejected_key = f"{prefix}:start:rejected"
    wait_for(lambda: cli(port, "XLEN", rejected_key) == str(len(bad)), 20, what="rejections")
    # read the rejections back (the Python client here; the cookbook test covers redis-cli)
    rows = redis.Redis(port=port, decode_responses=True).xrange(rejected_key, "-", "+")
    entries = {fields["message_id"]: fields for _, fields in rows}
    assert set(entries) == set(bad)
    for message_id, needle in bad.items():
        assert needle in entries[message_id]["reason"], (needle, entries[message_id])

    wait_status(port, prefix, unknown_run, "failed")
    run_key = f"{prefix}:{{p0}}:run:{unknown_run}"
    assert "not registered" in cli(port, "HGET", run_key, "error")
    assert cli(port, "HGET", run_key, "workflow") == "nope"

    wait_status(port, prefix, good, "completed")
    assert cli(port, "HGET", f"{prefix}:{{p0}}:run:{good}", "output") == "11"
    assert proc.proc.poll() is None, proc.output()

    after = f"wrun_{ULID()}"
    xadd_start(port, prefix, "workflow", "add_ten", "args", "[5]", "run_id", after)
    wait_status(port, prefix, after, "completed")
    assert cli(port, "HGET", f"{prefix}:{{p0}}:run:{after}", "output") == "15"
    assert proc.proc.poll() is None, proc.output()


def test_invalid_run_id_creates_no_run(redis_server, prefix, start_worker) -> None:  # type: ignore[no-untyped-def]
    """A start request with an invalid run_id is rejected and writes no run keys under that id."""
    start_worker("tests.e2e.workflows")
    port = redis_server.port
    for run_id in ("wrun_bad:id", "wrun_x y"):
        xadd_start(port, prefix, "workflow", "add_ten", "args", "[1]", "run_id", run_id)
    good = f"wrun_{ULID()}"
    xadd_start(port, prefix, "workflow", "add_ten", "args", "[1]", "run_id", good)
    wait_status(port, prefix, good, "completed")  # requests are handled in order
    assert cli(port, "XLEN", f"{prefix}:start:rejected") == "2"
    assert cli(port, "EXISTS", f"{prefix}:{{p0}}:run:wrun_bad:id") == "0"
    assert cli(port, "EXISTS", f"{prefix}:{{p0}}:run:wrun_x y") == "0"
