"""The public surface: a change to it must be a deliberate diff of this file."""

from __future__ import annotations

import worker
import world_redis

WORKER_API = {
    "list_schedules",
    "get_schedule",
    "create_schedule",
    "ScheduleTick",
    "ScheduleNotFoundError",
    "ScheduleExistsError",
    "ScheduleDescription",
    "Schedule",
    "InvalidScheduleError",
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
    "NondeterminismError",
    "PartitionCountMismatchError",
    "PayloadCodec",
    "PayloadTooLargeError",
    "RemoteError",
    "ReplicaAckTimeoutError",
    "RetryableError",
    "Run",
    "RunNotFoundError",
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
    "create_webhook",
    "deprecate_patch",
    "fetch",
    "get_hook_by_token",
    "get_run",
    "get_step_metadata",
    "get_workflow_metadata",
    "get_world",
    "get_writable",
    "now",
    "patched",
    "resume_hook",
    "set_world",
    "sleep",
    "start",
    "step",
    "workflow",
    "workflow_random",
}


def test_worker_exports_exactly_the_public_api() -> None:
    """`worker.__all__` lists the public names, and each one is importable."""
    assert set(worker.__all__) == WORKER_API
    for name in WORKER_API:
        assert getattr(worker, name) is not None


def test_world_redis_exports() -> None:
    """`world_redis` exports RedisWorld (with from_url) and the key helpers."""
    assert set(world_redis.__all__) == {"Keys", "RedisWorld", "ensure_embedded", "partition_of"}
    assert callable(world_redis.RedisWorld.from_url)


def test_errors_share_one_root() -> None:
    """Every engine error derives from WorkflowError (FatalError/RetryableError are user signals)."""
    for name in WORKER_API:
        obj = getattr(worker, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and name.endswith("Error"):
            if name in ("FatalError", "RetryableError", "RemoteError"):
                continue
            assert issubclass(obj, worker.WorkflowError), name


def test_world_seam_is_one_public_module() -> None:
    """`worker.world` exports what a storage World needs, and world_redis imports the engine
    only through it (never through a private `worker._module`)."""
    import ast
    from pathlib import Path

    import worker.world as seam

    for name in seam.__all__:
        assert getattr(seam, name) is not None
    package = Path(world_redis.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("worker"):
                assert node.module == "worker.world", f"{path.name} imports {node.module}"


def test_the_dashboard_app_is_public_and_loads_its_templates() -> None:
    """`worker.create_dashboard_app()` builds the dashboard (its templates ship in the package)."""
    app = worker.create_dashboard_app(token="t")
    assert {r.path for r in app.routes} >= {"/", "/runs/{run_id}", "/queues", "/login"}
