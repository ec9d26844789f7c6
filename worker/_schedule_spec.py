"""Schedules without I/O: the spec a user gives, its tick times, and what to do with due ticks.

A schedule ticks on a cron expression (5 fields, read by croniter, in an IANA time zone) or every
fixed interval (``every="10s"``, parsed like every duration of the engine; ticks are multiples
of the interval since the Unix epoch, so ``every="1h"`` ticks on the hour, in UTC).

Cron ticks follow the wall clock of their zone (``0 9 * * *`` in Europe/Berlin is 08:00 UTC in
winter and 07:00 UTC in summer). Around DST changes, as Vixie cron does: a local time skipped
when clocks go forward fires at the first instant after the gap; a local time that occurs twice
when clocks go back fires once (its first occurrence) when the hour field names fixed hours, and
at both occurrences when it is a wildcard (``*``, ``*/2``), so that "every 5 minutes" keeps its
cadence through the repeated hour.

Every decision is a pure function of the spec and times in ms (the server's clock), so that
tests check them without Redis and every worker decides alike.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Literal, cast, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from croniter import CroniterError, croniter

from ._duration import Duration, to_seconds
from ._errors import InvalidScheduleError

Overlap = Literal["skip", "allow"]
Catchup = Literal["none", "one"]
TickAction = Literal["fired", "skipped", "missed"]
OVERLAPS: tuple[str, ...] = get_args(Overlap)
CATCHUPS: tuple[str, ...] = get_args(Catchup)
ACTIVE_STATUSES = ("pending", "running")  # a run in these keeps overlap="skip" from firing

# a tick fired at most this late counts as on time (workers busy, or restarted quickly): later,
# it was missed, and catchup decides
LATE_GRACE_MS = 10_000
MAX_WALK = 1000  # due ticks counted one by one at most (a cron schedule down for long)
_SCHEDULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


class ScheduleSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a schedule starts and when; stored as JSON with the schedule."""

    workflow: str
    input: str  # the workflow's arguments as JSON, as start() stores them
    cron: str | None = None
    every_ms: int | None = None
    timezone: str = "UTC"
    overlap: Overlap = "skip"
    catchup: Catchup = "none"


class ScheduleTick(msgspec.Struct, frozen=True, kw_only=True):
    """One decision of a schedule: a run started ("fired"), or none ("skipped": its previous run
    was still active; "missed": no worker ran on time). ``missed`` counts the earlier ticks this
    decision dropped (catchup "none") or covered with its run (catchup "one")."""

    tick_ms: int
    action: TickAction
    run_id: str = ""
    missed: int = 0
    at_ms: int = 0  # when it was decided (server clock)

    @property
    def tick(self) -> datetime:
        return datetime.fromtimestamp(self.tick_ms / 1000, UTC)


class ScheduleRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as stored: its spec, state and latest decisions (newest first)."""

    schedule_id: str
    spec: ScheduleSpec
    paused: bool = False
    next_due_ms: int = 0
    last_run: str = ""
    created_ms: int = 0
    history: list[ScheduleTick] = []


class TickPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What to do with a schedule's due ticks: start one run for ``fire`` (None: none), having
    passed over ``missed`` earlier ticks; ``latest`` is the newest due tick; then wait for
    ``next_due``."""

    fire: int | None
    latest: int
    missed: int
    next_due: int


# -- parsing ---------------------------------------------------------------------------------


def check_schedule_id(value: object) -> str:
    if not isinstance(value, str) or not _SCHEDULE_ID.fullmatch(value):
        raise InvalidScheduleError(
            f"invalid schedule id {value!r}: use 1-128 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit"
        )
    return value


def parse_every(every: Duration) -> int:
    """The interval in ms (> 0); InvalidScheduleError for a value that is no positive duration."""
    if isinstance(every, datetime):
        raise InvalidScheduleError(f"every={every!r}: an interval, not a point in time")
    try:
        ms = round(to_seconds(every) * 1000)
    except (TypeError, ValueError) as exc:
        raise InvalidScheduleError(f"every={every!r}: {exc}") from None
    if ms <= 0 or (isinstance(every, int | float) and every <= 0):
        raise InvalidScheduleError(f"every={every!r}: the interval must be positive")
    return ms


def check_cron(cron: object) -> str:
    if not isinstance(cron, str) or len(cron.split()) != 5:
        raise InvalidScheduleError(
            f"cron={cron!r}: use 5 fields 'minute hour day-of-month month day-of-week', "
            "e.g. '*/5 * * * *'"
        )
    try:
        croniter(cron)
    except (CroniterError, ValueError) as exc:
        raise InvalidScheduleError(f"cron={cron!r} does not parse: {exc}") from None
    return cron


