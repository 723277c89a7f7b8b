"""``safealign stack up | down | status``: the command-line face of :mod:`safealign.team.stack`.

Kept apart from cli.py so the stage commands never import the service code. Ports come from flags, else
from the state folder (remembered on the first ``up``), else the defaults in ``stack.Ports``. The state
folder is ``--state-dir``, else $SAFEALIGN_STACK_DIR, else ``.stack``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from safealign.errors import ServiceError

STATE_ENV = "SAFEALIGN_STACK_DIR"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", default=None,
        help=f"the folder holding all of the stack's state (default: ${STATE_ENV}, else .stack)",
    )
    parser.add_argument("--postgres-port", type=int, default=None, help="PostgreSQL (default 15432)")
    parser.add_argument("--mlflow-port", type=int, default=None, help="MLflow server (default 15000)")
    parser.add_argument("--s3-port", type=int, default=None, help="S3 API of SeaweedFS (default 18333)")
    parser.add_argument(
        "--weed-base-port", type=int, default=None,
        help="SeaweedFS's internal servers use this port and the next 13 (default 19330)",
    )


def stack_from_args(args: argparse.Namespace) -> Any:
    from safealign.team.stack import DEFAULT_STATE_DIR, Ports, Stack

    state_dir = args.state_dir or os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR
    given = {
        "postgres": args.postgres_port, "mlflow": args.mlflow_port, "s3": args.s3_port,
        "weed_base": args.weed_base_port,
    }
    given = {k: v for k, v in given.items() if v is not None}
    stack = Stack(state_dir)
    if given:
        base = stack.ports.__dict__ | given
        stack = Stack(state_dir, Ports.from_dict(base))
    return stack


def _status_lines(status: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, info in status.items():
        state = "answers" if info["answers"] else f"DOES NOT ANSWER ({info.get('error', '')})"
        lines.append(f"{name:<9} 127.0.0.1:{info['port']:<6} {state}")
    return "\n".join(lines)


def cmd_up(settings: Any, args: argparse.Namespace) -> None:
    stack = stack_from_args(args)
    result = stack.up()
    print(_status_lines(result["status"]))
    print(f"started in {result['started_in_s']['total']:.1f} s "
          f"({json.dumps({k: v for k, v in result['started_in_s'].items() if k != 'total'})})")
    print(f"state: {stack.state_dir}   exports: safealign stack status --exports")


def cmd_down(settings: Any, args: argparse.Namespace) -> None:
    stack = stack_from_args(args)
    for name, how in stack.down().items():
        print(f"{name:<9} {how}")
    if args.purge:
        stack.purge()
        print(f"deleted {stack.state_dir}")


def cmd_status(settings: Any, args: argparse.Namespace) -> None:
    """Print whether each service answers, then the exports; exit 1 when one does not answer."""
    stack = stack_from_args(args)
    status = stack.status()
    if not stack.started_before():
        print(_status_lines(status))
        raise ServiceError(f"no stack was ever started with {stack.state_dir}: safealign stack up")
    if args.exports:
        print(stack.exports(), end="")
    else:
        print(_status_lines(status))
        print(f"# state: {stack.state_dir}")
        print('# exports for a shell: eval "$(safealign stack status --exports)"')
        print(stack.exports(), end="")
    down = [name for name, info in status.items() if not info["answers"]]
    if down:
        raise ServiceError(f"not answering: {', '.join(down)} (start them: safealign stack up)")


def down_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser)
    parser.add_argument("--purge", action="store_true", help="also delete all data, logs and credentials")


def status_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser)
    parser.add_argument("--exports", action="store_true", help="print only the export lines (for eval)")
