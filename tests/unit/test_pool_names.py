"""Queue names of worker pools: checked where they are declared and where a worker lists them."""

from __future__ import annotations

import pytest

from worker import WorkflowError, step
from worker._pool_world import InvalidQueueNameError, check_queue, parse_queues
from worker._pools import step_queue
from worker._registry import get_workflow


def test_parse_queues_keeps_order_and_drops_repeats() -> None:
    """`--queues default,gpu --queues gpu,io` serves default, gpu and io, in that order."""
    assert parse_queues("default") == ("default",)
    assert parse_queues(["default,gpu", "gpu, io"]) == ("default", "gpu", "io")


@pytest.mark.parametrize("bad", ["", "a b", "gpu,", ",gpu", "-gpu", "x" * 65, "q:1", "{p0}"])
def test_invalid_names_are_refused_with_the_name(bad: str) -> None:
    """A name that would not make a clean Redis key or list item is a typed error naming it."""
    with pytest.raises(InvalidQueueNameError) as err:
        parse_queues(bad)
    assert isinstance(err.value, WorkflowError) and isinstance(err.value, ValueError)
    assert "invalid queue name" in str(err.value)


def test_valid_names() -> None:
    """Letters, digits, '_', '.' and '-' up to 64 characters are fine."""
    for name in ("gpu", "io-bound", "ml.v2", "Q_1", "x" * 64):
        assert check_queue(name) == name


def test_step_with_invalid_queue_fails_at_declaration() -> None:
    """`@step(queue="bad name")` raises when the module is imported, not when a run reaches it."""
    with pytest.raises(InvalidQueueNameError):

        @step(queue="bad name")
        def nope() -> None: ...


def test_default_queue_is_not_routed() -> None:
    """Steps without a queue or with queue="default" run where the run is held."""

    @step(name="pool_names.plain")
    def plain() -> None: ...

    @step(name="pool_names.default", queue="default")
    def explicit() -> None: ...

    @step(name="pool_names.gpu", queue="gpu")
    def gpu() -> None: ...

    assert (step_queue(plain), step_queue(explicit), step_queue(gpu)) == (None, None, "gpu")


def test_workflow_queue() -> None:
    """`@workflow(queue=...)` is checked like a step's; without one a workflow is "default"'s."""
    from worker import workflow

    with pytest.raises(InvalidQueueNameError):

        @workflow(queue="no good")
        async def bad() -> None: ...

    @workflow(name="pool_names.routed", queue="wfq")
    async def routed() -> None: ...

    @workflow(name="pool_names.plain_wf")
    async def plain() -> None: ...

    queues = (get_workflow("pool_names.routed").queue, get_workflow("pool_names.plain_wf").queue)
    assert queues == ("wfq", "default")
