"""Dead letters, for ``wf dlq list|replay|drop`` and the dashboard (see world_redis/_dlq.py).

A replay gives the letter's run a fresh wake-up and deletes the letter; it is refused for an
entry that names no run and for a run that has ended (``wf runs rerun`` starts that one again).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._cli_show import clock, print_table, short, struct_fields
from ._client import get_world
from ._errors import WorkflowError

ACTIVE = ("pending", "running")


class DeadLetterError(WorkflowError, LookupError):
    """A dead letter that does not exist, or cannot be replayed."""


def _store(world: Any) -> Any:
    store = getattr(world, "dead_letters", None)
    if store is None:
        raise WorkflowError("this World keeps no dead-letter streams")
    return store


async def dlq_command(args: argparse.Namespace) -> None:
    world = get_world()
    store = _store(world)
    if args.action == "list":
        letters = await store.list(args.limit)
        if args.json:
            print(json.dumps([{"name": d.name, **struct_fields(d)} for d in letters]))
            return
        print_table(
            [
                [d.name, clock(d.at_ms), d.run_id or "-", d.step_id or "-", short(d.reason, 50)]
                for d in letters
            ],
            ["dead letter", "set aside", "run", "step", "reason"],
        )
        return
    for name in args.names:
        if args.action == "drop":
            await drop_dead_letter(world, name)
            print(f"dropped {name}")
        else:
            run_id = await replay_dead_letter(world, name)
            print(f"replayed {name}: run {run_id} woken")


async def drop_dead_letter(world: Any, name: str) -> None:
    """Delete the dead letter ``name`` (``<partition>:<entry id>``)."""
    store = _store(world)
    letter = await _letter(store, name)
    await store.drop(letter.partition, letter.entry_id)


async def replay_dead_letter(world: Any, name: str) -> str:
    """Wake the run of dead letter ``name`` and delete the letter; the run's id."""
    store = _store(world)
    letter = await _letter(store, name)
    await _replay(world, store, letter)
    return str(letter.run_id)


def parse_name(name: str) -> tuple[int, str]:
    """``<partition>:<entry id>`` -> (partition, entry id)."""
    partition, sep, entry_id = name.partition(":")
    if not sep or not partition.isdigit() or "-" not in entry_id:
        raise DeadLetterError(f"{name!r} is not a dead letter's name: <partition>:<entry id>")
    return int(partition), entry_id


async def _letter(store: Any, name: str) -> Any:
    partition, entry_id = parse_name(name)
    letter = await store.get(partition, entry_id)
    if letter is None:
        raise DeadLetterError(f"no dead letter {name} (wf dlq list shows them)")
    return letter


async def _replay(world: Any, store: Any, letter: Any) -> None:
    if not letter.run_id:
        raise DeadLetterError(
            f"dead letter {letter.name} names no run (an entry that could not be read: "
            f"{letter.reason}); nothing to replay: drop it"
        )
    info = await world.get_run(letter.run_id)
    if info is None:
        raise DeadLetterError(f"run {letter.run_id} of dead letter {letter.name} is gone")
    if info.status not in ACTIVE:
        raise DeadLetterError(
            f"run {letter.run_id} is {info.status}: a wake-up would not change it; "
            f"`wf runs rerun {letter.run_id}` starts it again"
        )
    await store.requeue(letter)
