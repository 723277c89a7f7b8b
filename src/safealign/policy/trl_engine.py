"""The same GRPO through TRL 1.16's GRPOTrainer: for comparison (bench/grpo_vs_trl.py) and GPU scale-out.

Configured to be the same algorithm as the fast engine: LoRA via ``peft_config``, one reward function per
aspect sharing one cached reward-model forward (``reward_adapter.trl_reward_functions``) combined with
``reward_weights``, ``beta=0`` (no reference model), ``loss_type="grpo"`` pinned (TRL's default is
"dapo"), ``num_generations=G``, ``scale_rewards="group"``, one optimisation pass per batch
(``num_iterations=1``), one optimizer step per generation batch of P prompts x G completions.

What differs from the fast engine, and why it is slower on CPU (issue 8): TRL's defaults turn on bf16
autocast and gradient checkpointing, generate with the LoRA layers unmerged and prefill every prompt G times,
and run the full prompt G times in the loss forward. TRL's flat-group handling is ``(r - mean)/(std + 1e-4)``
(no floor) and it is kept as is here: this path is TRL, not a re-implementation of it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from safealign import tracking
from safealign.config import Settings
from safealign.errors import ConfigError
from safealign.jsonl import read_prompts
from safealign.layout import Layout
from safealign.policy.loading import chat_messages, load_policy, lora_config
from safealign.policy.outputs import peak_rss_gib, summarize, write_stage_outputs
from safealign.policy.reward_adapter import (
    Scorer,
    SharedScoreCache,
    aspect_weights,
    load_scorer,
    trl_reward_functions,
)

log = logging.getLogger(__name__)


def trl_dataset(prompts: list[str], system_prompt: str | None) -> Any:
    """Conversational prompts (TRL applies the chat template) plus the raw prompt for the reward model."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": chat_messages(p, system_prompt), "raw_prompt": p} for p in prompts])


def trl_config(
    settings: Settings,
    output_dir: str | Path,
    weights: list[float],
    max_steps: int,
    default_precision: bool = True,
    **overrides: Any,
) -> Any:
    """GRPOConfig with TRL's defaults except what defines the work and the algorithm.

    ``default_precision=True`` leaves TRL's defaults (bf16, gradient checkpointing) alone, which is what
    issue 8 compares against; ``False`` turns both off (fp32, no checkpointing).
    """
    from trl import GRPOConfig

    cfg = settings.grpo
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        gradient_accumulation_steps=1,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        loss_type="grpo",
        scale_rewards="group",
        num_iterations=1,
        reward_weights=list(weights),
        max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm is not None else 0.0,
        max_steps=max_steps,
        seed=cfg.seed,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if not default_precision:
        kwargs.update(bf16=False, gradient_checkpointing=False)
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def build_trl_trainer(
    settings: Settings,
    model: Any,
    tokenizer: Any,
    scorer: Scorer,
    prompts: list[str],
    output_dir: str | Path,
    max_steps: int,
    default_precision: bool = True,
    callbacks: list[Any] | None = None,
    **overrides: Any,
) -> tuple[Any, SharedScoreCache]:
    """A GRPOTrainer over ``prompts`` with LoRA from params; returns it and the shared reward cache."""
    from trl import GRPOTrainer

    weights = aspect_weights(settings.aspects, scorer.aspects)
    cache = SharedScoreCache(scorer)
    tokenizer.padding_side = "left"
    args = trl_config(settings, output_dir, list(weights), max_steps, default_precision, **overrides)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=trl_reward_functions(cache),
        args=args,
        train_dataset=trl_dataset(prompts, settings.policy.system_prompt),
        processing_class=tokenizer,
        peft_config=lora_config(settings),
        callbacks=callbacks,
    )
    return trainer, cache


