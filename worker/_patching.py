"""Versioned workflow code: ``patched()`` and ``deprecate_patch()``, Temporal's patching.

A run is replayed from its log by whatever code the worker has now, so a change to the calls a
workflow makes would fail every run recorded by the old code (``NondeterminismError``). A change
guarded by ``if patched("id"):`` keeps the old path for them and takes the new one everywhere else:

============================  ===================  ==========================================
the log, where the code asks  ``patched("id")``    ``deprecate_patch("id")``
============================  ===================  ==========================================
first execution               True, marker         marker recorded with ``deprecated=true``
                              recorded
replaying, marker recorded    True                 allowed (nothing recorded)
replaying, no marker          False                allowed (nothing recorded)
============================  ===================  ==========================================

and code that asks nothing about a change replays a log holding its ``deprecated`` marker as if
the marker were not there, but fails on a marker ``patched()`` recorded. ``patched()`` asked later
than a ``deprecated`` marker that nothing asked about (the id of a removed change reused for a new
one) raises ``ChangeIdReusedError``: a change id names one change. (This is the table of
Temporal's patch state machine, ``sdk-core``, which its Python SDK's ``workflow.patched`` and
``workflow.deprecate_patch`` follow.)

*Replaying* is decided at the call, from the log alone, so every replay gives the same answer:
the code replays at a point when the log, past the events consumed so far, already holds an
effect of the code that the code has not caused yet (the creation of a step, sleep or hook it has
not called, the marker of a change it has not asked about, the run's end). The code then ran past
this point before, and the log says what it did there. Otherwise the code runs here for the first
time: step results or hook payloads that arrived meanwhile do not make it a replay. The marker
(``patch_recorded``, correlation id = the change id) is appended first in the commit that
follows the call, with the step, sleep and hook creations of the same stretch of code (or with
the run's end), so a replay finds it ahead of them. One answer per change and run: the first
call decides, later calls return the same.
"""

from __future__ import annotations

from ._context import current_step
from ._errors import WorkflowError
from ._replay import WorkflowInstance, current_instance


def _instance(what: str, change_id: str) -> WorkflowInstance:
    instance = current_instance.get()
    if instance is None or current_step.get() is not None:
        raise WorkflowError(f"{what}() can only be called in workflow code")
    if not isinstance(change_id, str) or not change_id:
        raise WorkflowError(f"{what}() needs a change id: a non-empty string")
    return instance


def patched(change_id: str) -> bool:
    """True where this run takes the new path of change ``change_id``, False where it keeps the
    old one (the run was recorded by code without the change).

    A first execution of this point answers True and records a ``patch_recorded`` marker, so every
    later replay answers True too; a replay of a log recorded without the marker here answers
    False. The first call of a change decides for the whole run. Write ``if patched("id"): new
    else: old``, deploy, and once no run without the marker is left, replace the call with
    :func:`deprecate_patch` and delete the old branch.

    Raises WorkflowError outside workflow code (in a step, or in no run at all), and
    ChangeIdReusedError where the run recorded the change's ``deprecated`` marker at an earlier
    point that no longer asks about it (the id of a removed change reused for a new one).
    """
    return _instance("patched", change_id).patch(change_id, deprecated=False)


def deprecate_patch(change_id: str) -> None:
    """Mark change ``change_id`` as done: the old path is deleted from the code.

    Use it where ``patched(change_id)`` was, once every run that was recorded without the change
    has finished: it accepts logs with the change's marker and without it, and a first execution
    records a marker flagged deprecated (so code that still has ``patched(change_id)``, a rollback,
    takes the new path for this run too). Code that no longer mentions the change replays logs with
    the deprecated marker, but not logs with a marker ``patched()`` recorded: remove the call once
    those runs have finished.

    Raises WorkflowError outside workflow code.
    """
    _instance("deprecate_patch", change_id).patch(change_id, deprecated=True)
