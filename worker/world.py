"""What a storage World gets from the engine: the World protocol, the values it exchanges, the
events, ids, errors and codecs it stores.

``world_redis`` (and any other World) imports these names from here, never from the engine's
private modules, so the seam between the two is this one public module. Names are added here
deliberately (a test pins them).
"""

from __future__ import annotations

from ._codec import PayloadCodec, is_envelope
from ._deployments import Deployment, DeploymentStats, MigrateError, lane_deployment
from ._errors import (
    CorruptEventError,
    DecryptionError,
    PartitionCountMismatchError,
    ReplicaAckTimeoutError,
    RunNotFoundError,
    WorkflowError,
    WorldUnavailableError,
)
from ._events import (
    HOOK_CONFLICT,
    Event,
    NewEvent,
    StepCompleted,
    StepCreated,
    StepFailed,
    StepRetrying,
    StepStarted,
    appended_events,
    event_from_fields,
    make_event,
)
from ._flow import FlowGrant, flow_code
from ._ids import new_event_id, new_ids, token_worker
from ._logging import get_logger
from ._pool_world import DEFAULT_QUEUE, PoolTask, QueueStats, RouteCode
from ._schedule_spec import ScheduleRecord, ScheduleSpec, ScheduleTick
from ._serde import check_size, dumps, loads
from ._world import (
    COMMIT_CODE_OF,
    RUN_STATUSES,
    AcquireCode,
    Acquired,
    Commit,
    CommitCode,
    CommitResult,
    EventResult,
    EventStatus,
    RunInfo,
    RunStatus,
    StartRequest,
    StepInfo,
    StepStatus,
    Wakeup,
    World,
    acquire_code,
    commit_code,
    event_status,
    event_statuses,
    run_status,
)

__all__ = [
    "COMMIT_CODE_OF",
    "DEFAULT_QUEUE",
    "HOOK_CONFLICT",
    "RUN_STATUSES",
    "AcquireCode",
    "Acquired",
    "Commit",
    "CommitCode",
    "CommitResult",
    "CorruptEventError",
    "DecryptionError",
    "Deployment",
    "DeploymentStats",
    "Event",
    "EventResult",
    "EventStatus",
    "FlowGrant",
    "MigrateError",
    "NewEvent",
    "PartitionCountMismatchError",
    "PayloadCodec",
    "PoolTask",
    "QueueStats",
    "ReplicaAckTimeoutError",
    "RouteCode",
    "RunInfo",
    "RunNotFoundError",
    "RunStatus",
    "ScheduleRecord",
    "ScheduleSpec",
    "ScheduleTick",
    "StartRequest",
    "StepCompleted",
    "StepCreated",
    "StepFailed",
    "StepInfo",
    "StepRetrying",
    "StepStarted",
    "StepStatus",
    "Wakeup",
    "WorkflowError",
    "World",
    "WorldUnavailableError",
    "acquire_code",
    "appended_events",
    "check_size",
    "commit_code",
    "dumps",
    "event_from_fields",
    "event_status",
    "event_statuses",
    "flow_code",
    "get_logger",
    "is_envelope",
    "lane_deployment",
    "loads",
    "make_event",
    "new_event_id",
    "new_ids",
    "run_status",
    "token_worker",
]
