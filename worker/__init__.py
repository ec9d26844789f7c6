"""Durable workflows for Python on Redis Streams.

Write workflows as ``async def`` functions that call steps; every state change is an event in the
run's log, so a run survives crashes, restarts and redeploys.
"""

from typing import Any

from ._client import Run, get_run, get_world, set_world, sleep, start
from ._codec import PayloadCodec
from ._context import (
    StepMetadata,
    WorkflowMetadata,
    get_step_metadata,
    get_workflow_metadata,
    now,
    workflow_random,
)
from ._deployments import InvalidDeploymentIdError, UnknownDeploymentError
from ._errors import (
    ChangeIdReusedError,
    DecryptionError,
    EncryptionKeyError,
    FatalError,
    FlowControlError,
    HookConflictError,
    HookDisposedError,
    HookNotFoundError,
    InvalidParentCloseError,
    InvalidRunIdError,
    InvalidScheduleError,
    NondeterminismError,
    PartitionCountMismatchError,
    PayloadTooLargeError,
    ReplicaAckTimeoutError,
    RetryableError,
    RunNotFoundError,
    ScheduleExistsError,
    ScheduleNotFoundError,
    SerializationError,
    WorkflowError,
    WorkflowNotRegisteredError,
    WorkflowRunCancelledError,
    WorkflowRunFailedError,
    WorkflowTimeoutError,
)
from ._fetch import FetchResponse, fetch
from ._health import check_health
from ._hooks import Hook, HookInfo, create_hook, get_hook_by_token, resume_hook
from ._patching import deprecate_patch, patched
from ._registry import step, workflow
from ._schedule_spec import ScheduleTick
from ._schedules import (
    Schedule,
    ScheduleDescription,
    create_schedule,
    get_schedule,
    list_schedules,
)
from ._serde import RemoteError
from ._streams import get_writable
from ._webhooks import Webhook, WebhookRequest, WebhookResponse, create_webhook


def create_app(*args: Any, **kwargs: Any) -> Any:
    """The ASGI application (webhooks, start/resume API, health); see ``worker._http``.

    Imported on first use, so workers that serve no HTTP do not load Starlette.
    """
    from ._http import create_app as _create_app

    return _create_app(*args, **kwargs)


def create_dashboard_app(*args: Any, **kwargs: Any) -> Any:
    """The web dashboard's ASGI application; see ``worker._dashboard``.

    Imported on first use, so workers that serve no HTTP do not load Starlette and Jinja2.
    """
    from ._dashboard import create_dashboard_app as _create

    return _create(*args, **kwargs)


__all__ = [
    "ChangeIdReusedError",
    "DecryptionError",
    "EncryptionKeyError",
    "FatalError",
    "FetchResponse",
    "FlowControlError",
    "Hook",
    "HookConflictError",
    "HookDisposedError",
    "HookInfo",
    "HookNotFoundError",
    "InvalidDeploymentIdError",
    "InvalidParentCloseError",
    "InvalidRunIdError",
    "InvalidScheduleError",
    "NondeterminismError",
    "PartitionCountMismatchError",
    "PayloadCodec",
    "PayloadTooLargeError",
    "RemoteError",
    "ReplicaAckTimeoutError",
    "RetryableError",
    "Run",
    "RunNotFoundError",
    "Schedule",
    "ScheduleDescription",
    "ScheduleExistsError",
    "ScheduleNotFoundError",
    "ScheduleTick",
    "SerializationError",
    "StepMetadata",
    "UnknownDeploymentError",
    "Webhook",
    "WebhookRequest",
    "WebhookResponse",
    "WorkflowError",
    "WorkflowMetadata",
    "WorkflowNotRegisteredError",
    "WorkflowRunCancelledError",
    "WorkflowRunFailedError",
    "WorkflowTimeoutError",
    "check_health",
    "create_app",
    "create_dashboard_app",
    "create_hook",
    "create_schedule",
    "create_webhook",
    "deprecate_patch",
    "fetch",
    "get_hook_by_token",
    "get_run",
    "get_schedule",
    "get_step_metadata",
    "get_workflow_metadata",
    "get_world",
    "get_writable",
    "list_schedules",
    "now",
    "patched",
    "resume_hook",
    "set_world",
    "sleep",
    "start",
    "step",
    "workflow",
    "workflow_random",
]
