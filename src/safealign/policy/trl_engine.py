"""``grpo.engine=trl``: the same GRPO through TRL 1.16's GRPOTrainer, for GPUs, accelerate and DeepSpeed.

The trainer is TRL's, extended (``trl_extensions.py``) so that every safealign feature holds on it with the
arithmetic of ``objective.py``, the module the fast engine calls too: per-kind aspect weights, the std floor
with zeroed flat groups, the Lagrangian safety constraint and its multiplier, per-sample KL coefficients,
checkpoint selection, the per-step share of benign prompts, the warm-up schedule. Tests hold both engines
equal on one batch (advantages, loss, LoRA gradients).

Configured to be the same algorithm as the fast engine: LoRA via ``peft_config``, one reward function per
aspect sharing one cached reward-model forward (``reward_adapter.trl_reward_functions``),
``loss_type="grpo"`` pinned (TRL's default is "dapo"), ``num_generations=G``, one optimisation pass per
batch (``num_iterations=1``), one optimizer step per batch of P prompts x G completions (split into
``grpo.micro_batch_size`` pieces with gradient accumulation where memory asks for it), TRL's own ``beta``
at 0 (the extension adds the KL term per sample).

Devices: on CUDA bf16 autocast and gradient checkpointing are on (``grpo.bf16``), and generation goes through
vLLM when it is importable (``grpo.use_vllm``, TRL's colocated mode); on the CPU it is fp32 without
checkpointing. Under ``accelerate launch`` ``grpo.prompts_per_step`` is the GLOBAL number of prompts per
step, shared by the processes. Why it is slower than the fast engine on the CPU: TRL generates
with the LoRA layers unmerged, prefills every prompt G times and runs the full prompt G times in the loss.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safealign import tracking
from safealign.common.jsonl import read_prompts
from safealign.common.layout import Layout
from safealign.config import Settings
from safealign.errors import ConfigError
from safealign.policy.constraint import LagrangeConstraint, constraint_from_settings
from safealign.policy.engine_choice import cuda_available, use_bf16, use_vllm
from safealign.policy.loading import chat_messages, load_policy, lora_config, with_adapter
from safealign.policy.objective import Objective
from safealign.policy.outputs import (
    as_recorded,
    peak_rss_gib,
    rows_to_csv,
    summarize,
    write_stage_outputs,
)
from safealign.policy.reward_adapter import Scorer, SharedScoreCache, load_scorer, trl_reward_functions

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- the trainer


def world_size() -> int:
    """Processes in this run (``accelerate launch`` sets WORLD_SIZE; 1 otherwise)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def trl_dataset(tokenizer: Any, rows: list[dict[str, Any]], system_prompt: str | None) -> Any:
    """Conversational prompts (TRL applies the chat template) plus the raw prompt and its kind per row.

    The messages come from ``chat_messages``, so user text is neutralised for the policy's tokenizer exactly
    as in the fast engine; the raw prompt is neutralised for the reward model's tokenizer when it is scored.
    """
    from datasets import Dataset

    return Dataset.from_list(
        [{"prompt": chat_messages(tokenizer, r["raw_prompt"], system_prompt), **r} for r in rows]
    )


def trl_config(
    settings: Settings,
    output_dir: str | Path,
    reward_weights: list[float],
    max_steps: int,
    trl_defaults: bool = False,
    **overrides: Any,
) -> Any:
    """GRPOConfig for params: the work, the algorithm and the device; TRL's defaults for the rest.

    ``trl_defaults=True`` leaves TRL's own precision defaults (bf16 autocast, gradient checkpointing) alone,
    which is what bench/grpo_vs_trl.py compares against.
    """
    from trl import GRPOConfig

    cfg = settings.grpo
    step_batch = cfg.prompts_per_step * cfg.num_generations
    per_device, micro = _batch_split(step_batch, world_size(), cfg.micro_batch_size)
    cuda = cuda_available()
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_generations=cfg.num_generations,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=per_device // micro,
        steps_per_generation=per_device // micro,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=0,
        learning_rate=cfg.learning_rate,
        weight_decay=0.0,
        beta=0.0,  # the KL term, per sample, is added by SafealignGRPOTrainer
        loss_type="grpo",
        scale_rewards="group",
        num_iterations=1,
        reward_weights=list(reward_weights),
        max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm is not None else 0.0,
        max_steps=max_steps,
        seed=cfg.seed,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        use_cpu=not cuda,
        use_vllm=use_vllm(settings),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if not trl_defaults:
        kwargs.update(bf16=use_bf16(settings), gradient_checkpointing=cuda)
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def _batch_split(step_batch: int, world: int, micro: int | None) -> tuple[int, int]:
    """(completions per device per step, per forward/backward); refuses splits that leave a rest."""
    if step_batch % world:
        raise ConfigError(
            f"grpo.prompts_per_step x grpo.num_generations = {step_batch} completions per step do not split "
            f"evenly over {world} processes"
        )
    per_device = step_batch // world
    micro = micro or per_device
    if per_device % micro:
        raise ConfigError(
            f"grpo.micro_batch_size={micro} does not divide the {per_device} completions each process has "
            "per step"
        )
    return per_device, micro


