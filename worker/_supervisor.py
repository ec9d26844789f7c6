"""One owner for a worker's background duties.

Every duty of a worker (reading wake-ups, heartbeats, timers, reclaiming, requests, the batchers...)
runs under a :class:`Supervisor`, in the spirit of Trio's nurseries: a duty that raises is logged
with its traceback and restarted with exponential backoff; each duty reports its successes
(``duty.ok()``) so that health checks can name a duty that has not succeeded recently; a duty
that keeps failing (``max_failures`` restarts in a row without one success) makes the supervisor
raise :class:`DutyFailedError`, and the worker process exits non-zero so that its orchestrator
replaces it, rather than living on half-dead.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ._errors import WorkflowError

DutyBody = Callable[["Duty"], Coroutine[Any, Any, None]]
CANCEL_ATTEMPTS = 10
CANCEL_WAIT_S = 0.5


class DutyFailedError(WorkflowError):
    """A background duty failed ``failures`` times in a row: the worker cannot go on."""

    def __init__(self, duty: str, failures: int, last_error: str) -> None:
        super().__init__(
            f"worker duty {duty!r} failed {failures} times in a row without succeeding once; "
            f"last error: {last_error}"
        )
        self.duty = duty
        self.failures = failures


@dataclass
class Duty:
    """A background duty and what the supervisor knows of it."""

    name: str
    body: DutyBody
    stale_after_s: float  # no success for this long: health checks report the duty
    idle: Callable[[], bool] | None = None  # True while the duty has no work: it cannot be late
    started: float = field(default_factory=time.monotonic)
    last_success: float | None = None  # monotonic
    last_success_ms: int | None = None  # wall clock, for reports
    failures: int = 0  # in a row, since the last success
    restarts: int = 0
    last_error: str = ""

    def ok(self) -> None:
        """The duty did its work (or found none to do): it is alive and making progress."""
        self.last_success = time.monotonic()
        self.last_success_ms = int(time.time() * 1000)
        self.failures = 0

    def silent_for(self, now: float | None = None) -> float:
        """Seconds since the last success (since the start when there was none)."""
        now = time.monotonic() if now is None else now
        return now - (self.last_success if self.last_success is not None else self.started)

    def is_stale(self, now: float | None = None) -> bool:
        if self.silent_for(now) <= self.stale_after_s:
            return False
        return not (self.idle is not None and self.idle())

    def report(self, now: float | None = None) -> dict[str, Any]:
        return {
            "healthy": not self.is_stale(now),
            "silent_s": round(self.silent_for(now), 3),
            "stale_after_s": self.stale_after_s if math.isfinite(self.stale_after_s) else None,
            "last_success_ms": self.last_success_ms,
            "failures": self.failures,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }


class Supervisor:
    """Runs duties, restarts the ones that fail, and knows which ones have gone quiet."""

    def __init__(
        self,
        log: Any,
        *,
        max_failures: int | None = None,
        backoff_s: float = 0.2,
        backoff_cap_s: float | None = None,
    ) -> None:
        self.log = log
        self.max_failures = max_failures or int(os.environ.get("WORKFLOW_DUTY_MAX_FAILURES", "10"))
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s or float(
            os.environ.get("WORKFLOW_DUTY_BACKOFF_CAP_SECONDS", "30")
        )
        self.duties: dict[str, Duty] = {}

    def add(
        self,
        name: str,
        body: DutyBody,
        *,
        stale_after_s: float,
        idle: Callable[[], bool] | None = None,
    ) -> Duty:
        """Supervise ``body``; ``idle`` tells when it has no work (it is then never stale)."""
        if name in self.duties:
            raise ValueError(f"duty {name!r} is already supervised")
        duty = Duty(name, body, stale_after_s, idle)
        self.duties[name] = duty
        return duty

    def stale(self) -> list[Duty]:
        now = time.monotonic()
        return [d for d in self.duties.values() if d.is_stale(now)]

    def report(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        return {name: d.report(now) for name, d in self.duties.items()}

    async def run(self) -> None:
        """Run every duty until cancelled; DutyFailedError when one keeps failing.

        A duty that returns has finished its work for good (the worker is stopping).
        """
        tasks = [
            asyncio.create_task(self._keep(d), name=f"duty:{d.name}") for d in self.duties.values()
        ]
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # DutyFailedError propagates; the others are cancelled below
        finally:
            await self._cancel(tasks)

    async def _cancel(self, tasks: list[asyncio.Task[None]]) -> None:
        """Cancel the duties, again if need be: redis-py can lose a cancellation that arrives
        while a blocking read (XREADGROUP BLOCK) returns, and the duty then carries on."""
        pending = {t for t in tasks if not t.done()}
        for _ in range(CANCEL_ATTEMPTS):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=CANCEL_WAIT_S)
        for task in pending:
            self.log.error("duty_not_stopped", duty=task.get_name())
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: reported by run() or logged by _keep already

    async def _keep(self, duty: Duty) -> None:
        while True:
            try:
                await duty.body(duty)
                self.log.info("duty_finished", duty=duty.name)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                duty.failures += 1
                duty.last_error = f"{type(exc).__name__}: {exc}"
                self.log.error(
                    "duty_failed",
                    duty=duty.name,
                    error=duty.last_error,
                    failures=duty.failures,
                    exc_info=True,
                )
                if duty.failures >= self.max_failures:
                    raise DutyFailedError(duty.name, duty.failures, duty.last_error) from exc
            delay = min(self.backoff_cap_s, self.backoff_s * 2 ** (duty.failures - 1))
            delay *= random.uniform(0.8, 1.2)  # restarts of many workers do not come in step
            duty.restarts += 1
            self.log.info("duty_restarting", duty=duty.name, in_s=round(delay, 3))
            await asyncio.sleep(delay)