def check_trl_supported(settings: Settings) -> None:
    """Refuse settings TRL's trainer would silently ignore (per-kind rewards and KL, checkpoint selection)."""
    keys = ("benign_weights", "benign_beta", "selection")
    for key in keys:
        if getattr(settings.grpo, key) is not None:
            raise ConfigError(
                f"grpo.{key} is implemented by the fast engine only: set grpo.engine=fast, "
                f"or {' '.join(f'grpo.{k}=null' for k in keys)} for TRL"
            )


def trl_prompts(settings: Settings) -> list[str]:
    """The TRL dataset's prompts: the adversarial train split, plus benign ones repeated to the configured
    share (TRL samples prompts uniformly, so the share is set by how often each kind appears)."""
    cfg = settings.grpo
    layout = Layout.from_settings(settings)
    adversarial = read_prompts(layout.adversarial_split("train"))
    prompts = list(adversarial)
    if cfg.include_benign and 0 < cfg.benign_fraction < 1:
        benign = read_prompts(layout.benign_split("train"))
        want = int(round(len(adversarial) * cfg.benign_fraction / (1 - cfg.benign_fraction)))
        prompts += [benign[i % len(benign)] for i in range(want)]
    return prompts


def trl_rows(
    log_history: list[dict[str, Any]], aspects: list[str], s_step_default: float
) -> list[dict[str, Any]]:
    """TRL's per-step log entries as rows with the fast engine's column names (``reward_mean``, ...)."""
    rows = []
    for entry in log_history:
        if "step" not in entry or "reward" not in entry:
            continue
        row: dict[str, Any] = {
            "step": entry["step"],
            "reward_mean": entry["reward"],
            "reward_std": entry.get("reward_std"),
        }
        for aspect in aspects:
            row[f"{aspect}_mean"] = entry.get(f"rewards/{aspect}/mean")
            row[f"{aspect}_std"] = entry.get(f"rewards/{aspect}/std")
        row["frac_flat_groups"] = entry.get("frac_reward_zero_std")
        row["completion_len_mean"] = entry.get("completions/mean_length")
        row["s_step"] = entry.get("step_time", s_step_default)
        rows.append(row)
    return rows


def train_grpo_trl(settings: Settings, scorer: Scorer | None = None) -> dict[str, Any]:
    """``safealign grpo`` with ``grpo.engine=trl``: TRL does the loop; outputs in the same places.

    Checkpoints use TRL's own ``save_steps`` into ``Layout.checkpoints_dir/trl`` and resume with
    ``resume_from_checkpoint``.
    """
    import mlflow

    check_trl_supported(settings)
    cfg = settings.grpo
    layout = Layout.from_settings(settings)
    prompts = trl_prompts(settings)
    scorer = scorer or load_scorer(settings)
    model, tokenizer = load_policy(settings)
    out_dir = layout.checkpoints_dir / "trl"
    trainer, _cache = build_trl_trainer(
        settings,
        model,
        tokenizer,
        scorer,
        prompts,
        out_dir,
        cfg.steps,
        default_precision=False,
        save_strategy="steps",
        save_steps=cfg.checkpoint_every,
        save_total_limit=2,
    )
    resume = out_dir.exists() and any(p.name.startswith("checkpoint-") for p in out_dir.iterdir())
    t0 = time.perf_counter()
    with tracking.stage_run(settings, "grpo"):
        mlflow.set_tag("safealign.grpo.engine", "trl")
        trainer.train(resume_from_checkpoint=True if resume else None)
        wall = time.perf_counter() - t0
        rows = trl_rows(trainer.state.log_history, list(scorer.aspects), wall / max(1, cfg.steps))
        summary = {
            "engine": "trl",
            "steps": int(trainer.state.global_step),
            "wall_time_s": round(wall, 2),
            "seconds_per_step": round(wall / max(1, trainer.state.global_step), 3),
            "peak_rss_gib": round(peak_rss_gib(), 3),
            "aspects": list(scorer.aspects),
            **summarize(rows, list(scorer.aspects)),
        }
        write_stage_outputs(layout, trainer.model, tokenizer, rows, summary)
    return summary
