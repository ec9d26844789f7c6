"""A workflow of tests/e2e/test_versioning.py that asks patched() after a step the worker runs
inline (the step's result and the marker go out in one commit) and just before it returns (the
marker goes out with run_completed)."""

from __future__ import annotations

from worker import patched, step, workflow


@step
def first() -> str:
    return "first"


@step
def second() -> str:
    return "second"


@workflow
async def patched_between_steps_and_at_the_end() -> list[str]:
    out = [await first()]
    if patched("second-step"):
        out.append(await second())
    if patched("at-end"):
        out.append("end")
    return out
