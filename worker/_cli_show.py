"""``wf inspect``: runs, a run, its events, steps, sleeps, hooks and streams, the queues and the
deployments, as tables or (``--json``) as JSON; the table helpers the other commands share."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from . import _serde
from ._children import children_of
from ._client import get_run, get_world
from ._deployments import base_queue, deployment_store, lane_deployment, live_window_ms
from ._events import RunCreated, sleeps_from_events
from ._pool_world import pool_queues

INVALID = "<invalid>"


def clock(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def moment(ms: int) -> str:
    """A time with its date, to the second (UTC)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def short(text: str | None, width: int = 60) -> str:
    text = "" if text is None else text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def valid(run: Any, field: str, text: str) -> str:
    """``text`` for a cell of ``field``, or ``<invalid>`` when the run's stored field is corrupt."""
    return INVALID if field in run.corrupt_fields else text


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


async def print_events(run_id: str) -> None:
    events = await get_run(run_id).events()
    rows = []
    for ev in events:
        payload = " ".join(
            f"{k}={exception_summary(v) if k == 'error' else v}"
            for k, v in struct_fields(ev).items()
            if k not in ("seq", "id", "ts", "corr", "seed")  # the seed keys hook tokens: not shown
        )
        rows.append(
            [
                str(ev.seq),
                clock(ev.ts),
                str(ev.__struct_config__.tag),
                ev.corr or "-",
                short(payload, 70),
            ]
        )
    print_table(rows, ["seq", "time", "event", "correlation id", "data"])


def exception_summary(text: str) -> str:
    """``Type: message`` of a serialized error, for one table cell."""
    try:
        value = _serde.loads(text)
    except Exception:
        return text
    if isinstance(value, BaseException):
        return f"{getattr(value, 'type_name', type(value).__name__)}: {value}"
    return text


def struct_fields(ev: Any) -> dict[str, Any]:
    return {f: getattr(ev, f) for f in ev.__struct_fields__}


async def inspect_command(args: argparse.Namespace) -> None:
    world = get_world()
    if args.what == "runs":
        runs, cursor = await world.list_runs(
            status=args.status, workflow=args.workflow, limit=args.limit, cursor=args.cursor
        )
        if args.json:
            print(json.dumps([struct_fields(r) for r in runs]))
            return
        rows = [
            [
                r.run_id,
                valid(r, "workflow", r.workflow),
                valid(r, "status", r.status),
                valid(r, "created_at", clock(r.created_at)),
                valid(r, "completed_at", clock(r.completed_at)),
                valid(r, "output", short(r.output, 30)),
            ]
            for r in runs
        ]
        header = ["run id", "workflow", "status", "created", "completed", "output"]
        if any(r.parent_run_id for r in runs):  # child runs listed: show whose
            rows = [[*row, r.parent_run_id or "-"] for row, r in zip(rows, runs, strict=True)]
            header.append("parent")
        print_table(rows, header)
        bad = [r for r in runs if r.corrupt_fields]
        if bad:
            print()
        for r in bad:
            print(f"{r.run_id}: invalid {', '.join(r.corrupt_fields)} (stored value unreadable)")
        if cursor:
            print(f"\nmore: --cursor {cursor}")
    elif args.what == "run":
        info = await get_run(args.id).info()
        shown = struct_fields(info)
        events = await get_run(args.id).events()
        created = next((e for e in events if isinstance(e, RunCreated)), None)
        shown["priority"] = created.priority if created is not None else 0
        shown["children"] = children_of(events)
        if info.status in ("pending", "running"):
            shown["waiting_on"] = await _waiting_on(world, args.id)
            shown.update(await _deployment_state(world, info.deployment))
        print(json.dumps(shown, indent=2))
    elif args.what == "queues":
        await _inspect_queues(world, args.json)
    elif args.what == "deployments":
        await _inspect_deployments(world, args.json)
    elif args.what == "flow":
        await _inspect_flow(world, args.json)
    elif args.what == "events":
        if args.json:
            events = await get_run(args.id).events()
            print(
                json.dumps([{"type": e.__struct_config__.tag, **struct_fields(e)} for e in events])
            )
        else:
            await print_events(args.id)
    elif args.what == "sleeps":
        await show_sleeps(args.id, args.json)
    elif args.what == "steps":
        steps = await get_run(args.id).steps()
        if args.json:
            print(json.dumps([struct_fields(s) for s in steps]))
            return
        print_table(
            [[s.step_id, s.name, s.status, str(s.attempt), short(s.output, 30)] for s in steps],
            ["step id", "name", "status", "attempt", "output"],
        )
    elif args.what == "hooks":
        hooks = await world.list_hooks(args.id)
        if args.json:
            print(json.dumps([{"hook_id": h, "token": t, "metadata": m} for h, t, m in hooks]))
            return
        print_table([[h, t, short(m, 40)] for h, t, m in hooks], ["hook id", "token", "metadata"])
    elif args.what == "streams":
        names = await world.streams.list_streams(args.id)
        print(json.dumps(names) if args.json else "\n".join(names))


