"""Deployments: which version of the workflow code a run is replayed by.

Every worker has a deployment id: ``wf worker --deployment ID``, else ``WORKFLOW_DEPLOYMENT_ID``,
else :func:`default_deployment_id`, a hash of the source of the modules that define the workflows
and steps it imported (so a deploy of changed code gets a new id by itself, and restarting the same
code keeps it). Workers register their deployment in the World with a heartbeat (the workflows it
serves, when it was first and last seen, its workers); a deployment is *live* while a worker of
it renewed the registration within a lease and has not left it (a worker leaves when it stops).

A run is pinned to one deployment: ``start(..., deployment_id=ID)`` pins explicitly (an id never
registered is refused with :class:`UnknownDeploymentError`, nothing created); without it the run is
pinned to the newest live deployment serving its workflow (newest by first-seen time); when none
serves it, the run starts unpinned and the first worker that takes its lease pins it to its own
deployment (acquire.lua, atomically with the lease).

Only workers of a run's deployment replay it or run its steps. A worker that takes a wake-up of a
run pinned to another deployment gets ``"pinned"`` from acquire.lua (checked atomically with the
lease, so the wrong code never replays it) and forwards the wake-up to that deployment's *lane*:
the stream of queue ``<queue>@<deployment id>`` in the run's partition (``default@dpl_...`` for
replays, ``gpu@dpl_...`` for a workflow or step queue ``gpu``). Lanes are queue streams (see
_pools.py): a worker reads the lanes of its own deployment beside the ready stream and its queues'
streams, with the same at-least-once treatment (reclaim after the lease, dead letters, undecodable
entries set aside) and the same shared concurrency. Steps declared with a queue of a pinned run are
routed to that queue's lane of the run's deployment, so a pool worker of another deployment never
runs them. A run whose deployment has no live worker waits in its lane, visibly (``wf inspect
deployments``); ``wf runs migrate RUN --to ID`` moves it on purpose.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import re
import sys
import time
import weakref
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

import msgspec

from ._errors import RunNotFoundError, WorkflowError

if TYPE_CHECKING:
    from ._supervisor import Duty
    from ._worker import Worker
    from ._world import World

_DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
REGISTRY_CACHE_S = 3.0  # how long a client reuses its read of the registry (see resolve)
LANE_MARK = "@"  # lane = "<queue>@<deployment id>": "@" is in no queue name nor deployment id


class InvalidDeploymentIdError(WorkflowError, ValueError):
    """A deployment id that is not 1-64 letters, digits, ``_``, ``.`` or ``-`` (starting with a
    letter or digit): it becomes part of Redis keys and of command lines."""

    def __init__(self, value: str) -> None:
        super().__init__(
            f"invalid deployment id {value!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (e.g. 'dpl_3f2a9c01b7de', 'v2', 'release-2026.11')"
        )
        self.value = value


class UnknownDeploymentError(WorkflowError, LookupError):
    """A deployment id no worker ever registered: nothing was started or moved."""

    def __init__(self, deployment_id: str, known: Sequence[str] = ()) -> None:
        shown = ", ".join(sorted(known)[:10]) or "none"
        super().__init__(
            f"unknown deployment {deployment_id!r}: no worker ever registered it (known: {shown}); "
            "start a worker with `wf worker ... --deployment ID` first"
        )
        self.deployment_id = deployment_id


def check_deployment_id(value: object) -> str:
    """``value`` when it is a valid deployment id, else InvalidDeploymentIdError."""
    if not isinstance(value, str) or not _DEPLOYMENT_ID.fullmatch(value):
        raise InvalidDeploymentIdError(str(value))
    return value


def lane(queue: str, deployment: str) -> str:
    """The queue name of ``queue``'s lane of ``deployment`` (its stream: a queue stream)."""
    return f"{base_queue(queue)}{LANE_MARK}{deployment}"


def base_queue(queue: str) -> str:
    """The queue a lane belongs to (``gpu@dpl_x`` -> ``gpu``); a plain queue name unchanged."""
    return queue.split(LANE_MARK, 1)[0]


def lane_deployment(queue: str) -> str:
    """The deployment of a lane (``gpu@dpl_x`` -> ``dpl_x``); "" for a plain queue."""
    return queue.split(LANE_MARK, 1)[1] if LANE_MARK in queue else ""


# -- the default id --------------------------------------------------------------------------