def build_trl_trainer(
    settings: Settings,
    model: Any,
    tokenizer: Any,
    scorer: Scorer,
    adversarial: list[str],
    benign: list[str],
    output_dir: str | Path,
    max_steps: int,
    constraint: LagrangeConstraint | None = None,
    callbacks: list[Any] | None = None,
    trl_defaults: bool = False,
    **overrides: Any,
) -> tuple[Any, SharedScoreCache]:
    """The extended GRPOTrainer over these prompts (LoRA from params unless ``model`` is a PEFT model
    already); returns it and the shared reward cache."""
    from safealign.policy.trl_extensions import ConstraintCallback, KindMixSampler, SafealignGRPOTrainer

    cfg = settings.grpo
    objective = Objective.from_settings(settings, scorer.aspects)
    cache = SharedScoreCache(scorer)
    tokenizer.padding_side = "left"
    args = trl_config(settings, output_dir, list(objective.weights), max_steps, trl_defaults, **overrides)
    fraction = cfg.benign_fraction if benign else 0.0
    sampler = KindMixSampler(
        adversarial, benign, cfg.prompts_per_step, fraction, cfg.seed, max_steps, cfg.num_generations
    )
    trainer = SafealignGRPOTrainer(
        model=model,
        reward_funcs=trl_reward_functions(cache),
        args=args,
        train_dataset=trl_dataset(tokenizer, sampler.rows(), settings.policy.system_prompt),
        processing_class=tokenizer,
        peft_config=None if hasattr(model, "peft_config") else lora_config(settings),
        callbacks=callbacks,
        objective=objective,
        constraint=constraint,
        max_prompt_tokens=cfg.max_prompt_tokens,
        warmup_steps=cfg.warmup_steps,
        sampler=sampler,
    )
    if constraint is not None:
        trainer.add_callback(ConstraintCallback(trainer))
        trainer.checkpoint_extras["constraint"] = constraint
    return trainer, cache


def check_trl_supported(settings: Settings) -> None:
    """Refuse, before any work, what the TRL engine cannot do with these settings on this machine.

    Every GRPO feature runs on it; what is left are device choices: vLLM asked for but not installed or
    without CUDA (``engine_choice.use_vllm``) and batch splits that leave a rest.
    """
    cfg = settings.grpo
    use_vllm(settings)
    _batch_split(cfg.prompts_per_step * cfg.num_generations, world_size(), cfg.micro_batch_size)


# ------------------------------------------------------------------------------------------- the stage


