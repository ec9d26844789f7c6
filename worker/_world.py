"""The seam between the engine and its storage: the World protocol and the values it exchanges.

``worker`` never imports ``redis``; ``world_redis.RedisWorld`` implements this protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, cast, get_args

import msgspec

from ._errors import WorkflowError
from ._events import Event, NewEvent
from ._streams import StreamStore

# a run's status as stored; "unknown" where the stored text is none of them (the run names
# "status" in its corrupt_fields)
RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
# a step's status, derived from its events (a retrying step is "pending" until its next attempt)
StepStatus = Literal["pending", "running", "completed", "failed"]


def run_status(text: str) -> RunStatus | Literal["unknown"]:
    """The run status ``text`` names, or "unknown" for any other text."""
    return text if text in RUN_STATUSES else "unknown"


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    workflow: str
    status: RunStatus | Literal["unknown"]
    input: str = "[]"
    output: str | None = None
    error: str | None = None
    deployment: str = ""
    created_at: int = 0
    started_at: int | None = None
    completed_at: int | None = None
    updated_at: int | None = None
    seq: int = 0
    lease_owner: str = ""
    parent_run_id: str = ""  # the run whose workflow code started this one (child runs)
    priority: int = 0  # start(..., priority=): its band, and its place where flow control parks
    # stored fields that could not be read: an integer or status that is not one, text that is
    # not JSON, a missing name; such a field holds its default (integers) or the stored text
    corrupt_fields: tuple[str, ...] = ()


class StepInfo(msgspec.Struct, frozen=True, kw_only=True):
    step_id: str
    name: str
    status: StepStatus
    attempt: int = 0
    input: str = "null"
    output: str | None = None
    error: str | None = None
    created_at: int = 0
    started_at: int | None = None
    completed_at: int | None = None
    retry_after: int | None = None


# The structs a worker makes for every step are not tracked by the garbage collector
# (gc=False): they hold strings, numbers and lists of each other, never a cycle.
class Commit(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Events to append to one run's log in one atomic step.

    ``token`` is the caller's lease ("" for external writers such as cancel); ``expected_seq``
    fences the append on the log position the caller decided from (-1: no fence); ``wake`` enqueues a
    wake-up for the run with that reason after a successful append.
    """

    run_id: str
    events: Sequence[NewEvent]
    token: str = ""
    expected_seq: int = -1
    wake: str = ""
    # how many leading events ``appended`` leaves out (their positions still count): the inline
    # path feeds its instance itself (see Worker._advance_and_commit)
    fed: int = 0
    # the holder's wake-up, when the commit ends the run: if its terminal event is appended, the
    # lease is given up and this wake-up acknowledged in the same write (no release call)
    done: Wakeup | None = None
    # (lease ms, deployment): the commit takes the lease itself, as acquire would (a run started
    # from its wake-up's run_created, see Wakeup.created); refused with "lease" when another
    # live worker holds it or the run is pinned to another deployment
    acquire: tuple[int, str] | None = None


# what the scripts answer (see world_redis/lua/commit.lua and acquire.lua): a typo is a type error
CommitCode = Literal["ok", "no_run", "lease", "conflict", "rejected"]
EventStatus = Literal[
    "ok", "exists", "terminal", "not_found", "too_early", "stale", "invalid", "corrupt"
]
AcquireCode = Literal["ok", "busy", "no_run", "pinned"]
_COMMIT_CODES: tuple[str, ...] = get_args(CommitCode)
_EVENT_STATUSES: tuple[str, ...] = get_args(EventStatus)
_ACQUIRE_CODES: tuple[str, ...] = get_args(AcquireCode)


def _unknown(text: str, words: tuple[str, ...], what: str) -> WorkflowError:
    return WorkflowError(f"unknown {what} {text!r} in a script reply (expected one of {words})")


def _word(text: str, words: tuple[str, ...], what: str) -> str:
    if text not in words:
        raise _unknown(text, words, what)
    return text


# the words as their Literal types: a reply's word is looked up, not checked then cast
# a reply's word -> its code (looked up on the hot path; commit_code() names an unknown word)
COMMIT_CODE_OF: dict[str, CommitCode] = {c: cast(CommitCode, c) for c in _COMMIT_CODES}
_EVENT_STATUS: dict[str, EventStatus] = {s: cast(EventStatus, s) for s in _EVENT_STATUSES}


def commit_code(text: str) -> CommitCode:
    """A commit reply's code; WorkflowError for a word the script never answers."""
    code = COMMIT_CODE_OF.get(text)
    if code is None:
        raise _unknown(text, _COMMIT_CODES, "commit code")
    return code


def event_status(text: str) -> EventStatus:
    status = _EVENT_STATUS.get(text)
    if status is None:
        raise _unknown(text, _EVENT_STATUSES, "event status")
    return status