async def _waiting_on(world: Any, run_id: str) -> list[dict[str, Any]]:
    """The run's steps waiting in (or running from) a queue other than default, with the lag
    and pending count of that queue's stream in the run's partition."""
    pools = pool_queues(world)
    waiting = await pools.waiting_on(run_id)
    if not waiting:
        return []
    stats = {(s.queue, s.partition): s for s in await pools.queue_stats()}
    out = []
    for step_id, queue, partition in waiting:
        # a lane (``gpu@dpl_x``) shown as its queue and the deployment whose workers serve it
        row: dict[str, Any] = {
            "step_id": step_id,
            "queue": base_queue(queue),
            "deployment": lane_deployment(queue),
            "partition": partition,
        }
        s = stats.get((queue, partition))
        if s is not None:
            row.update(lag=s.lag, pending=s.pending, oldest_age_ms=s.oldest_age_ms)
        out.append(row)
    return out


async def _deployment_state(world: Any, deployment: str) -> dict[str, Any]:
    """Whether an active run's deployment has a live worker: if not, the run waits for one."""
    if not deployment:  # pinned by the first worker that takes it
        return {"deployment_live": None, "waiting_for_deployment": False}
    known = await deployment_store(world).registry(live_window_ms())
    live = any(d.deployment_id == deployment and d.live for d in known)
    return {"deployment_live": live, "waiting_for_deployment": not live}


async def _inspect_deployments(world: Any, as_json: bool) -> None:
    stats = await deployment_store(world).stats(live_window_ms())
    if as_json:
        print(json.dumps([struct_fields(s) for s in stats]))
        return
    print_table(
        [
            [
                s.deployment_id,
                "live" if s.live else "gone",
                str(len(s.workers)),
                short(",".join(s.workflows), 40) or "-",
                str(s.runs_pinned),
                str(s.waiting),
                str(s.pending),
                clock(s.first_seen_ms),
                clock(s.last_seen_ms),
            ]
            for s in stats
        ],
        [
            "deployment",
            "state",
            "workers",
            "workflows",
            "runs pinned",
            "waiting",
            "pending",
            "first seen",
            "last seen",
        ],
    )


async def _inspect_queues(world: Any, as_json: bool) -> None:
    stats = await pool_queues(world).queue_stats()
    if as_json:
        shown = [
            {
                **struct_fields(s),
                "queue": base_queue(s.queue),
                "deployment": lane_deployment(s.queue),
            }
            for s in stats
        ]
        print(json.dumps(shown))
        return

    def age(ms: int | None) -> str:
        return "-" if ms is None else f"{ms / 1000:.1f}s"

    rows = [
        [str(s.partition), base_queue(s.queue), lane_deployment(s.queue) or "-", str(s.length)]
        for s in stats
    ]
    print_table(
        [
            [*row, str(s.lag), str(s.pending), age(s.oldest_age_ms)]
            for row, s in zip(rows, stats, strict=True)
        ],
        ["partition", "queue", "deployment", "length", "lag", "pending", "oldest"],
    )


async def _inspect_flow(world: Any, as_json: bool) -> None:
    """Each flow-control limit in use: its settings, slots held, waiters, starts in its window."""
    store = getattr(world, "flow", None)
    limits: list[dict[str, Any]] = await store.limits() if store is not None else []
    if as_json:
        print(json.dumps(limits))
        return

    def rate(lim: dict[str, Any]) -> str:
        return f"{lim['rate']}/{lim['window_ms'] / 1000:g}s" if lim["rate"] else "-"

    print_table(
        [
            [
                lim["limit"],
                f"{lim['holders']}/{lim['concurrency']}" if lim["concurrency"] else "-",
                str(lim["waiting"]),
                f"{lim['starts']} ({rate(lim)})" if lim["rate"] else "-",
            ]
            for lim in limits
        ],
        ["limit", "slots in use", "waiting", "starts in window"],
    )


async def show_sleeps(run_id: str, as_json: bool) -> None:
    """The run's durable sleeps from its log: when each was created, when it is due, and whether
    it is still waiting, completed, or abandoned (the run ended, or the code stopped waiting)."""
    run = get_run(run_id)
    info = await run.info()
    rows = sleeps_from_events(await run.events(), info.status in ("pending", "running"))
    if as_json:
        print(json.dumps(rows))
        return
    print_table(
        [
            [s["wait_id"], moment(s["created_at"]), moment(s["resume_at"]), s["status"]]
            for s in rows
        ],
        ["wait id", "created", "resume at", "status"],
    )