def check_timezone(timezone: object) -> str:
    try:
        ZoneInfo(str(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidScheduleError(
            f"unknown time zone {timezone!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None
    return str(timezone)


def _choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise InvalidScheduleError(f"{what}={value!r}: use one of {', '.join(choices)}")
    return value


def parse_spec(
    workflow: str,
    input_json: str,
    *,
    cron: str | None = None,
    every: Duration | None = None,
    timezone: str = "UTC",
    overlap: str = "skip",
    catchup: str = "none",
) -> ScheduleSpec:
    """A checked spec; InvalidScheduleError naming the option that cannot be used."""
    if (cron is None) == (every is None):
        raise InvalidScheduleError("give exactly one of cron=... and every=...")
    spec = ScheduleSpec(
        workflow=workflow,
        input=input_json,
        cron=None if cron is None else check_cron(cron),
        every_ms=None if every is None else parse_every(every),
        timezone=check_timezone(timezone),
        overlap=cast(Overlap, _choice(overlap, OVERLAPS, "overlap")),
        catchup=cast(Catchup, _choice(catchup, CATCHUPS, "catchup")),
    )
    next_tick(spec, 0)  # an expression that never matches (e.g. Feb 30) fails here
    return spec


def describe_timing(cron: str | None, every_ms: int | None, timezone: str) -> str:
    """``cron '*/5 * * * *' (UTC)`` or ``every 10s``, for listings."""
    if cron is not None:
        return f"cron '{cron}' ({timezone})"
    return f"every {timedelta(milliseconds=every_ms or 0).total_seconds():g}s"


# -- tick times ------------------------------------------------------------------------------


def _fixed_hours(cron: str) -> bool:
    return "*" not in cron.split()[1]


def next_tick(spec: ScheduleSpec, after_ms: int) -> int:
    """The schedule's first tick strictly after ``after_ms`` (ms since the epoch)."""
    if spec.every_ms is not None:
        return (after_ms // spec.every_ms + 1) * spec.every_ms
    cron = spec.cron or ""
    zone = ZoneInfo(spec.timezone)
    start = datetime.fromtimestamp(after_ms / 1000, zone)
    try:
        it = croniter(cron, start)
        while True:
            at: datetime = it.get_next(datetime)
            if at.fold == 1 and _fixed_hours(cron):
                continue  # the second occurrence of a repeated local time: fired at the first
            ms = round(at.timestamp() * 1000)
            if ms > after_ms:
                return ms
    except (CroniterError, ValueError) as exc:
        raise InvalidScheduleError(f"cron={cron!r} gives no next time: {exc}") from None


def next_ticks(spec: ScheduleSpec, after_ms: int, count: int) -> list[int]:
    out: list[int] = []
    at = after_ms
    for _ in range(count):
        at = next_tick(spec, at)
        out.append(at)
    return out


def _due_ticks(spec: ScheduleSpec, due_ms: int, now_ms: int) -> tuple[int, int]:
    """(how many ticks are due, the newest of them), from ``due_ms`` (due) up to ``now_ms``."""
    if spec.every_ms is not None:
        count = (now_ms - due_ms) // spec.every_ms + 1
        return count, due_ms + (count - 1) * spec.every_ms
    count, latest = 1, due_ms
    while count < MAX_WALK:
        nxt = next_tick(spec, latest)
        if nxt > now_ms:
            return count, latest
        count, latest = count + 1, nxt
    return count, latest  # counted no further: the newest of those counted stands for the rest


def plan_ticks(
    spec: ScheduleSpec, due_ms: int, now_ms: int, grace_ms: int = LATE_GRACE_MS
) -> TickPlan:
    """What to do at ``now_ms`` with a schedule due since ``due_ms``.

    The newest due tick fires when it is at most ``grace_ms`` late. Earlier due ticks were
    missed: ``catchup="none"`` drops them (and the newest too when it is late), ``"one"`` starts
    one run, for the newest tick, in their place. Then the regular cadence goes on from the first
    tick after ``now_ms``.
    """
    count, latest = _due_ticks(spec, due_ms, now_ms)
    on_time = now_ms - latest <= grace_ms
    fire = latest if on_time or spec.catchup == "one" else None
    missed = count - (1 if fire is not None else 0)
    return TickPlan(
        fire=fire, latest=latest, missed=missed, next_due=next_tick(spec, max(now_ms, latest))
    )


def overlap_blocks(overlap: str, last_status: str | None) -> bool:
    """True when ``overlap="skip"`` and the schedule's previous run is still active."""
    return overlap == "skip" and last_status in ACTIVE_STATUSES


def schedule_run_id(schedule_id: str, tick_ms: int) -> str:
    """The run id of a schedule's tick: the same in every worker, so a tick makes one run."""
    digest = hashlib.sha256(f"{schedule_id}\0{tick_ms}".encode()).hexdigest()
    return f"wrun_sch_{digest[:32]}"