@dataclass
class StepRows:
    """The per-step rows (the fast engine's column names), checkpointed with the trainer."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state["rows"])


@dataclass
class RunIdentity:
    """What a checkpoint must match to be resumed (``checkpoints.run_fingerprint``), and the time spent."""

    fingerprint: str
    elapsed_before: float = 0.0  # wall time of the steps done before a resume
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "elapsed_s": self.elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed_before, self.started = float(state.get("elapsed_s", 0.0)), time.perf_counter()


@dataclass
class TrlRun:
    settings: Settings
    layout: Layout
    scorer: Scorer
    objective: Objective
    constraint: LagrangeConstraint | None
    selector: Any
    trainer: Any
    tokenizer: Any
    rows: StepRows
    identity: RunIdentity
    resume_from: Path | None = None

    @property
    def out_dir(self) -> Path:
        return self.layout.checkpoints_dir / "trl"


def set_up_trl(
    settings: Settings, scorer: Scorer | None = None, resume: bool = True, init_adapter: Path | None = None
) -> TrlRun:
    """Prompts, reward, selection, constraint, policy and the extended trainer with its callbacks."""
    import torch

    from safealign.policy.checkpoints import run_fingerprint
    from safealign.policy.selection import build_selector, validation_steps
    from safealign.policy.trl_extensions import SelectionCallback, StepLogCallback

    check_trl_supported(settings)
    cfg = settings.grpo
    layout = Layout.from_settings(settings)
    adversarial = read_prompts(layout.adversarial_split("train"))
    benign = (
        read_prompts(layout.benign_split("train")) if cfg.include_benign and cfg.benign_fraction > 0 else []
    )
    scorer = scorer or load_scorer(settings)
    _scorer_to_device(scorer)
    selector = None
    if cfg.selection is not None:
        adversarial, benign, selector = build_selector(settings, adversarial, benign, scorer)
    constraint = constraint_from_settings(settings, scorer.aspects)
    dtype = torch.bfloat16 if use_bf16(settings) and cuda_available() else torch.float32
    model, tokenizer = load_policy(settings, dtype=dtype)
    if init_adapter is not None:  # a refresh round: continue this adapter (then TRL adds no new LoRA)
        model = with_adapter(model, settings, init_adapter)
    rows, identity = StepRows(), RunIdentity(run_fingerprint(settings, scorer, init_adapter))
    out_dir = layout.checkpoints_dir / "trl"
    trainer, _cache = build_trl_trainer(
        settings,
        model,
        tokenizer,
        scorer,
        adversarial,
        benign,
        out_dir,
        cfg.steps,
        constraint=constraint,
        save_strategy="steps",
        save_steps=cfg.checkpoint_every,
        save_total_limit=2,
        disable_tqdm=False,
    )
    run = TrlRun(
        settings, layout, scorer, trainer.objective, constraint, selector, trainer, tokenizer, rows, identity
    )
    trainer.checkpoint_extras.update(rows=rows, run=identity)
    trainer.add_callback(StepLogCallback(functools.partial(_on_step, run)))
    if selector is not None:
        trainer.checkpoint_extras["selection"] = selector
        steps = validation_steps(cfg.steps, cfg.selection.start, cfg.selection.every)
        trainer.add_callback(SelectionCallback(selector, scorer, tokenizer, steps, on_record=_log_record))
    run.resume_from = _resumable(run, resume)
    return run


def _scorer_to_device(scorer: Scorer) -> None:
    """On CUDA the reward model scores on this process's GPU (it loads on the CPU)."""
    from accelerate import PartialState

    device = PartialState().device
    model = getattr(scorer, "model", None)
    if device.type == "cuda" and hasattr(model, "to"):
        model.to(device)


def _resumable(run: TrlRun, resume: bool) -> Path | None:
    """The last complete checkpoint of this same run; checkpoints of another run (or resume=False) go."""
    import shutil

    import torch

    from safealign.policy.trl_extensions import STATE_FILE, complete_checkpoints

    found = complete_checkpoints(run.out_dir) if resume else []
    if found:
        state = torch.load(found[-1] / STATE_FILE, weights_only=True)  # data, never code
        if state.get("run", {}).get("fingerprint") == run.identity.fingerprint:
            _refuse_past(found[-1], run.settings.grpo.steps)
            log.info("resuming GRPO (TRL) from %s", found[-1])
            return found[-1]
        log.warning(
            "TRL checkpoints in %s were made with other settings/reward/data; not resuming", run.out_dir
        )
    if run.out_dir.exists() and _is_main():
        shutil.rmtree(run.out_dir)
    return None


def _refuse_past(checkpoint: Path, steps: int) -> None:
    """A checkpoint of these settings past ``grpo.steps`` is a ConfigError (exit 2), as on the fast engine.

    TRL's trainer would load it and stop at once, reporting a longer run as this one; deleting it would
    throw away the longer run. The message says how to choose.
    """
    step = _step_of(checkpoint)
    if step is not None and step > steps:
        raise ConfigError(
            f"{checkpoint}: TRL checkpoint at step {step} of a run with the same settings, past "
            f"grpo.steps={steps}; not resuming it. Set grpo.steps>={step} to continue that run, or run "
            f"`safealign grpo --no-resume` to delete the checkpoints and train {steps} steps from the start."
        )


def _is_main() -> bool:
    from accelerate import PartialState

    return bool(PartialState().is_main_process)


def _log_record(record: dict[str, Any]) -> None:
    import mlflow

    from safealign.policy.selection import flat_metrics

    if _is_main():
        mlflow.log_metrics(flat_metrics(record), step=int(record["step"]))
        log.info(
            "validation after step %d (%.0f s)%s",
            record["step"],
            record["seconds"],
            f"; not eligible: {', '.join(record['failures'])}" if record.get("failures") else "",
        )