def workflow_modules() -> list[ModuleType]:
    """The imported modules that define registered workflows or steps."""
    from ._registry import registered_steps, registered_workflows

    fns = [*registered_workflows(), *registered_steps()]
    names = {getattr(fn, "__module__", "") for fn in fns}
    return [sys.modules[n] for n in sorted(names) if n in sys.modules]


def module_source(module: ModuleType) -> bytes:
    """The bytes of the module's source file; its name alone when it has none (built in)."""
    try:
        path = inspect.getsourcefile(module)
    except TypeError:
        path = None
    if path is None or not os.path.exists(path):
        return b""
    with open(path, "rb") as f:
        return f.read()


def default_deployment_id(modules: Iterable[ModuleType] | None = None) -> str:
    """``dpl_`` + the first 12 hex digits of SHA-256 over the modules' names (sorted) and source.

    ``modules`` defaults to :func:`workflow_modules`. Any change of those files' bytes gives another
    id; the same files give the same id on every machine and after every restart."""
    digest = hashlib.sha256()
    mods = workflow_modules() if modules is None else list(modules)
    for module in sorted(mods, key=lambda m: m.__name__):
        source = module_source(module)
        digest.update(module.__name__.encode() + b"\0")
        digest.update(str(len(source)).encode() + b"\0" + source)
    return f"dpl_{digest.hexdigest()[:12]}"


def worker_deployment_id(explicit: str | None = None) -> str:
    """A worker's deployment id: ``explicit``, else WORKFLOW_DEPLOYMENT_ID, else the default."""
    chosen = explicit or os.environ.get("WORKFLOW_DEPLOYMENT_ID") or ""
    return check_deployment_id(chosen) if chosen else default_deployment_id()


# -- the registry ----------------------------------------------------------------------------


class Deployment(msgspec.Struct, frozen=True, kw_only=True):
    """A registered deployment as the registry holds it (``live``: one of its workers renewed
    the registration within a lease and has not left)."""

    deployment_id: str
    workflows: list[str] = []
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    live: bool = False
    workers: list[str] = []  # its workers renewed within a lease


class DeploymentStats(msgspec.Struct, frozen=True, kw_only=True):
    """One deployment as ``wf inspect deployments`` shows it."""

    deployment_id: str
    live: bool
    workers: list[str]
    workflows: list[str]
    first_seen_ms: int
    last_seen_ms: int
    runs_pinned: int  # pending or running runs pinned to it
    waiting: int  # wake-ups and pool tasks in its lanes no worker of it has taken yet (lag)
    pending: int  # entries of its lanes held by its workers (or by dead ones, until reclaimed)


class MigrateError(WorkflowError):
    """``wf runs migrate`` refused: the run is finished, or the target deployment does not serve
    the run's workflow. Nothing was moved."""


@runtime_checkable
class DeploymentStore(Protocol):
    """The deployments' storage: a registry with heartbeats, and moving runs between them."""

    async def register(
        self, deployment_id: str, worker: str, workflows: Sequence[str], live_ms: int
    ) -> None:
        """Record that ``worker`` of ``deployment_id``, serving ``workflows``, is alive."""
        ...

    async def leave(self, deployment_id: str, worker: str, live_ms: int) -> None:
        """Record that ``worker`` stopped (the deployment is not live once its last one left)."""
        ...

    async def registry(self, live_ms: int) -> list[Deployment]:
        """Every registered deployment; ``live`` by the server's clock."""
        ...

    async def migrate(self, run_id: str, deployment_id: str) -> str:
        """Re-pin a run and wake it; the deployment it was pinned to ("" when unpinned).
        RunNotFoundError, MigrateError (finished run)."""
        ...

    async def stats(self, live_ms: int) -> list[DeploymentStats]: ...


def deployment_store(world: object) -> DeploymentStore:
    """The deployment storage of ``world``; WorkflowError when its class offers none."""
    store = getattr(world, "deployments", None)
    if not _is_store(store):
        raise WorkflowError(f"{type(world).__name__} has no deployment registry")
    return cast(DeploymentStore, store)


_STORE_TYPES: dict[type, bool] = {}


def _is_store(store: object) -> bool:
    """``isinstance(store, DeploymentStore)``, answered once per class: a protocol's check
    looks up each of its methods, and every start() asks."""
    kind = type(store)
    known = _STORE_TYPES.get(kind)
    if known is None:
        known = _STORE_TYPES[kind] = isinstance(store, DeploymentStore)
    return known


def live_window_ms() -> int:
    """A worker is live while it renewed within this long: one lease (WORKFLOW_LEASE_MS)."""
    return int(os.environ.get("WORKFLOW_LEASE_MS") or 15000)


