"""Metadata visible to workflow and step code, and the context variables that carry it."""

from __future__ import annotations

import contextvars
import os
import random
from datetime import UTC, datetime

import msgspec

from ._errors import WorkflowError


class WorkflowMetadata(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    workflow_name: str
    started_at: datetime
    url: str = ""


class StepMetadata(msgspec.Struct, frozen=True, kw_only=True):
    step_id: str
    step_name: str
    attempt: int
    started_at: datetime


class StepContext(msgspec.Struct, gc=False):  # made once per step attempt: msgspec's C init
    """What a running step can ask about itself; metadata objects are built only when asked."""

    step_id: str
    step_name: str
    attempt: int
    started_ms: int
    run_id: str
    workflow_name: str
    workflow_started_ms: int

    @property
    def step(self) -> StepMetadata:
        return StepMetadata(
            step_id=self.step_id,
            step_name=self.step_name,
            attempt=self.attempt,
            started_at=ms_to_datetime(self.started_ms),
        )

    @property
    def workflow(self) -> WorkflowMetadata:
        return WorkflowMetadata(
            run_id=self.run_id,
            workflow_name=self.workflow_name,
            started_at=ms_to_datetime(self.workflow_started_ms),
            url=base_url(),
        )


current_step: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "wf_step", default=None
)


def base_url() -> str:
    return os.environ.get("WORKFLOW_BASE_URL", "http://localhost:8787")


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, UTC)


def get_step_metadata() -> StepMetadata:
    """Step id, attempt (1-based) and first start time of the running step."""
    ctx = current_step.get()
    if ctx is None:
        raise WorkflowError("get_step_metadata() can only be called inside a step")
    return ctx.step


def get_workflow_metadata() -> WorkflowMetadata:
    """Run id, workflow name and start time, in a workflow or in one of its steps."""
    from ._replay import current_instance

    ctx = current_step.get()
    if ctx is not None:
        return ctx.workflow
    inst = current_instance.get()
    if inst is None:
        raise WorkflowError("get_workflow_metadata() can only be called in a workflow or a step")
    return WorkflowMetadata(
        run_id=inst.run_id,
        workflow_name=inst.workflow_name,
        started_at=ms_to_datetime(inst.started_at_ms),
        url=base_url(),
    )


def now() -> datetime:
    """The workflow clock in a workflow (advances only with consumed events); wall time elsewhere."""
    from ._replay import current_instance

    inst = current_instance.get()
    if inst is None or current_step.get() is not None:
        return datetime.now(UTC)
    return ms_to_datetime(inst.clock_ms)


def workflow_random() -> random.Random:
    """A random generator seeded by the run id: the same values on every replay."""
    from ._replay import current_instance

    inst = current_instance.get()
    if inst is None:
        raise WorkflowError("workflow_random() can only be called in a workflow")
    return inst.random
