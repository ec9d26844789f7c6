"""Schedule specs without Redis: parsing, tick times (DST in a non-UTC zone), catchup and overlap."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from worker import InvalidScheduleError
from worker._ids import check_run_id
from worker._schedule_spec import (
    LATE_GRACE_MS,
    ScheduleSpec,
    check_schedule_id,
    next_tick,
    next_ticks,
    overlap_blocks,
    parse_spec,
    plan_ticks,
    schedule_run_id,
)

BERLIN = ZoneInfo("Europe/Berlin")


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def utc(at_ms: int) -> datetime:
    return datetime.fromtimestamp(at_ms / 1000, UTC)


def spec(**options: object) -> ScheduleSpec:
    return parse_spec("flow", "[]", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"cron": "not a cron"},
        {"cron": "61 * * * *"},
        {"cron": "* * * * * *"},  # 6 fields: seconds are not offered
        {"cron": "0 0 30 2 *"},  # February 30th never comes
        {"every": "soon"},
        {"every": "0s"},
        {"every": 0},
        {"every": -5},
        {"every": timedelta(0)},
        {"every": datetime(2030, 1, 1, tzinfo=UTC)},
        {"every": "1s", "timezone": "Mars/Olympus"},
        {"every": "1s", "overlap": "sometimes"},
        {"every": "1s", "catchup": "all"},
        {},
        {"every": "1s", "cron": "* * * * *"},
    ],
)
def test_options_that_cannot_be_used_are_refused(options: dict[str, object]) -> None:
    """Each unusable option raises InvalidScheduleError (a ValueError) naming it."""
    with pytest.raises(InvalidScheduleError):
        spec(**options)


@pytest.mark.parametrize("bad", ["", "-x", "a b", "a/b", "x" * 129, 7])
def test_schedule_ids_must_be_safe_in_key_names(bad: object) -> None:
    """Ids with spaces, slashes, a leading dash or over 128 characters are refused."""
    with pytest.raises(InvalidScheduleError):
        check_schedule_id(bad)
    assert check_schedule_id("nightly-report:eu.1") == "nightly-report:eu.1"


def test_every_ticks_on_multiples_of_its_interval_since_the_epoch() -> None:
    """every="10s" ticks at :00, :10, :20... whatever the time it is asked from."""
    s = spec(every="10s")
    assert s.every_ms == 10_000
    assert next_tick(s, 1_000) == 10_000
    assert next_tick(s, 10_000) == 20_000  # strictly after
    assert next_ticks(s, 25_000, 3) == [30_000, 40_000, 50_000]


def test_cron_ticks_follow_the_wall_clock_of_their_zone_across_dst() -> None:
    """0 9 * * * in Europe/Berlin is 08:00 UTC in winter and 07:00 UTC in summer."""
    s = spec(cron="0 9 * * *", timezone="Europe/Berlin")
    march = ms(datetime(2026, 3, 27, 12, tzinfo=UTC))  # Berlin moves to CEST on March 29
    ticks = [utc(t) for t in next_ticks(s, march, 3)]
    assert [t.hour for t in ticks] == [8, 7, 7]
    assert [t.astimezone(BERLIN).hour for t in ticks] == [9, 9, 9]


def test_a_local_time_skipped_by_dst_fires_right_after_the_gap() -> None:
    """30 2 * * * on the night clocks jump from 02:00 to 03:00 fires at 03:00 local, once."""
    s = spec(cron="30 2 * * *", timezone="Europe/Berlin")
    ticks = next_ticks(s, ms(datetime(2026, 3, 28, 12, tzinfo=BERLIN)), 2)
    local = [utc(t).astimezone(BERLIN) for t in ticks]
    assert (local[0].day, local[0].hour, local[0].minute) == (29, 3, 0)
    assert (local[1].day, local[1].hour, local[1].minute) == (30, 2, 30)


def test_a_fixed_local_time_repeated_by_dst_fires_once() -> None:
    """30 2 * * * on the night 02:00-03:00 happens twice fires at its first occurrence only."""
    s = spec(cron="30 2 * * *", timezone="Europe/Berlin")
    ticks = next_ticks(s, ms(datetime(2026, 10, 24, 12, tzinfo=BERLIN)), 2)
    assert [utc(t) for t in ticks] == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 CEST
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),  # 02:30 CET, the next day
    ]


def test_a_wildcard_hour_keeps_its_cadence_through_the_repeated_hour() -> None:
    """0 * * * * fires every real hour on the night clocks go back (02:00 local twice)."""
    s = spec(cron="0 * * * *", timezone="Europe/Berlin")
    ticks = next_ticks(s, ms(datetime(2026, 10, 25, 0, 30, tzinfo=BERLIN)), 4)
    assert [b - a for a, b in itertools.pairwise(ticks)] == [3_600_000] * 3


def test_an_on_time_tick_fires_and_the_cadence_goes_on() -> None:
    """Due at T, looked at shortly after: fire T, next due T + interval."""
    s = spec(every="10s")
    plan = plan_ticks(s, 100_000, 100_300)
    assert (plan.fire, plan.missed, plan.next_due) == (100_000, 0, 110_000)


def test_catchup_none_drops_missed_ticks_and_a_late_one() -> None:
    """Ten ticks due, the newest one 30 s late: none fires; the next is the next future tick."""
    s = spec(every="60s", catchup="none")
    now = 600_000 + 30_000
    plan = plan_ticks(s, 60_000, now)
    assert plan.fire is None
    assert plan.missed == 10
    assert plan.next_due == 660_000


def test_catchup_none_fires_the_newest_tick_when_it_is_on_time() -> None:
    """A worker that looks 1.5 ticks late fires the newest tick and drops the one before."""
    s = spec(every="1s", catchup="none")
    plan = plan_ticks(s, 10_000, 11_500)
    assert (plan.fire, plan.missed, plan.next_due) == (11_000, 1, 12_000)


def test_catchup_one_starts_one_run_for_the_missed_ticks() -> None:
    """Ten ticks due, the newest late: one run, for the newest tick, then the regular cadence."""
    s = spec(every="60s", catchup="one")
    plan = plan_ticks(s, 60_000, 630_000)
    assert (plan.fire, plan.missed, plan.next_due) == (600_000, 9, 660_000)


def test_lateness_within_the_grace_counts_as_on_time() -> None:
    """A tick decided LATE_GRACE_MS late still fires with catchup none; a bit later, it does not."""
    s = spec(cron="0 * * * *", catchup="none")
    hour = 3_600_000
    assert plan_ticks(s, hour, hour + LATE_GRACE_MS).fire == hour
    assert plan_ticks(s, hour, hour + LATE_GRACE_MS + 1).fire is None


@pytest.mark.parametrize(
    ("overlap", "status", "blocks"),
    [
        ("skip", "running", True),
        ("skip", "pending", True),
        ("skip", "completed", False),
        ("skip", "failed", False),
        ("skip", None, False),
        ("allow", "running", False),
    ],
)
def test_overlap_skip_blocks_only_while_the_previous_run_is_active(
    overlap: str, status: str | None, blocks: bool
) -> None:
    """overlap="skip" holds a tick back while the previous run is pending or running."""
    assert overlap_blocks(overlap, status) is blocks


def test_tick_run_ids_are_stable_distinct_and_valid() -> None:
    """The same (schedule, tick) gives the same run id everywhere; another tick another id."""
    a = schedule_run_id("nightly", 60_000)
    assert a == schedule_run_id("nightly", 60_000)
    assert len({a, schedule_run_id("nightly", 120_000), schedule_run_id("daily", 60_000)}) == 3
    assert check_run_id(a) == a
