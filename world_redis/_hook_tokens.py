"""Hook token reservations: one key per token, in a slot of its own, around the commit script.

A token is reserved (``reserve_hook.lua``) before the ``hook_created`` that asks for it is
committed in the run's slot, and released (``release_hook.lua``, a compare-and-delete) after the
commit that disposed the hook or ended its run. No script can span both slots on a cluster, so a
writer that dies between the two steps leaves a reservation naming a run that does not hold the
hook. Such a reservation is reclaimable: the run asking for the token checks the holder in the
holder's slot (``fence_hook.lua``), which also marks the hook lost there, so a ``hook_created``
of it still in flight becomes a ``hook_conflict`` instead of a second holder. Only commits that
create hooks pay the extra round trips.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.world import HOOK_CONFLICT, Commit, CommitResult

from ._core import RedisCore
from ._queue import _s

# (commit index, hook id) -> token, for the tokens a commit call reserved
Reserved = dict[tuple[int, str], str]


class RedisHookTokens:
    """Reserve the tokens a commit asks for, and release the tokens it frees (composed:
    ``RedisWorld.hook_tokens``, on the World's core)."""

    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def reserve(self, commits: Sequence[Commit]) -> tuple[list[list[str]], Reserved]:
        """Per commit, the hooks whose token another hook holds; and the reservations made."""
        taken: list[list[str]] = [[] for _ in commits]
        reserved: Reserved = {}
        ours: set[str] = set()  # holders reserved by this call: their commit is on its way
        for i, c in enumerate(commits):
            for ev in c.events:
                if ev.type != "hook_created":
                    continue
                token = ev.fields.get("token", "")
                if not ev.corr or not token:
                    continue  # commit.lua refuses it as invalid
                holder = f"{c.run_id}|{ev.corr}"
                if await self._reserve_token(token, holder, ours):
                    ours.add(holder)
                    reserved[(i, ev.corr)] = token
                else:
                    taken[i].append(ev.corr)
        return taken, reserved

    async def _reserve_token(self, token: str, holder: str, ours: set[str]) -> bool:
        """Reserve ``token`` for ``holder``, reclaiming it once from a holder that lost it.

        Every fence is followed by a release and a reserve of the fencer's own, so under contention
        the last reservation made is never a fenced one: one asker ends up holding the token."""
        key = self.core.keys.hook_token(token)
        reply = await self.core._eval("reserve_hook", [key], [holder])
        if _s(reply[0]) == "ok":
            return True
        other = _s(reply[1])
        if other in ours or await self._holds(other, token):
            return False
        await self.core._eval("release_hook", [key], [other])
        reply = await self.core._eval("reserve_hook", [key], [holder])
        return _s(reply[0]) == "ok"

    async def _holds(self, holder: str, token: str) -> bool:
        """Whether ``holder`` ("<run id>|<hook id>") holds ``token``; if not, it never will."""
        run_id, _, hook_id = holder.partition("|")
        keys = [self.core.keys.run(run_id), self.core.keys.run_hooks(run_id)]
        return _s(await self.core._eval("fence_hook", keys, [hook_id, token])) == "held"

    async def release(
        self,
        commits: Sequence[Commit],
        results: Sequence[CommitResult],
        freed: Sequence[Sequence[Any]],
        reserved: Reserved,
    ) -> None:
        """Release the tokens of the hooks the commits ended, and of those they could not create.

        A reservation whose commit was refused for a lease or a sequence conflict is left as it
        is: another writer of the run may be creating that same hook; it stays reclaimable."""
        for i, (c, res, ended) in enumerate(zip(commits, results, freed, strict=True)):
            if not ended and not reserved:
                continue  # the common case: no hook in sight
            release = [(_s(ended[j]), _s(ended[j + 1])) for j in range(0, len(ended) - 1, 2)]
            if res.code == "no_run":
                release += [(h, t) for (n, h), t in reserved.items() if n == i]
            for ev, r in zip(c.events, res.results, strict=False):
                token = reserved.get((i, ev.corr))
                lost = r.status == "terminal" or (r.status == "ok" and r.extra == HOOK_CONFLICT)
                if ev.type == "hook_created" and token is not None and lost:
                    release.append((ev.corr, token))
            for hook_id, token in release:
                key = self.core.keys.hook_token(token)
                await self.core._eval("release_hook", [key], [f"{c.run_id}|{hook_id}"])
