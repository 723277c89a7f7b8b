"""``safealign grpo``: GRPO + LoRA against the multi-aspect reward model, with checkpoints and resume.

The fast engine's run in four parts, each read top to bottom:

1. ``set_up``: the train prompts (held-out prompts are never read here), the reward model, the validation
   prompts checkpoint selection carves out, the aspect weights and the safety constraint, then the seeded
   policy + LoRA, its optimizer, the prompt sampler;
2. ``resume_from_checkpoint``: restore the last checkpoint of this same run, if there is one
   (``checkpoints.py``);
3. ``train_steps``: per step, sample prompts -> ``engine.grpo_step`` (generate G per prompt, score once,
   group advantages, one forward/backward, AdamW) -> log -> validate (when selection is on) -> checkpoint
   every ``grpo.checkpoint_every`` steps;
4. ``finish``: keep the selected step's adapter, summarise, write the outputs atomically (``outputs.py``).

``grpo.engine`` picks the engine (``engine_choice.py``): ``auto`` runs this one on a CPU-only machine and
TRL's GRPOTrainer with the same features (``trl_engine.py``) on CUDA; both compute the objective of
``objective.py``. This engine is CPU-only and refuses a CUDA machine.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# libgomp's thread wait policy (spin briefly on an idle CPU, sleep on a shared one) must be set before torch
# loads: the CLI calls safealign.common.openmp_wait.choose_wait_policy() before importing this module.
import numpy as np
import torch

from safealign import tracking
from safealign.common.atomic import remove_stale_temps
from safealign.common.jsonl import read_prompts
from safealign.common.layout import Layout
from safealign.config import Settings
from safealign.policy.checkpoints import (
    STEP_LOG,
    Progress,
    RunIdentity,
    RunObjects,
    find_resumable,
    list_checkpoints,
    refuse_checkpoints_past,
    remove_leftovers,
    restore,
    run_identity,
    save_checkpoint,
)
from safealign.policy.constraint import LagrangeConstraint, constraint_from_settings
from safealign.policy.engine import StepConfig, StepResult, Trainable, grpo_step
from safealign.policy.engine_choice import check_fast_supported, resolve_engine
from safealign.policy.loading import load_policy, with_adapter
from safealign.policy.objective import Objective, lr_factor
from safealign.policy.outputs import (
    append_row,
    as_recorded,
    peak_rss_gib,
    per_kind_metrics,
    summarize,
    write_stage_outputs,
)
from safealign.policy.prompts import PromptEncoder, PromptSampler
from safealign.policy.refusal_probe import probe_benign, substitute
from safealign.policy.reward_adapter import Scorer, load_scorer
from safealign.policy.selection import Selector, build_selector, observe_and_log, validation_steps
from safealign.policy.trl_engine import train_grpo_trl

log = logging.getLogger(__name__)


def build_policy(settings: Settings, init_adapter: Path | None = None) -> tuple[Any, Any]:
    """Base policy (fp32) wrapped in a LoRA adapter; only the adapter is trainable.

    The adapter is fresh, or ``init_adapter`` loaded trainable: a refresh round continues the policy it
    sampled from (as Safe-RLHF does), so the result is still ONE adapter over the unchanged base model.
    """
    base, tokenizer = load_policy(settings)
    base.config.use_cache = True
    return with_adapter(base, settings, init_adapter), tokenizer


def build_optimizer(model: Any, settings: Settings) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW on the LoRA parameters; linear warm-up then constant (the paper trains at a fixed lr)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.grpo.learning_rate, weight_decay=0.0)
    schedule = functools.partial(lr_factor, warmup_steps=settings.grpo.warmup_steps)  # objective.py
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return optimizer, scheduler


@dataclass
class FastRun:
    """One fast-engine run: built by ``set_up``, advanced by ``train_steps``, closed by ``finish``."""

    settings: Settings
    layout: Layout
    scorer: Scorer
    objective: Objective  # per-kind aspect weights and KL coefficients (objective.py, shared with TRL)
    constraint: LagrangeConstraint | None
    selector: Selector | None
    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: PromptSampler
    encoder: PromptEncoder
    step_cfg: StepConfig
    identity: RunIdentity  # which run this is: the checkpoints it may resume from
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per step done, resumed ones included
    start_step: int = 0
    resumed_from: int | None = None
    elapsed_before: float = 0.0  # wall time of the steps done before a resume

    @property
    def checkpointed(self) -> RunObjects:
        """What a checkpoint saves and a resume restores."""
        return RunObjects(
            self.model, self.optimizer, self.scheduler, self.sampler, self.constraint, self.selector
        )

    @property
    def trainable(self) -> Trainable:
        return Trainable(self.model, self.tokenizer, self.optimizer, self.scheduler)

    @property
    def weights(self) -> np.ndarray:
        return self.objective.weights

    @property
    def benign_weights(self) -> np.ndarray:
        return self.objective.benign_weights

    @property
    def benign_beta(self) -> float:
        return self.objective.benign_beta


# --------------------------------------------------------------------------------------------- 1. set-up


def set_up(settings: Settings, scorer: Scorer | None = None, init_adapter: Path | None = None) -> FastRun:
    """Everything a run needs, in the order the seeded RNG draws depend on (LoRA init after the seeds)."""
    cfg = settings.grpo
    layout = Layout.from_settings(settings)
    adversarial = read_prompts(layout.adversarial_split("train"))
    benign = (
        read_prompts(layout.benign_split("train")) if cfg.include_benign and cfg.benign_fraction > 0 else []
    )
    scorer = scorer or load_scorer(settings)
    selector = None
    if cfg.selection is not None:
        adversarial, benign, selector = build_selector(settings, adversarial, benign, scorer)
    objective = Objective.from_settings(settings, scorer.aspects)
    constraint = constraint_from_settings(settings, scorer.aspects)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model, tokenizer = build_policy(settings, init_adapter)
    optimizer, scheduler = build_optimizer(model, settings)
    return FastRun(
        settings=settings,
        layout=layout,
        scorer=scorer,
        objective=objective,
        constraint=constraint,
        selector=selector,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=PromptSampler(adversarial, benign, cfg.prompts_per_step, cfg.benign_fraction, cfg.seed),
        encoder=PromptEncoder(tokenizer, settings.policy.system_prompt, cfg.max_prompt_tokens),
        step_cfg=StepConfig.from_settings(cfg),
        identity=run_identity(settings, scorer, init_adapter),
    )


# --------------------------------------------------------------------------------------------- 2. resume


def resume_from_checkpoint(run: FastRun, allowed: bool = True) -> None:
    """Continue from this run's newest checkpoint, if any; ``allowed=False`` deletes every checkpoint.

    Checkpoints of other runs (other settings, reward model, data, code or step count) stay where they are
    and are not resumed; one of the same settings past ``grpo.steps`` is refused (exit 2).
    """
    root = run.layout.checkpoints_dir
    if not allowed:
        if root.exists():
            shutil.rmtree(root)
        return
    for path in remove_leftovers(root):
        log.info("removed %s, left by a killed checkpoint write", path)
    checkpoints = list_checkpoints(root)
    refuse_checkpoints_past(checkpoints, run.identity)
    others = {c.path.parent for c in checkpoints if c.fingerprint != run.identity.fingerprint}
    if others:
        log.info("%d other run(s) keep their checkpoints in %s; not resuming them", len(others), root)
    found = find_resumable(checkpoints, run.identity)
    if found is None:
        return
    ckpt, state = found
    progress = restore(state, run.checkpointed)
    run.start_step = run.resumed_from = progress.step
    run.rows = progress.rows
    run.elapsed_before = progress.elapsed_s
    log.info("resuming GRPO from %s (step %d of %d)", ckpt.path, ckpt.step, run.settings.grpo.steps)


# --------------------------------------------------------------------------------------------- 3. the loop


def train_steps(run: FastRun, t_start: float) -> None:
    """Steps ``start_step + 1 .. grpo.steps``: step, log, validate, show samples, checkpoint."""
    import mlflow
    from tqdm import tqdm

    cfg = run.settings.grpo
    sel = cfg.selection
    to_validate = set(validation_steps(cfg.steps, sel.start, sel.every)) if sel else set()
    if run.selector is not None and not run.selector.records:
        observe_and_log(run.selector, run.model, run.tokenizer, run.scorer, 0)
    bar = tqdm(total=cfg.steps, initial=run.start_step, desc="grpo", unit="step", dynamic_ncols=True)
    for step in range(run.start_step + 1, cfg.steps + 1):
        drawn, result, row = one_step(run, step)
        run.rows.append(row)
        mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "step"}, step=step)
        append_row(run.identity.folder(run.layout.checkpoints_dir) / STEP_LOG, row)
        bar.set_postfix(
            reward=f"{row['reward_mean']:.3f}",
            flat=f"{row['frac_flat_groups']:.2f}",
            s=f"{row['s_step']:.1f}",
        )
        bar.update(1)
        if run.selector is not None and step in to_validate:
            observe_and_log(run.selector, run.model, run.tokenizer, run.scorer, step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == run.start_step + 1:
            log_samples(run, step, drawn, result)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            progress = Progress(step, run.rows, run.elapsed_before + time.perf_counter() - t_start)
            save_checkpoint(run.layout.checkpoints_dir, run.identity, run.checkpointed, progress)
    bar.close()


def one_step(run: FastRun, step: int) -> tuple[list[str], StepResult, dict[str, Any]]:
    """Draw this step's prompts and run one GRPO step on them: ``(prompts, result, the step's row)``.

    Benign prompts get their own aspect weights, KL coefficient and refusal penalty
    (``grpo.benign_weights``, ``grpo.benign_beta``, ``grpo.benign_refusal_penalty``); the safety constraint
    covers the adversarial ones only.
    """
    cfg = run.settings.grpo
    drawn, adversarial = run.sampler.draw()
    drawn, forced, probe = probe_step(run, drawn, adversarial)
    treatment = run.objective.treatment(adversarial, forced)
    result = grpo_step(
        run.trainable, run.encoder.batch(drawn), treatment, run.scorer, run.step_cfg, run.constraint
    )
    row: dict[str, Any] = {"step": step, **result.metrics, **probe}
    aspects = list(run.scorer.aspects)
    row.update(per_kind_metrics(result.scores, result.rewards, adversarial, cfg.num_generations, aspects))
    if run.constraint is None:
        row["lambda"] = 0.0
    return drawn, result, row


def probe_step(
    run: FastRun, drawn: list[str], adversarial: list[bool]
) -> tuple[list[str], dict[int, list[int]], dict[str, float]]:
    """``grpo.benign_refusal_probe``: greedy-decode that many benign train prompts; the refused ones take
    the drawn benign prompts' places with their greedy reply as one sample (policy/refusal_probe.py).

    Returns the step's prompts, the forced completions and the step row's probe columns (none when off).
    """
    k = run.settings.grpo.benign_refusal_probe
    if not k:
        return drawn, {}, {}
    t0 = time.perf_counter()
    probed = run.sampler.draw_benign(k)
    refused = probe_benign(run.model, run.tokenizer, run.encoder, probed, run.step_cfg.max_new_tokens)
    drawn, forced = substitute(drawn, adversarial, refused)
    columns = {
        "probe_refused_frac": len(refused) / max(1, len(probed)),
        "probe_forced": float(len(forced)),
        "s_probe": time.perf_counter() - t0,
    }
    return drawn, forced, columns


def log_samples(run: FastRun, step: int, drawn: list[str], result: StepResult) -> None:
    """What the policy actually says, next to the numbers (reward hacking shows here first)."""
    import mlflow

    g = run.settings.grpo.num_generations
    samples = [
        {
            "prompt": drawn[i // g],
            "completion": text,
            "scores": dict(zip(run.scorer.aspects, map(float, sc), strict=True)),
        }
        for i, (text, sc) in enumerate(zip(result.completions, result.scores, strict=True))
    ]
    mlflow.log_text(json.dumps(samples, indent=1, ensure_ascii=False), f"samples/step-{step:06d}.json")


# --------------------------------------------------------------------------------------------- 4. finish


def finish(run: FastRun, t_start: float) -> dict[str, Any]:
    """Load the selected step's adapter (selection on), summarise, write and log the stage's outputs."""
    import mlflow

    cfg, rows = run.settings.grpo, as_recorded(run.rows)
    selection = run.selector.finish(run.model, cfg.steps) if run.selector else None
    if selection:
        mlflow.set_tag("safealign.grpo.selected_step", str(selection["selected_step"]))
    wall_this_run = time.perf_counter() - t_start
    summary = {
        "engine": "fast",
        "steps": len(rows),
        "resumed_from": run.resumed_from,
        "wall_time_s": round(run.elapsed_before + wall_this_run, 2),
        "wall_time_this_process_s": round(wall_this_run, 2),
        "seconds_per_step": round((run.elapsed_before + wall_this_run) / max(1, len(rows)), 3),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "lambda_final": run.constraint.lam if run.constraint else None,
        "aspects": list(run.scorer.aspects),
        "weights": [float(w) for w in run.weights],
        "benign_weights": [float(w) for w in run.benign_weights],
        "beta": cfg.beta,
        "benign_beta": run.benign_beta,
        "benign_refusal_penalty": run.objective.benign_refusal_penalty,
        "benign_refusal_probe": run.settings.grpo.benign_refusal_probe,
        "selected_step": selection["selected_step"] if selection else len(rows),
        "selection": selection,
        **summarize(rows, list(run.scorer.aspects)),
    }
    metrics_path = run.layout.metrics_file("grpo")
    trained = run.start_step < cfg.steps  # False: a finished run run again, nothing trained here
    return write_stage_outputs(run.layout, run.model, run.tokenizer, rows, summary, metrics_path, trained)


# --------------------------------------------------------------------------------------------- the stage


def train_grpo(
    settings: Settings,
    resume: bool = True,
    scorer: Scorer | None = None,
    init_adapter: Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) GRPO; returns the summary also written to metrics/grpo.json.

    ``scorer`` replaces the trained reward model (tests use toy scorers); by default the reward model in
    ``Layout.reward_model_dir`` is loaded. ``init_adapter``: continue training this adapter instead of a
    fresh one (reward refresh rounds, safealign.refresh.rounds).
    """
    layout = Layout.from_settings(settings)
    for folder in (layout.artifacts_dir, layout.adapter_dir.parent, layout.metrics_dir):
        for path in remove_stale_temps(folder):  # what killed writers left, this stage's or another's
            log.info("removed %s, left by a killed write", path)
    if resolve_engine(settings) == "trl":
        return train_grpo_trl(settings, scorer=scorer, resume=resume, init_adapter=init_adapter)
    check_fast_supported(settings)
    run = set_up(settings, scorer, init_adapter)
    resume_from_checkpoint(run, resume)
    t_start = time.perf_counter()
    with tracking.stage_run(settings, "grpo"):
        import mlflow

        mlflow.set_tags(
            {"safealign.grpo.resumed_from": str(run.resumed_from), "safealign.grpo.engine": "fast"}
        )
        train_steps(run, t_start)
        return finish(run, t_start)
