"""One error tree for the engine.

Everything the engine raises on purpose derives from :class:`WorkflowError`. ``FatalError`` and
``RetryableError`` are not errors of the engine but signals a step raises to steer its retries.
Suspension needs no exception: a workflow that waits simply stays parked on its private loop.
"""

from __future__ import annotations

from datetime import datetime, timedelta


class WorkflowError(Exception):
    """Root of every error the engine raises deliberately."""


class SerializationError(WorkflowError, TypeError):
    """A value cannot be serialized or deserialized; the message names the path inside it."""

    def __init__(self, message: str, path: str = "$") -> None:
        super().__init__(message)
        self.path = path


class PayloadTooLargeError(WorkflowError, ValueError):
    """A serialized payload is larger than the configured limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.what = what
        self.size = size
        self.limit = limit


class WorkflowNotRegisteredError(WorkflowError, LookupError):
    """No workflow with this name is registered in this process."""

    def __init__(self, name: str) -> None:
        super().__init__(f"workflow {name!r} is not registered in this worker")
        self.name = name


class WorkflowNameError(WorkflowError, LookupError):
    """A workflow name given on the command line names no registered workflow, or several."""


class UnsafeBindError(WorkflowError, ValueError):
    """A server asked to listen beyond loopback with no token guarding its API."""


class StepNotRegisteredError(WorkflowError, LookupError):
    """No step with this name is registered in this process."""

    def __init__(self, name: str) -> None:
        super().__init__(f"step {name!r} is not registered in this worker")
        self.name = name


class RunNotFoundError(WorkflowError, LookupError):
    """The run does not exist (never created, or expired after its retention)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found")
        self.run_id = run_id


class HookNotFoundError(WorkflowError, LookupError):
    """No live hook holds this token."""

    def __init__(self, token: str) -> None:
        super().__init__(f"hook with token {token!r} not found")
        self.token = token


class HookConflictError(WorkflowError):
    """The hook's token is held by a live hook of another run."""

    def __init__(self, token: str) -> None:
        super().__init__(f'Hook token "{token}" is already in use by another workflow')
        self.token = token


class HookDisposedError(WorkflowError):
    """The hook was disposed; it receives no more payloads."""


class NondeterminismError(WorkflowError):
    """Replaying the log diverged from the workflow code (changed step, input, or order)."""


class ChangeIdReusedError(NondeterminismError):
    """``patched(change_id)`` asked about a change whose marker the run recorded at an earlier
    point, where the code no longer asks about it: the id of a finished change reused for another
    one. The run fails with it rather than take a path its history never took."""


class CorruptEventError(WorkflowError):
    """An event read from the log does not parse or does not belong to this run."""


class DecryptionError(CorruptEventError):
    """An encrypted payload cannot be decrypted: its key id is not configured, or it fails
    authentication (altered, or copied from another run or field). A run whose log holds one
    fails like a run with any other corrupt entry."""

    def __init__(self, run_id: str, field: str, key_id: str, message: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.field = field
        self.key_id = key_id

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.field, self.key_id, str(self)))


class EncryptionKeyError(WorkflowError, ValueError):
    """``WORKFLOW_ENCRYPTION_KEY`` is malformed; the message names what is wrong."""


class PartitionCountMismatchError(WorkflowError, ValueError):
    """This process is configured with another partition count than the deployment (key prefix)
    it uses stores: its runs would be looked for under the wrong keys and stay pending."""

    def __init__(self, prefix: str, stored: int, configured: int) -> None:
        super().__init__(
            f"key prefix {prefix!r} is used with {stored} partition(s), but this process is "
            f"configured with WORKFLOW_PARTITIONS={configured}; set WORKFLOW_PARTITIONS={stored} "
            f"(the count cannot change once a prefix is in use)"
        )
        self.prefix = prefix
        self.stored = stored
        self.configured = configured


