"""Child runs of a RedisWorld: the links from a run to the parent runs awaiting its end.

A parent and its child usually live in different partitions, so no script touches both: the
child's slot holds who awaits it (``<run>:parents``, written by link_child.lua), and commit.lua
wakes an ended run that is awaited, or that started children, with reason ``ended``. The worker
that takes that wake-up delivers the end to each parent (a commit in the parent's slot, idempotent
by correlation id) and applies the parents' ``parent_close`` to the run's own children.
"""

from __future__ import annotations

from typing import Literal

from ._core import RedisCore
from ._queue import _s
from ._retry import with_retry

LinkCode = Literal["linked", "ended", "no_run"]


class RedisChildren:
    """Links between runs and the parents awaiting them (composed: ``RedisWorld.children``)."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def link_child(self, run_id: str, parent_run_id: str, corr: str) -> tuple[LinkCode, str]:
        """Have ``run_id``'s end delivered to ``parent_run_id`` (child ``corr`` of its log).

        ("linked", ""), ("ended", status) when the run has ended already, or ("no_run", "").
        """
        await self.core._ready()
        k = self.core.keys
        reply = await self.core._eval(
            "link_child", [k.run(run_id), k.child_watchers(run_id)], [f"{parent_run_id}|{corr}"]
        )
        code = _s(reply[0])
        status = _s(reply[1]) if len(reply) > 1 else ""
        if code == "linked":
            return "linked", ""
        if code == "ended":
            return "ended", status
        return "no_run", ""

    async def child_watchers(self, run_id: str) -> list[tuple[str, str]]:
        """(parent run id, correlation id) of every run awaiting ``run_id``'s end."""
        await self.core._ready()
        members = await with_retry(self.core.redis.smembers, self.core.keys.child_watchers(run_id))
        out = []
        for member in sorted(_s(m) for m in members):
            parent, sep, corr = member.partition("|")
            if sep and parent and corr:
                out.append((parent, corr))
        return out
