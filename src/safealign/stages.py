"""The one list of pipeline stages: every front end (CLI, DVC, KFP, ``safealign run``, tests) reads it.

Spelling policy, so a stage is never written three ways by hand:

* ``name`` is the canonical spelling: snake_case, a Python identifier. It is the DVC stage name in
  dvc.yaml, the MLflow tag ``safealign.stage``, the KFP ``StageWorkspace`` stage and the ``--until`` value.
* ``cli`` is derived: the name in kebab-case (``train_reward`` -> ``safealign train-reward``). KFP derives
  the same spelling from the component function ``train_reward_op`` (task ``train-reward-op``).
* ``metrics`` is the stem of the stage's ``metrics/<metrics>.json``; it reads as a noun ("validation")
  where the stage name is a verb ("validate"), which is why it is a field and not derived.

The library function is named by import path and imported on first use, so ``safealign --help`` does not
pay for torch. Adding a stage: append one ``Stage`` here (in DAG order), add its dvc.yaml stage and its
KFP component; the CLI subcommand, the runner and the tests pick it up from this list.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Flag:
    """A stage-specific CLI flag that becomes one keyword argument of the stage function.

    Boolean by default; ``negate`` turns ``--no-resume`` into ``resume=False``: the flag switches off a
    default-on behaviour. With ``choices`` it takes one of those strings (``--suite robustness``) and
    ``default`` is the value when it is absent.
    """

    option: str
    kwarg: str
    help: str
    negate: bool = False
    choices: tuple[str, ...] = ()
    default: str | None = None

    @property
    def dest(self) -> str:
        return self.option.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a ``(settings, **flags) -> dict`` library function and where it shows up."""

    name: str
    metrics: str
    function: str  # "package.module:function", imported lazily
    torch: bool  # runs torch: the OpenMP wait policy must be chosen before the import
    help: str
    description: str
    flags: tuple[Flag, ...] = field(default_factory=tuple)

    @property
    def cli(self) -> str:
        return self.name.replace("_", "-")

    @property
    def dvc(self) -> str:
        return self.name

    @property
    def module(self) -> str:
        return self.function.partition(":")[0]

    def load(self) -> Callable[..., Any]:
        """Import and return the stage function."""
        module, _, attr = self.function.partition(":")
        return getattr(importlib.import_module(module), attr)


STAGES: tuple[Stage, ...] = (
    Stage(
        name="validate",
        metrics="validation",
        function="safealign.data.validate:validate_data",
        torch=False,
        help="validate data/ with Great Expectations and write the splits",
        description=(
            "Check data/ (columns, types, nulls, score ranges, unique ids, text lengths, label coverage, no "
            "prompt shared across splits) with a Great Expectations suite. Writes train/val/heldout splits, "
            "a JSON and an HTML report and metrics/validation.json. Exits 2 naming file, row and field on "
            "failure, leaving the outputs of the previous good run untouched."
        ),
    ),
    Stage(
        name="train_reward",
        metrics="train_reward",
        function="safealign.reward.train:train_reward",
        torch=True,
        help="train the multi-label reward regression model",
        description=(
            "Fine-tune an encoder with one sigmoid output per aspect (MSE, masked where a row has no label) "
            "on the train split; early stopping on the validation split. Writes a folder loadable with "
            "RewardModel.from_pretrained(path)."
        ),
    ),
    Stage(
        name="calibrate",
        metrics="calibration",
        function="safealign.reward.calibrate:calibrate",
        torch=True,
        help="calibration and probe gate for the reward model",
        description=(
            "Score the held-out split: R^2, MAE, Spearman per aspect, safety AUROC, reliability plots, and "
            "the probe orderings. Exits 3 with the failing aspects or orderings when any R^2 is at or below "
            "calibrate.r2_threshold or any probe pass rate is under calibrate.min_probe_pass."
        ),
    ),
    Stage(
        name="grpo",
        metrics="grpo",
        function="safealign.refresh.rounds:train_grpo_rounds",
        torch=True,
        help="fine-tune the policy with GRPO + LoRA against the reward model",
        description=(
            "Group Relative Policy Optimization: G completions per prompt, reward = sum w_k r_k, advantage "
            "= (r - group mean) / group std (zero for flat groups), no value critic. Checkpoints every "
            "grpo.checkpoint_every steps and resumes from the last checkpoint after a crash. With "
            "grpo.selection (the default) it validates the policy every few steps on train prompts held "
            "out of training and keeps the safest step whose benign refusals, aspect scores and "
            "adversarial refusals pass gates like promotion's; metrics/grpo.json records every validation "
            "and the kept step. With grpo.rounds > 1 each further round samples the policy on train prompts, "
            "labels the replies into data/refresh/round-N.jsonl, retrains and recalibrates the reward model "
            "(exit 3 when its gate says no) and continues GRPO from the adapter; metrics/rounds.json holds "
            "every round's on-policy calibration and held-out evaluation."
        ),
        flags=(
            Flag("--no-resume", "resume", "ignore existing checkpoints and start over", negate=True),
        ),
    ),
    Stage(
        name="evaluate",
        metrics="evaluation",
        function="safealign.evaluation.evaluate:evaluate",
        torch=True,
        help="compare base and aligned policy per aspect and on refusals",
        description=(
            "Generate from the base and the aligned policy on held-out adversarial prompts and benign "
            "prompts with the same seed and decoding; report per-aspect reward-model scores with bootstrap "
            "intervals, refusal and over-refusal rates from an independent refusal detector (with its "
            "measured precision, recall and kappa), the interval-based gate verdicts, lengths and examples. "
            "The robustness suite wraps held-out harmful prompts in attack templates and two-turn retries."
        ),
        flags=(
            Flag(
                "--suite",
                "suite",
                "all (default): both suites into metrics/evaluation.json; standard: without the robustness "
                "suite; robustness: only it, into metrics/robustness.json and artifacts/robustness/",
                choices=("all", "standard", "robustness"),
                default="all",
            ),
        ),
    ),
    Stage(
        name="promote",
        metrics="promotion",
        function="safealign.registry.promotion:promote",
        torch=False,
        help="register models in MLflow and move the champion alias if every gate passes",
        description=(
            "Register the reward model and the policy adapter, set alias 'challenger', and move "
            "'champion' only when the safety gain, aspect drop, benign refusal and champion comparison "
            "gates all pass. Exits 3 when refused and leaves 'champion' untouched."
        ),
        flags=(Flag("--dry-run", "dry_run", "explain the verdict without writing anything"),),
    ),
)

NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def get(name: str) -> Stage:
    """The stage called ``name`` in either spelling (``train_reward`` or ``train-reward``), else KeyError."""
    for stage in STAGES:
        if name in (stage.name, stage.cli):
            return stage
    raise KeyError(f"unknown stage {name!r} (stages: {', '.join(NAMES)})")


def metrics_name(stage: str) -> str:
    """The stem of ``stage``'s metrics file; a name outside the registry is its own stem."""
    try:
        return get(stage).metrics
    except KeyError:
        return stage