def event_statuses(pairs: list[Any]) -> list[EventResult]:
    """The per-event results of a commit reply: status, extra, status, extra..."""
    statuses = _EVENT_STATUS
    try:
        return [EventResult(statuses[pairs[j]], pairs[j + 1]) for j in range(0, len(pairs), 2)]
    except KeyError:
        for j in range(0, len(pairs), 2):
            event_status(pairs[j])  # raises for the word the script never answers
        raise


def acquire_code(text: str) -> AcquireCode:
    return cast(AcquireCode, _word(text, _ACQUIRE_CODES, "acquire code"))


class EventResult(msgspec.Struct, frozen=True, gc=False):
    status: EventStatus
    extra: int = 0


class CommitResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Outcome of a Commit (see :data:`CommitCode`)."""

    code: CommitCode
    seq: int
    now_ms: int
    results: list[EventResult]
    appended: list[Event]


class Wakeup(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    partition: int
    message_id: str
    run_id: str
    reason: str
    deliveries: int = 1
    # the stream it came from: "default" is the partition's ready stream, another name that
    # queue's stream (the wake-up of a run of a workflow declared with that queue, forwarded)
    queue: str = "default"
    # the priority band of that stream ("hi", "" or "lo": see world_redis/_keys.py)
    band: str = ""
    # a new run's wake-up carries its run_created entry (when small, see create_run.lua), read
    # as the log's entry 1-0 is: the worker starts the run from it, without an acquire
    created: Event | None = None


class Acquired(msgspec.Struct, frozen=True, gc=False):
    code: AcquireCode
    seq: int
    status: str
    taken_over: bool = False
    events: list[Event] = []  # the log after the seq the caller asked from
    # the run's deployment ("" while unpinned); with "pinned", the one it must be replayed by
    deployment: str = ""


class StartRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A request from another service: start a run ("start") or resume a hook ("resume").

    ``source`` names the stream it came from (its ``message_id`` is unique within it);
    ``deliveries`` counts how often it was handed to a worker, this time included.
    """

    message_id: str
    fields: dict[str, str]
    kind: Literal["start", "resume"] = "start"
    source: str = ""
    deliveries: int = 1


class World(Protocol):
    """Storage of events and entities, the work queue and timers. All methods are coroutines."""

    max_payload_bytes: int

    @property
    def streams(self) -> StreamStore:
        """The run's output streams (read-only here, so a World may hold a subtype)."""
        ...

    async def create_run(
        self,
        run_id: str,
        workflow: str,
        input_json: str,
        deployment: str = "",
        trace: str = "",
        parent: str = "",
        priority: int = 0,
    ) -> bool: ...
    async def get_run(self, run_id: str) -> RunInfo | None: ...
    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[RunInfo], str | None]: ...
    async def read_events(self, run_id: str, after_seq: int = 0) -> list[Event]: ...
    async def wait_for_events(
        self, run_id: str, after_seq: int, timeout_ms: int
    ) -> list[Event]: ...
    async def list_steps(self, run_id: str) -> list[StepInfo]: ...
    async def commit(self, commits: Sequence[Commit]) -> list[CommitResult]: ...

    async def check_config(self) -> None: ...

    # worker side
    async def ensure_groups(self) -> None: ...
    async def server_warnings(self) -> list[str]: ...
    async def server_time_ms(self) -> int: ...
    async def read_wakeups(self, consumer: str, count: int, block_ms: int) -> list[Wakeup]: ...
    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Wakeup]: ...
    async def ack(self, wakeups: Sequence[Wakeup]) -> None: ...
    async def acquire(
        self, run_id: str, token: str, lease_ms: int, after_seq: int = -1, deployment: str = ""
    ) -> Acquired: ...
    async def release(
        self, run_id: str, token: str, seq: int, wakeup: Wakeup | None = None
    ) -> tuple[str, int]: ...
    async def acquire_many(
        self, token: str, lease_ms: int, runs: Sequence[tuple[str, int]], deployment: str = ""
    ) -> list[Acquired]: ...
    async def release_many(
        self, token: str, runs: Sequence[tuple[str, int, Wakeup | None]]
    ) -> list[tuple[str, int]]: ...
    async def requeue(self, wakeup: Wakeup, reason: str) -> None: ...
    async def reject_start_request(self, request: StartRequest, reason: str) -> None: ...
    async def heartbeat(
        self, token: str, run_ids: Sequence[str], wakeups: Sequence[Wakeup], lease_ms: int
    ) -> dict[str, int]: ...
    async def promote_timers(self) -> int | None: ...
    async def dead_letter(self, wakeup: Wakeup, reason: str) -> None: ...
    async def read_start_requests(
        self, consumer: str, count: int, block_ms: int
    ) -> list[StartRequest]: ...
    async def reclaim_start_requests(
        self, consumer: str, min_idle_ms: int, count: int
    ) -> list[StartRequest]: ...
    async def ack_start_requests(self, requests: Sequence[StartRequest]) -> None: ...
    async def expire_indexes(self) -> int: ...
    async def find_hook(self, token: str) -> tuple[str, str, str] | None: ...
    async def list_hooks(self, run_id: str) -> list[tuple[str, str, str]]: ...
    async def close(self) -> None: ...
