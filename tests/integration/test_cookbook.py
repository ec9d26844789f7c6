"""The README's redis-cli cookbook works: every recipe runs with the real redis-cli on a real run."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shlex

import pytest

from tests.support import REPO, redis_cli_binary, redis_cli_errors
from worker import start
from world_redis import RedisWorld

from .helpers import eventually

pytestmark = pytest.mark.skipif(redis_cli_binary() is None, reason="redis-cli is not installed")

START, END = "<!-- cookbook:start -->", "<!-- cookbook:end -->"


def cookbook_commands() -> list[list[str]]:
    """Each ```sh block between the cookbook markers, as one redis-cli argv (one command per block)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(START) + len(START) : readme.index(END)]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    commands = []
    for block in blocks:
        lines = [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert len(lines) == 1, f"a recipe must be one command: {block!r}"
        argv = shlex.split(lines[0])
        assert argv[0] == "redis-cli", lines[0]
        commands.append(argv[1:])
    return commands


def localize(args: list[str], prefix: str, run_id: str) -> list[str]:
    """Point a recipe at the test's keys: a leading ``wf:`` of a key name becomes the test prefix."""
    token_hash = hashlib.sha256(b"approve-o-17").hexdigest()[:32]
    return [
        re.sub(r"^wf:", f"{prefix}:", a)
        .replace("<run_id>", run_id)
        .replace("<token_hash>", token_hash)
        for a in args
    ]


def test_cookbook_covers_the_operator_questions() -> None:
    """The cookbook has a recipe for the log, state, steps, status index, lag, pending, timers, dlq, rejections and start."""
    recipes = [" ".join(c) for c in cookbook_commands()]
    wanted = [
        r"^XRANGE wf:\{p0\}:run:<run_id>:ev - \+$",
        r"^HGETALL wf:\{p0\}:run:<run_id>$",
        r"^HGETALL wf:\{p0\}:run:<run_id>:ent$",
        r"^ZREVRANGE wf:\{p0\}:idx:running 0 19",
        r"^XINFO GROUPS wf:\{p0\}:ready$",
        r"^XPENDING wf:\{p0\}:ready workers - \+ 10$",
        r"^ZRANGE wf:\{p0\}:timers 0 -1 WITHSCORES$",
        r"^XRANGE wf:\{p0\}:dlq - \+ COUNT 10$",
        r"^XRANGE wf:start:rejected ",
        r"^XADD wf:start \* workflow \S+ args ",
        r"^HGETALL wf:config$",
    ]
    for pattern in wanted:
        assert any(re.search(pattern, r) for r in recipes), f"no recipe matches {pattern}"


async def test_every_cookbook_recipe_runs(world: RedisWorld, redis_server, start_worker) -> None:  # type: ignore[no-untyped-def]
    """Each recipe, pointed at a completed add_ten run, exits 0 without an error; the log shows run_completed."""
    start_worker("tests.e2e.workflows")
    run = await start("add_ten", 1)
    assert await run.result(timeout=30) == 11
    prefix = world.keys.prefix

    outputs: dict[str, str] = {}
    for recipe in cookbook_commands():
        args = localize(recipe, prefix, run.run_id)
        assert all("<" not in a and not a.startswith("wf:") for a in args), args
        # --no-raw: redis-cli then marks every error reply "(error) ..." (in raw mode it prints
        # e.g. "WRONGTYPE ..." bare), and it exits 0 on error replies either way
        proc = await asyncio.create_subprocess_exec(
            str(redis_cli_binary()),
            "-p",
            str(redis_server.port),
            "--no-raw",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        raw_out, raw_err = await asyncio.wait_for(proc.communicate(), 10)
        stdout, stderr = raw_out.decode(), raw_err.decode()
        shown = f"{args}: rc={proc.returncode} out={stdout!r} err={stderr!r}"
        assert proc.returncode == 0, shown
        assert not redis_cli_errors(stdout + stderr), shown
        outputs[" ".join(recipe)] = stdout

    def out(pattern: str) -> str:
        (key,) = [k for k in outputs if re.search(pattern, k)]
        return outputs[key]

    log = out(r"^XRANGE \S+:ev ")
    assert "run_completed" in log and log.count("step_completed") == 3
    state = out(r"^HGETALL \S+:run:<run_id>$")
    assert '"completed"' in state and '"11"' in state
    assert "step_" in out(r"^HGETALL \S+:ent$")
    assert "workers" in out(r"^XINFO GROUPS ")
    assert out(r"^HGETALL \S+:config$").split()[1::2] == ['"partitions"', '"1"']
    assert re.fullmatch(r'"\d+-\d+"\n', out(r"^XADD "))

    # the XADD recipe really started a run: two completed add_ten runs now
    async def both_done() -> bool:
        runs, _ = await world.list_runs(status="completed")
        return len(runs) == 2

    await eventually(both_done, timeout=20, what="the run started by the XADD recipe completes")
    runs, _ = await world.list_runs(status="completed")
    assert sorted(r.output or "" for r in runs) == ["11", "133"]
