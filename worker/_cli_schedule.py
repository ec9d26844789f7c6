"""``wf schedule list|describe|create|pause|resume|delete``: schedules from the command line."""

from __future__ import annotations

import argparse
import json
from typing import Any

import msgspec

from ._cli_runs import json_argument
from ._cli_show import print_table
from ._registry import import_workflow_modules, resolve_workflow_name
from ._schedule_spec import CATCHUPS, OVERLAPS, describe_timing
from ._schedules import (
    ScheduleDescription,
    create_schedule,
    get_schedule,
    list_schedules,
)

ACTIONS = ("list", "describe", "create", "pause", "resume", "delete")


def add_parser(sub: Any) -> None:
    """The ``schedule`` subcommand of ``wf`` (``sub``: the parser's subparsers)."""
    p = sub.add_parser("schedule", help="create, list, describe, pause, resume, delete schedules")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("list", help="every schedule with its next fire time")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("describe", help="a schedule: spec, next fire times, latest ticks")
    a.add_argument("schedule_id")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("create", help="start WORKFLOW with ARGS on --cron or --every")
    a.add_argument("schedule_id")
    a.add_argument("workflow")
    a.add_argument("args", nargs="*", help="JSON values, one per argument")
    timing = a.add_mutually_exclusive_group(required=True)
    timing.add_argument("--cron", help="5 fields, e.g. '*/5 * * * *'")
    timing.add_argument("--every", help="an interval, e.g. 10s, 5m, 1h")
    a.add_argument("--timezone", default="UTC", help="IANA zone of --cron (default UTC)")
    a.add_argument("--overlap", choices=OVERLAPS, default="skip")
    a.add_argument("--catchup", choices=CATCHUPS, default="none")
    a.add_argument("--replace", action="store_true", help="replace a schedule with this id")
    a.add_argument("--import", dest="import_", action="append", help="module defining WORKFLOW")
    for name in ("pause", "resume", "delete"):
        a = actions.add_parser(name, help=f"{name} a schedule")
        a.add_argument("schedule_id")


async def schedule_command(args: argparse.Namespace) -> None:
    """Run ``wf schedule ACTION`` (a refusal: one line on stderr, by wf's error policy)."""
    await _ACTIONS[args.action](args)


async def _create(args: argparse.Namespace) -> None:
    import_workflow_modules(args.import_ or [])
    name = resolve_workflow_name(args.workflow) if args.import_ else args.workflow
    values = [json_argument(i, a) for i, a in enumerate(args.args, 1)]
    options = {o: getattr(args, o) for o in ("cron", "every", "timezone", "overlap", "catchup")}
    schedule = await create_schedule(
        args.schedule_id, name, *values, replace=args.replace, **options
    )
    print(schedule.schedule_id)


def _as_json(value: Any) -> str:
    return json.dumps(msgspec.to_builtins(value), indent=2)


def _when(d: ScheduleDescription) -> str:
    if d.paused:
        return "paused"
    return d.next_fire_times[0].isoformat() if d.next_fire_times else "-"


async def _list(args: argparse.Namespace) -> None:
    found = await list_schedules()
    if args.json:
        print(_as_json(found))
        return
    rows = [[d.schedule_id, d.workflow, _timing(d), _when(d), d.last_run or "-"] for d in found]
    print_table(rows, ["schedule", "workflow", "when", "next fire", "last run"])


def _timing(d: ScheduleDescription) -> str:
    return describe_timing(d.cron, d.every_ms, d.timezone)


async def _describe(args: argparse.Namespace) -> None:
    d = await (await get_schedule(args.schedule_id)).describe()
    if args.json:
        print(_as_json(d))
        return
    print(f"schedule  {d.schedule_id}\nworkflow  {d.workflow}\nwhen      {_timing(d)}")
    print(f"overlap   {d.overlap}\ncatchup   {d.catchup}\nstate     {_when(d)}")
    for at in d.next_fire_times:
        print(f"next      {at.isoformat()}")
    rows = [[t.tick.isoformat(), t.action, t.run_id or "-", str(t.missed)] for t in d.recent]
    print_table(rows, ["tick", "action", "run", "missed before"])


async def _pause(args: argparse.Namespace) -> None:
    await (await get_schedule(args.schedule_id)).pause()


async def _resume(args: argparse.Namespace) -> None:
    await (await get_schedule(args.schedule_id)).resume()


async def _delete(args: argparse.Namespace) -> None:
    await (await get_schedule(args.schedule_id)).delete()


_ACTIONS = {
    "list": _list,
    "describe": _describe,
    "create": _create,
    "pause": _pause,
    "resume": _resume,
    "delete": _delete,
}
