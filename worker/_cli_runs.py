"""``wf start``, ``wf cancel`` and ``wf runs``: act on runs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from . import _serde
from ._client import get_run, get_world, rerun, start
from ._deployments import migrate_run
from ._errors import WorkflowError
from ._registry import import_workflow_modules, resolve_workflow_name


class CommandArgumentError(WorkflowError, ValueError):
    """An argument of a ``wf`` command that does not parse (exit code 2)."""


def json_argument(position: int, text: str) -> Any:
    """Argument ``position`` (from 1) of ``wf start``: a JSON value."""
    try:
        return json.loads(text)
    except ValueError:
        raise CommandArgumentError(
            f"argument {position} ({text!r}) is not JSON: pass each workflow argument as a JSON "
            "value, e.g. 42, '\"text\"', '[1, 2]' or '{\"key\": 1}'"
        ) from None


async def start_command(args: argparse.Namespace) -> None:
    import_workflow_modules(args.import_ or [])
    # with modules imported, a short name stands for the one workflow it names; without any, the
    # name is passed as it is (a workflow defined only in the workers' code)
    name = resolve_workflow_name(args.workflow) if args.import_ else args.workflow
    values = [json_argument(i, a) for i, a in enumerate(args.args, 1)]
    run = await start(
        name, *values, run_id=args.run_id, deployment_id=args.deployment, priority=args.priority
    )
    print(run.run_id)
    if args.wait:
        print(
            json.dumps(
                _serde.loads(_serde.dumps(await run.result(timeout=args.timeout))), default=str
            )
        )


async def runs_command(args: argparse.Namespace) -> None:
    """``wf runs rerun RUN``: a new run of RUN's workflow with its input (prints its id);
    ``wf runs migrate RUN --to ID``: pin a run to another deployment and wake it there."""
    if args.action == "rerun":
        print((await rerun(args.run_id, new_id=args.new_run_id)).run_id)
        return
    previous = await migrate_run(get_world(), args.run_id, args.to)
    print(f"migrated {args.run_id} from {previous or '(unpinned)'} to {args.to}")


async def cancel_command(args: argparse.Namespace) -> None:
    await get_run(args.run_id).cancel()
    print(f"cancelled {args.run_id}")
