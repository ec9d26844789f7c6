"""Hooks: a workflow waits for payloads that anything outside it sends by token.

In a workflow, ``create_hook()`` returns a ``Hook``: ``await hook`` takes the next payload,
``async for payload in hook`` takes every payload until the hook is disposed, and ``with`` /
``async with`` dispose it on exit. Payloads that arrive before the code awaits are kept, in order.
From anywhere else, ``resume_hook(token, payload)`` delivers a payload and ``get_hook_by_token``
finds the hook; a token no live hook holds raises ``HookNotFoundError``.
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any

import msgspec

from . import _serde
from ._context import current_step
from ._errors import HookDisposedError, HookNotFoundError, WorkflowError
from ._events import NewEvent
from ._ids import new_id
from ._replay import HookCall, WorkflowInstance, current_instance
from ._world import Commit, World


class Hook:
    """A hook created by workflow code (see the module docstring)."""

    def __init__(self, instance: WorkflowInstance, call: HookCall) -> None:
        self._instance = instance
        self._call = call

    @property
    def token(self) -> str:
        return self._call.token

    @property
    def hook_id(self) -> str:
        return self._call.corr

    def __repr__(self) -> str:
        return f"<Hook {self.hook_id} token={self.token!r}>"

    def __await__(self) -> Generator[Any, None, Any]:
        return self._instance.hook_next(self._call).__await__()

    def __aiter__(self) -> Hook:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._instance.hook_next(self._call)
        except HookDisposedError:
            raise StopAsyncIteration from None

    def dispose(self) -> None:
        """Stop receiving payloads and free the token (another run may then take it)."""
        self._instance.dispose_hook(self._call)

    def __enter__(self) -> Hook:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.dispose()

    async def __aenter__(self) -> Hook:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.dispose()


def create_hook(token: str | None = None, metadata: Any = None) -> Hook:
    """Create a hook in workflow code; ``token`` defaults to an unguessable one (160 bits)."""
    instance = current_instance.get()
    if instance is None or current_step.get() is not None:
        raise WorkflowError("create_hook() can only be called in workflow code")
    if token is not None and (not isinstance(token, str) or not token or len(token) > 256):
        raise WorkflowError("a hook token must be a non-empty string of at most 256 characters")
    meta = _serde.dumps(metadata, what="hook metadata")
    return Hook(instance, instance.create_hook(token, meta))


class HookInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A live hook as any process sees it."""

    token: str
    hook_id: str
    run_id: str
    metadata: Any = None


async def get_hook_by_token(token: str, world: World | None = None) -> HookInfo:
    """The live hook holding ``token``; HookNotFoundError when none does."""
    from ._client import get_world

    w = world or get_world()
    found = await w.find_hook(token)
    if found is None:
        raise HookNotFoundError(token)
    run_id, hook_id, metadata = found
    return HookInfo(
        token=token, hook_id=hook_id, run_id=run_id, metadata=_serde.loads(metadata or "null")
    )


async def resume_hook(
    token: str, payload: Any = None, world: World | None = None, *, request_id: str = ""
) -> HookInfo:
    """Deliver ``payload`` to the hook holding ``token`` and wake its run.

    ``request_id`` names this delivery: the hook receives a payload once per request id, so a
    resume retried after its reply was lost (or a request redelivered) is not received twice.
    Without one, the call gets a fresh id: a commit that the World repeats because its reply was
    lost is then received once all the same.
    """
    from ._client import check_payload, get_world

    w = world or get_world()
    hook = await get_hook_by_token(token, w)
    text = _serde.dumps(payload, what=f"payload for hook {token!r}")
    check_payload(w, text, f"payload for hook {token!r}")
    fields = {"payload": text, "request_id": request_id or new_id("req")}
    (res,) = await w.commit(
        [
            Commit(
                run_id=hook.run_id,
                events=[NewEvent("hook_received", hook.hook_id, fields)],
                wake="hook",
            )
        ]
    )
    if res.code != "ok":
        raise HookNotFoundError(token)  # disposed, or its run ended, since it was looked up
    return hook