def _on_step(run: TrlRun, step: int, ours: dict[str, Any], logs: dict[str, Any], is_main: bool) -> None:
    """One step's row (the fast engine's column names) into the run's rows; MLflow and the CSV on main."""
    row: dict[str, Any] = {"step": step, **ours}
    row.update(
        loss=logs.get("loss"),
        kl=ours.get("kl", 0.0),
        grad_norm=logs.get("grad_norm"),
        lr=logs.get("learning_rate"),
        completion_len_mean=logs.get("completions/mean_length"),
        completion_len_max=logs.get("completions/max_length"),
        frac_truncated=logs.get("completions/clipped_ratio"),
        s_step=logs.get("step_time"),
        **{"lambda": ours.get("lambda", 0.0)},
    )
    run.rows.rows = [r for r in run.rows.rows if r["step"] < step] + [row]
    if is_main:
        _publish(run, row)


def _publish(run: TrlRun, row: dict[str, Any]) -> None:
    import json

    import mlflow

    from safealign.common.atomic import write_text

    step, cfg = row["step"], run.settings.grpo
    mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "step" and v is not None}, step=step)
    write_text(run.layout.grpo_steps_csv, rows_to_csv(run.rows.rows))
    batch = run.trainer.last_batch
    if batch and (step % cfg.checkpoint_every == 0 or step == cfg.steps or len(run.rows.rows) == 1):
        samples = [
            {
                "prompt": p,
                "completion": t,
                "scores": dict(zip(run.scorer.aspects, map(float, s), strict=True)),
            }
            for p, t, s in zip(batch["prompts"], batch["texts"], batch["scores"], strict=True)
        ]
        mlflow.log_text(json.dumps(samples, indent=1, ensure_ascii=False), f"samples/step-{step:06d}.json")


def finish_trl(run: TrlRun, wall_this_run: float) -> dict[str, Any]:
    """Keep the selected step's adapter, summarise, and write the outputs (main process)."""
    cfg, rows = run.settings.grpo, as_recorded(run.rows.rows)
    model = run.trainer.accelerator.unwrap_model(run.trainer.model)
    selection = run.selector.finish(model, cfg.steps) if run.selector else None
    total = run.identity.elapsed()
    summary = {
        "engine": "trl",
        "steps": int(run.trainer.state.global_step),
        "resumed_from": _step_of(run.resume_from),
        "wall_time_s": round(total, 2),
        "wall_time_this_process_s": round(wall_this_run, 2),
        "seconds_per_step": round(total / max(1, len(rows)), 3),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "lambda_final": run.constraint.lam if run.constraint else None,
        "aspects": list(run.scorer.aspects),
        "weights": [float(w) for w in run.objective.weights],
        "benign_weights": [float(w) for w in run.objective.benign_weights],
        "beta": run.objective.beta,
        "benign_beta": run.objective.benign_beta,
        "benign_refusal_penalty": run.objective.benign_refusal_penalty,
        "selected_step": selection["selected_step"] if selection else len(rows),
        "selection": selection,
        **summarize(rows, list(run.scorer.aspects)),
    }
    if _is_main():
        import mlflow

        if selection:
            mlflow.set_tag("safealign.grpo.selected_step", str(selection["selected_step"]))
        trained = _step_of(run.resume_from) != cfg.steps  # False: a finished run run again
        summary = write_stage_outputs(
            run.layout, model, run.tokenizer, rows, summary, run.layout.metrics_file("grpo"), trained
        )
    return summary


def _step_of(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint is not None else None


def train_grpo_trl(
    settings: Settings, scorer: Scorer | None = None, resume: bool = True, init_adapter: Path | None = None
) -> dict[str, Any]:
    """``safealign grpo`` on TRL: set up, resume the last checkpoint of this run, train, finish.

    Checkpoints are TRL's (``save_steps = grpo.checkpoint_every`` into ``Layout.checkpoints_dir/trl``) plus
    safealign's state in each (lambda, the selector with its best adapter, the step rows, the run's
    fingerprint). Only the main process opens the MLflow run and writes the outputs.
    """
    import contextlib

    if settings.grpo.benign_refusal_probe:
        raise ConfigError(
            "grpo.benign_refusal_probe is built into the fast engine's step only (TRL generates inside its "
            "own trainer): set grpo.engine=fast or grpo.benign_refusal_probe=0"
        )
    run = set_up_trl(settings, scorer, resume, init_adapter)
    t0 = time.perf_counter()
    stage = tracking.stage_run(settings, "grpo") if _is_main() else contextlib.nullcontext()
    with stage:
        if _is_main():
            import mlflow

            mlflow.set_tags(
                {
                    "safealign.grpo.engine": "trl",
                    "safealign.grpo.resumed_from": str(_step_of(run.resume_from)),
                }
            )
        run.trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
        return finish_trl(run, time.perf_counter() - t0)
