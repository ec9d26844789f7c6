"""``python -m bench.commands``: the client's CPU per command, redis-py next to the raw
connections of world_redis/_lean.py, on a private redis-server.

For each command (PING; EVALSHA of a one-line script; a non-blocking XREAD of one entry), 3,000
sequential calls through the World's redis-py client (``decode_responses``, as ``from_url``
makes it) and 3,000 through ``LeanRedis``; prints the process CPU (``time.process_time``) and
the wall time per call, after 200 warm-up calls of each. The event loop is ``wf``'s (uvloop
where installed, see worker/_cli.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.infra import private_redis
from world_redis import RedisWorld
from world_redis._lean import LeanRedis

CALLS, WARM = 3_000, 200


async def per_call(call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of ``call``."""
    for _ in range(WARM):
        await call()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(CALLS):
        await call()
    return (time.process_time() - c0) / CALLS * 1e6, (time.perf_counter() - t0) / CALLS * 1e6


async def measure(url: str) -> None:
    world = RedisWorld.from_url(url, prefix="cmds")
    await world.core.check_config()
    client = world.redis
    lean = LeanRedis.of(client)
    assert lean is not None
    sha = await client.script_load("return ARGV[1]")  # type: ignore[attr-defined]
    await client.xadd("cmds:s", {"f": "v"})
    commands: dict[str, tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]]]] = {
        "PING": (client.ping, lambda: lean.execute("PING")),
        "EVALSHA": (
            lambda: client.evalsha(sha, 0, "x"),  # type: ignore[attr-defined]
            lambda: lean.evalsha(sha, [], ["x"]),
        ),
        "XREAD": (
            lambda: client.xread({"cmds:s": "0-0"}, count=1),
            lambda: lean.execute("XREAD", "COUNT", 1, "STREAMS", "cmds:s", "0-0"),
        ),
    }
    print(
        f"{'command':<8} {'redis-py cpu':>13} {'raw cpu':>8} {'redis-py wall':>14} {'raw wall':>9}"
    )
    for name, (via_redis_py, via_lean) in commands.items():
        cpu_r, wall_r = await per_call(via_redis_py)
        cpu_l, wall_l = await per_call(via_lean)
        print(f"{name:<8} {cpu_r:>10.1f} µs {cpu_l:>5.1f} µs {wall_r:>11.1f} µs {wall_l:>6.1f} µs")
    lean.close()
    await world.close()


def main() -> None:
    from worker._cli import _loop_factory

    with private_redis() as server, asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(measure(server.url))


if __name__ == "__main__":
    main()