class InvalidRunIdError(WorkflowError, ValueError):
    """A caller-chosen run id that is not ``wrun_`` followed by 1-120 of [A-Za-z0-9_-]."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"invalid run id {run_id!r}: use 'wrun_' followed by 1-120 letters, digits, '_' or '-'"
        )
        self.run_id = run_id


class MalformedMessageError(WorkflowError, ValueError):
    """A queue message or start request is missing fields or has fields of the wrong shape."""


class WorkflowRunFailedError(WorkflowError):
    """The awaited run failed; ``__cause__`` carries the step or workflow error."""

    def __init__(self, run_id: str, message: str) -> None:
        super().__init__(f"run {run_id} failed: {message}")
        self.run_id = run_id


class WorkflowRunCancelledError(WorkflowError):
    """The awaited run was cancelled."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} was cancelled")
        self.run_id = run_id


class WorkflowTimeoutError(WorkflowError, TimeoutError):
    """Waiting for a run's result took longer than the caller allowed."""


class WorldUnavailableError(WorkflowError, ConnectionError):
    """The World's backing store could not be reached after retries."""


class ReplicaAckTimeoutError(WorldUnavailableError):
    """A write reached the Redis master but fewer of its replicas than ``WORKFLOW_REPLICA_ACKS``
    asked for acknowledged it within ``WORKFLOW_REPLICA_ACK_TIMEOUT_MS``: if the master fails
    before a replica has it, the write is gone. Nothing that depends on it was done; repeating
    the call is safe (``start()`` with the same ``run_id`` answers the same run). ``run_id``:
    the run the write was for, when one run is named ("" otherwise)."""

    def __init__(
        self, what: str, acked: int, wanted: int, timeout_ms: int, run_id: str = ""
    ) -> None:
        about = f" of run {run_id}" if run_id else ""
        super().__init__(
            f"{what}{about}: written on the master, but {acked} of the {wanted} replicas "
            f"asked for (WORKFLOW_REPLICA_ACKS) acknowledged it within {timeout_ms} ms; it is "
            "lost if the master fails before a replica has it"
        )
        self.what, self.acked, self.wanted = what, acked, wanted
        self.timeout_ms, self.run_id = timeout_ms, run_id


class InvalidScheduleError(WorkflowError, ValueError):
    """A schedule option that cannot be used: a cron expression that does not parse, an interval
    that does not parse or is not positive, an unknown time zone, overlap or catchup value, or a
    schedule id that is not 1-128 letters, digits, ``_``, ``.``, ``:`` or ``-``. Nothing stored."""


class ScheduleExistsError(WorkflowError):
    """``create_schedule`` with an id that exists already (and no ``replace=True``)."""

    def __init__(self, schedule_id: str) -> None:
        super().__init__(
            f"schedule {schedule_id!r} exists already; delete it first or pass replace=True"
        )
        self.schedule_id = schedule_id


class ScheduleNotFoundError(WorkflowError, LookupError):
    """No schedule has this id (never created, or deleted)."""

    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"schedule {schedule_id!r} not found")
        self.schedule_id = schedule_id


class InvalidParentCloseError(WorkflowError, ValueError):
    """``start(..., parent_close=...)`` got a value other than "cancel" or "abandon"."""

    def __init__(self, value: object) -> None:
        super().__init__(
            f"invalid parent_close {value!r}: use 'cancel' (the default: the child is cancelled "
            "when its parent ends) or 'abandon' (the child runs on)"
        )
        self.value = value


class FlowControlError(WorkflowError, ValueError):
    """A flow-control option (``concurrency``, ``concurrency_key``, ``rate``, ``priority``) that
    does not parse; raised at decoration or ``start()`` time, before anything is written."""

    def __init__(self, option: str, value: object, expected: str, where: str = "") -> None:
        at = f" of {where}" if where else ""
        super().__init__(f"invalid {option}={value!r}{at}: {expected}")
        self.option = option
        self.value = value


class FatalError(Exception):
    """Raised by a step to fail at once, without retries."""


class RetryableError(Exception):
    """Raised by a step to be retried, optionally not before ``retry_after``.

    ``retry_after`` accepts a duration string ("10s", "5m"), seconds, a timedelta or a datetime.
    """

    def __init__(
        self,
        message: str = "",
        retry_after: str | float | int | timedelta | datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