# -- the client's choice ---------------------------------------------------------------------

# per World (weakly: a closed World's read goes with it): (monotonic time of the read, the read)
_cache: weakref.WeakKeyDictionary[object, tuple[float, list[Deployment]]] = (
    weakref.WeakKeyDictionary()
)


async def _read_registry(world: object, *, fresh: bool) -> list[Deployment]:
    now = time.monotonic()
    cached = _cache.get(world)
    if not fresh and cached is not None and now - cached[0] < REGISTRY_CACHE_S:
        return cached[1]
    found = await deployment_store(world).registry(live_window_ms())
    _cache[world] = (now, found)
    return found


async def resolve_deployment(world: object, workflow: str, explicit: str | None) -> str:
    """The deployment a new run of ``workflow`` is pinned to ("" = unpinned, see the module).

    An explicit id must have been registered (read fresh, not from the cache). Without one, the
    newest live deployment serving the workflow, from a read cached REGISTRY_CACHE_S."""
    if not _is_store(getattr(world, "deployments", None)):
        if explicit is not None:  # a World without a registry cannot check the id
            deployment_store(world)
        return ""
    if explicit is not None:
        check_deployment_id(explicit)
        known = await _read_registry(world, fresh=True)
        if all(d.deployment_id != explicit for d in known):
            raise UnknownDeploymentError(explicit, [d.deployment_id for d in known])
        return explicit
    serving = [d for d in await _read_registry(world, fresh=False) if d.live]
    serving = [d for d in serving if workflow in d.workflows]
    if not serving:
        return ""
    return max(serving, key=lambda d: (d.first_seen_ms, d.deployment_id)).deployment_id


async def migrate_run(world: World, run_id: str, deployment_id: str) -> str:
    """Pin run ``run_id`` to ``deployment_id`` and wake it there (``wf runs migrate``); the
    deployment it was pinned to ("" when unpinned).

    Refused, with nothing moved: an invalid id (InvalidDeploymentIdError), one no worker
    registered (UnknownDeploymentError), one whose workers do not serve the run's workflow, a
    finished run (MigrateError), a missing run (RunNotFoundError)."""
    check_deployment_id(deployment_id)
    info = await world.get_run(run_id)
    if info is None:
        raise RunNotFoundError(run_id)
    known = {d.deployment_id: d for d in await _read_registry(world, fresh=True)}
    target = known.get(deployment_id)
    if target is None:
        raise UnknownDeploymentError(deployment_id, list(known))
    if target.workflows and info.workflow not in target.workflows:
        raise MigrateError(
            f"deployment {deployment_id!r} does not serve workflow {info.workflow!r} of run "
            f"{run_id} (it serves {', '.join(target.workflows)}); nothing moved"
        )
    return await deployment_store(world).migrate(run_id, deployment_id)


# -- the worker's registration duty ----------------------------------------------------------


def served_workflows(queues: Sequence[str]) -> list[str]:
    """The registered workflows whose queue is one of ``queues`` (a worker replays those)."""
    from ._registry import registered_workflows

    return sorted(wf.name for wf in registered_workflows() if wf.queue in queues)


def worker_lanes(deployment: str, queues: Sequence[str]) -> list[str]:
    """The lanes a worker of ``deployment`` serving ``queues`` reads (one per queue)."""
    return [lane(q, deployment) for q in queues]


def register_interval_s(lease_ms: int) -> float:
    """How often a worker renews its deployment: three times per lease, at most every 5 s."""
    return max(0.2, min(5.0, lease_ms / 3000.0))


async def register_loop(worker: Worker, duty: Duty) -> None:
    """Renew the registration of the worker's deployment, a few times per lease."""
    store = deployment_store(worker.world)
    interval = register_interval_s(worker.config.lease_ms)
    workflows = served_workflows(worker.config.queues)
    while True:
        await store.register(worker.deployment, worker.name, workflows, worker.config.lease_ms)
        duty.ok()
        await asyncio.sleep(interval)


async def leave(worker: Worker) -> None:
    """A worker that stops leaves its deployment: with its last worker gone, a deployment is not
    live at once (new runs are not pinned to it), instead of a lease later."""
    try:
        await deployment_store(worker.world).leave(
            worker.deployment, worker.name, worker.config.lease_ms
        )
    except Exception as exc:  # the registration lapses after a lease anyway
        worker.log.warning("deployment_leave_failed", error=str(exc))
