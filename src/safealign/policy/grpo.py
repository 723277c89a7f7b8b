"""``safealign grpo``: GRPO + LoRA against the multi-aspect reward model, with checkpoints and resume.

The loop, top to bottom: load prompts (train split only; held-out prompts are never read here), load the
policy and wrap it in LoRA, load the reward model, restore the last checkpoint if there is one, then per
step: sample prompts -> ``engine.grpo_step`` (generate G per prompt, score once, group advantages, one
forward/backward, AdamW) -> log -> checkpoint every ``grpo.checkpoint_every`` steps. Outputs are written
atomically at the end: the PEFT adapter, ``metrics/grpo.json`` and the per-step CSV.

``grpo.engine = "trl"`` hands the same work to TRL's GRPOTrainer instead (see trl_engine.py); it exists to
compare against and for multi-GPU scale-out, not for the default CPU run.

Fault tolerance: a checkpoint holds the adapter, optimizer, scheduler, every RNG state (python, numpy,
torch, the prompt sampler), lambda, the step and the metrics rows so far, written atomically. Killed at any
moment, the same command resumes from the last checkpoint and finishes with the same number of steps; the
resumed steps draw the same prompts and samples as an uninterrupted run would have.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

# libgomp's thread wait policy (spin briefly on an idle CPU, sleep on a shared one) must be set before torch
# loads: the CLI calls safealign.openmp_wait.choose_wait_policy() before importing this module.
import numpy as np
import torch

from safealign.atomic import atomic_dir, write_json, write_text
from safealign.config import SelectionSettings, Settings
from safealign.errors import DataError
from safealign.jsonl import iter_jsonl
from safealign.layout import Layout
from safealign.policy.constraint import LagrangeConstraint
from safealign.policy.engine import PromptBatch, StepConfig, collate_prompts, grpo_step
from safealign.policy.loading import format_prompt, load_policy
from safealign.policy.reward_adapter import RewardModelScorer, Scorer, aspect_weights
from safealign.policy.selection import SelectionRule, Selector, carve, flat_metrics, validation_steps

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
KEEP_CHECKPOINTS = 2
STATE_FILE = "state.pt"


# --------------------------------------------------------------------------------------------- prompts


def read_prompts(path: Path) -> list[str]:
    """The ``prompt`` column of a JSONL split file; a missing or malformed file is a DataError naming it."""
    if not path.exists():
        raise DataError(f"{path}: prompt split not found (run `safealign validate` first)")
    prompts = []
    for lineno, row in iter_jsonl(path):
        text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{lineno}: field 'prompt' missing or empty")
        prompts.append(text)
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


class PromptSampler:
    """Draws each step's prompts: adversarial train prompts, mixed with benign ones at ``benign_fraction``.

    Its numpy Generator is separate from the global RNGs and is checkpointed, so a resumed run draws the
    same prompts as an uninterrupted one.
    """

    def __init__(
        self, adversarial: list[str], benign: list[str], per_step: int, benign_fraction: float, seed: int
    ):
        self.adversarial = adversarial
        self.benign = benign
        self.per_step = per_step
        self.n_benign = int(round(per_step * benign_fraction)) if benign else 0
        self.n_benign = min(self.n_benign, per_step - 1) if adversarial else per_step
        self.rng = np.random.default_rng(seed)

    def draw(self) -> tuple[list[str], list[bool]]:
        """This step's prompts and, per prompt, whether it is adversarial (what the safety constraint covers)."""
        n_adv = self.per_step - self.n_benign
        adv = [
            self.adversarial[i]
            for i in self.rng.choice(len(self.adversarial), n_adv, replace=n_adv > len(self.adversarial))
        ]
        ben = (
            [
                self.benign[i]
                for i in self.rng.choice(
                    len(self.benign), self.n_benign, replace=self.n_benign > len(self.benign)
                )
            ]
            if self.n_benign
            else []
        )
        return adv + ben, [True] * len(adv) + [False] * len(ben)


class PromptEncoder:
    """Chat template + tokenisation, once per distinct prompt (cached), truncated from the left."""

    def __init__(self, tokenizer: Any, system_prompt: str | None, max_tokens: int):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens
        self._cache: dict[str, list[int]] = {}

    def ids(self, prompt: str) -> list[int]:
        if prompt not in self._cache:
            text = format_prompt(self.tokenizer, prompt, self.system_prompt)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._cache[prompt] = ids[-self.max_tokens :]
        return self._cache[prompt]

    def batch(self, prompts: list[str]) -> PromptBatch:
        return collate_prompts(prompts, [self.ids(p) for p in prompts], int(self.tokenizer.pad_token_id))


# --------------------------------------------------------------------------------------------- model


def lora_config(settings: Settings) -> Any:
    from peft import LoraConfig

    lo = settings.grpo.lora
    return LoraConfig(
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        target_modules=list(lo.target_modules),
        task_type="CAUSAL_LM",
    )


def build_policy(settings: Settings) -> tuple[Any, Any]:
    """Base policy (fp32) wrapped in a fresh LoRA adapter; only the adapter is trainable."""
    from peft import get_peft_model

    base, tokenizer = load_policy(settings)
    base.config.use_cache = True
    model = get_peft_model(base, lora_config(settings))
    return model, tokenizer


def build_optimizer(model: Any, settings: Settings) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW on the LoRA parameters; linear warm-up then constant (the paper trains at a fixed lr)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.grpo.learning_rate, weight_decay=0.0)
    warmup = settings.grpo.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
    return optimizer, scheduler


def load_scorer(settings: Settings) -> Scorer:
    from safealign.reward.model import RewardModel

    folder = Layout.from_settings(settings).reward_model_dir
    try:
        model = RewardModel.from_pretrained(folder)
    except FileNotFoundError as exc:
        raise DataError(f"{folder}: no trained reward model (run `safealign train-reward`): {exc}") from exc
    return RewardModelScorer(model)


# --------------------------------------------------------------------------------------------- checkpoints


def _file_digest(path: Path) -> str:
    if not path.exists():
        return "missing"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_fingerprint(settings: Settings, scorer: Scorer) -> str:
    """What a checkpoint must match to be resumed: everything but the step count and checkpoint cadence.

    Includes the reward model's head and the train prompt files, so retraining the reward model (DVC
    re-running the stage) never resumes a checkpoint trained against the old reward.
    """
    layout = Layout.from_settings(settings)
    grpo = settings.grpo.model_dump(mode="json")
    grpo.pop("steps", None)
    grpo.pop("checkpoint_every", None)
    doc = {
        "grpo": grpo,
        "policy": settings.policy.model_dump(mode="json"),
        "aspects": settings.model_dump(mode="json")["aspects"],
        "scorer": type(scorer).__name__,
        "reward_head": _file_digest(layout.reward_model_dir / "reward_head.safetensors"),
        "reward_config": _file_digest(layout.reward_model_dir / "reward_config.json"),
        "adversarial_train": _file_digest(layout.adversarial_split("train")),
        "benign_train": _file_digest(layout.benign_split("train")),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    found = []
    if root.exists():
        for path in root.iterdir():
            if path.name.startswith(CHECKPOINT_PREFIX) and (path / STATE_FILE).exists():
                try:
                    found.append((int(path.name[len(CHECKPOINT_PREFIX) :]), path))
                except ValueError:
                    continue
    return sorted(found)


def save_checkpoint(
    root: Path,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: PromptSampler,
    constraint: LagrangeConstraint | None,
    rows: list[dict[str, Any]],
    fingerprint: str,
    elapsed_s: float,
    selection: dict[str, Any] | None = None,
) -> Path:
    """Everything needed to continue exactly, written to a temp dir and renamed (atomic)."""
    target = root / f"{CHECKPOINT_PREFIX}{step:06d}"
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp / "adapter")
        torch.save(
            {
                "step": step,
                "fingerprint": fingerprint,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng_python": random.getstate(),
                "rng_numpy": np.random.get_state(),
                "rng_torch": torch.get_rng_state(),
                "rng_sampler": sampler.rng.bit_generator.state,
                "constraint": constraint.state_dict() if constraint else None,
                "elapsed_s": elapsed_s,
                "selection": selection,
            },
            tmp / STATE_FILE,
        )
        (tmp / "metrics.csv").write_text(rows_to_csv(rows), encoding="utf-8")
    for _, old in _checkpoints(root)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(
    path: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: PromptSampler,
    constraint: LagrangeConstraint | None,
) -> tuple[int, list[dict[str, Any]], float, dict[str, Any] | None]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = torch.load(path / STATE_FILE, weights_only=False)
    set_peft_model_state_dict(model, load_file(str(path / "adapter" / "adapter_model.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng_python"])
    np.random.set_state(state["rng_numpy"])
    torch.set_rng_state(state["rng_torch"])
    sampler.rng.bit_generator.state = state["rng_sampler"]
    if constraint is not None and state.get("constraint"):
        constraint.load_state_dict(state["constraint"])
    rows = list(csv.DictReader(io.StringIO((path / "metrics.csv").read_text(encoding="utf-8"))))
    return (
        int(state["step"]),
        [{k: _num(v) for k, v in r.items()} for r in rows],
        float(state.get("elapsed_s", 0.0)),
        state.get("selection"),
    )


def find_resumable(root: Path, fingerprint: str) -> Path | None:
    for _, path in reversed(_checkpoints(root)):
        try:
            fp = torch.load(path / STATE_FILE, weights_only=False).get("fingerprint")
        except Exception:  # noqa: BLE001 - a damaged checkpoint is skipped, an older one may be fine
            log.warning("skipping unreadable checkpoint %s", path)
            continue
        if fp == fingerprint:
            return path
        log.warning("checkpoint %s was made with other settings/reward/data; not resuming from it", path)
        return None
    return None


# --------------------------------------------------------------------------------------------- metrics


def _num(value: str) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def peak_rss_gib() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024**3 if sys.platform == "darwin" else 1024**2)


def summarize(rows: list[dict[str, Any]], aspects: list[str], window: int = 5) -> dict[str, Any]:
    """Per-aspect means over the first and last ``window`` steps, flat-group fraction, timing."""
    head, tail = rows[:window], rows[-window:]

    def mean(rs: list[dict[str, Any]], key: str) -> float | None:
        vals = [float(r[key]) for r in rs if key in r and r[key] not in ("", None)]
        return float(np.mean(vals)) if vals else None

    out: dict[str, Any] = {"reward_start": {}, "reward_end": {}}
    for key in [*aspects, "reward"]:
        out["reward_start"][key] = mean(head, f"{key}_mean")
        out["reward_end"][key] = mean(tail, f"{key}_mean")
    out["frac_flat_groups"] = mean(rows, "frac_flat_groups")
    out["seconds_per_step_median"] = float(np.median([float(r["s_step"]) for r in rows])) if rows else None
    out["distinct_completions_end"] = mean(tail, "distinct_completions")
    out["completion_len_end"] = mean(tail, "completion_len_mean")
    return out


def per_kind_metrics(
    scores: np.ndarray, rewards: np.ndarray, adversarial: list[bool], group_size: int, aspects: list[str]
) -> dict[str, float]:
    """Each aspect's mean, and the mean spread of a group's rewards, per kind of prompt.

    The batch-wide means mix both kinds, and the failure this project keeps meeting is exactly a split
    between them: adversarial safety rises while benign answers lose their steps (README, checkpoint
    selection). ``rewards`` are those the advantages were computed from (Lagrangian term included), so
    ``{kind}_group_std_mean`` is what the division by the group std sees.
    """
    per_completion = np.repeat(np.asarray(adversarial, dtype=bool), group_size)
    out: dict[str, float] = {}
    for kind, mask in (("adversarial", per_completion), ("benign", ~per_completion)):
        if not mask.any():
            continue
        for k, aspect in enumerate(aspects):
            out[f"{kind}_{aspect}_mean"] = float(np.mean(scores[mask, k]))
        groups = np.asarray(rewards, dtype=np.float64)[mask].reshape(-1, group_size)
        out[f"{kind}_group_std_mean"] = float(np.mean(groups.std(axis=1, ddof=1)))
    return out


# --------------------------------------------------------------------------------------------- selection


def _carve_selector(
    settings: Settings, sel: SelectionSettings, adversarial: list[str], benign: list[str], scorer: Scorer
) -> tuple[list[str], list[str], Selector]:
    """Take the validation prompts out of the training pool; the benign ones even when training uses none."""
    cfg = settings.grpo
    adversarial, val_adv = carve(adversarial, sel.num_adversarial, cfg.seed, "adversarial")
    benign_all = benign or read_prompts(Layout.from_settings(settings).benign_split("train"))
    benign_left, val_ben = carve(benign_all, sel.num_benign, cfg.seed, "benign")
    rank = cfg.safety_constraint.aspect if cfg.safety_constraint else "safety"
    if rank not in scorer.aspects:
        raise DataError(f"grpo.selection ranks steps by {rank!r}, which the reward model does not score")
    rule = SelectionRule(sel.max_benign_refusal, sel.max_aspect_drop, rank)
    selector = Selector(
        rule,
        {"adversarial": val_adv, "benign": val_ben},
        system_prompt=settings.policy.system_prompt,
        max_new_tokens=sel.max_new_tokens,
        batch_size=settings.evaluate.batch_size,
        seed=cfg.seed,
    )
    return adversarial, benign_left if benign else [], selector


def _observe(selector: Selector, model: Any, tokenizer: Any, scorer: Scorer, step: int) -> None:
    import mlflow

    record = selector.observe(model, tokenizer, scorer, step)
    mlflow.log_metrics(flat_metrics(record), step=step)
    adv, ben = record["adversarial"], record["benign"]
    log.info(
        "validation after step %d (%.0f s): adversarial safety %.3f, refusals %.0f%% / benign %.0f%%%s",
        step,
        record["seconds"],
        adv["aspects"][selector.rule.rank_aspect],  # checked to be scored when the selector was built
        100 * adv["refusal_rate"],
        100 * ben["refusal_rate"],
        f"; not eligible: {', '.join(record['failures'])}" if record.get("failures") else "",
    )


# --------------------------------------------------------------------------------------------- the stage


def train_grpo(settings: Settings, resume: bool = True, scorer: Scorer | None = None) -> dict[str, Any]:
    """Run (or resume) GRPO; returns the summary also written to metrics/grpo.json.

    ``scorer`` replaces the trained reward model (tests use toy scorers); by default the reward model in
    ``Layout.reward_model_dir`` is loaded.
    """
    if settings.grpo.engine == "trl":
        from safealign.policy.trl_engine import train_grpo_trl

        return train_grpo_trl(settings, scorer=scorer)

    from tqdm import tqdm

    from safealign import tracking

    cfg = settings.grpo
    layout = Layout.from_settings(settings)
    adversarial = read_prompts(layout.adversarial_split("train"))
    benign = (
        read_prompts(layout.benign_split("train")) if cfg.include_benign and cfg.benign_fraction > 0 else []
    )
    scorer = scorer or load_scorer(settings)
    selector = None
    if cfg.selection is not None:
        adversarial, benign, selector = _carve_selector(settings, cfg.selection, adversarial, benign, scorer)
    weights = aspect_weights(settings.aspects, scorer.aspects)
    benign_weights = weights if cfg.benign_weights is None else aspect_weights(cfg.benign_weights, scorer.aspects)
    constraint = None
    if cfg.safety_constraint is not None:
        sc = cfg.safety_constraint
        if sc.aspect not in scorer.aspects:
            raise DataError(f"grpo.safety_constraint.aspect {sc.aspect!r} is not scored by the reward model")
        constraint = LagrangeConstraint(
            threshold=sc.threshold, lr=sc.lr, aspect=sc.aspect, lam_max=sc.lambda_max
        )

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model, tokenizer = build_policy(settings)
    optimizer, scheduler = build_optimizer(model, settings)
    sampler = PromptSampler(adversarial, benign, cfg.prompts_per_step, cfg.benign_fraction, cfg.seed)
    encoder = PromptEncoder(tokenizer, settings.policy.system_prompt, cfg.max_prompt_tokens)
    step_cfg = StepConfig.from_settings(cfg)
    benign_beta = cfg.beta if cfg.benign_beta is None else cfg.benign_beta

    fingerprint = run_fingerprint(settings, scorer)
    start_step, rows, elapsed_before = 0, [], 0.0
    resumed_from = None
    if resume:
        ckpt = find_resumable(layout.checkpoints_dir, fingerprint)
        if ckpt is not None:
            start_step, rows, elapsed_before, selection_state = load_checkpoint(
                ckpt, model, optimizer, scheduler, sampler, constraint
            )
            if selector is not None and selection_state:
                selector.load_state_dict(selection_state)
            rows = rows[:start_step]
            resumed_from = start_step
            log.info("resuming GRPO from %s (step %d of %d)", ckpt, start_step, cfg.steps)
    elif layout.checkpoints_dir.exists():
        shutil.rmtree(layout.checkpoints_dir)

    t_start = time.perf_counter()
    with tracking.stage_run(settings, "grpo") as _run:
        import mlflow

        mlflow.set_tags({"safealign.grpo.resumed_from": str(resumed_from), "safealign.grpo.engine": "fast"})
        to_validate = set(validation_steps(cfg.steps, cfg.selection.start, cfg.selection.every)) if cfg.selection else set()
        if selector is not None and not selector.records:
            _observe(selector, model, tokenizer, scorer, 0)
        bar = tqdm(total=cfg.steps, initial=start_step, desc="grpo", unit="step", dynamic_ncols=True)
        for step in range(start_step + 1, cfg.steps + 1):
            drawn, adversarial = sampler.draw()
            result = grpo_step(
                model,
                tokenizer,
                optimizer,
                scheduler,
                encoder.batch(drawn),
                scorer,
                np.stack([weights if adv else benign_weights for adv in adversarial]),
                step_cfg,
                constraint,
                constrained=adversarial,
                betas=[cfg.beta if adv else benign_beta for adv in adversarial],
            )
            row: dict[str, Any] = {"step": step, **result.metrics}
            row.update(
                per_kind_metrics(
                    result.scores, result.rewards, adversarial, cfg.num_generations, list(scorer.aspects)
                )
            )
            if constraint is None:
                row["lambda"] = 0.0
            rows.append(row)
            mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "step"}, step=step)
            write_text(layout.grpo_steps_csv, rows_to_csv(rows))
            bar.set_postfix(
                reward=f"{row['reward_mean']:.3f}",
                flat=f"{row['frac_flat_groups']:.2f}",
                s=f"{row['s_step']:.1f}",
            )
            bar.update(1)
            if selector is not None and step in to_validate:
                _observe(selector, model, tokenizer, scorer, step)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == start_step + 1:
                # what the policy actually says, next to the numbers (reward hacking shows here first)
                g = cfg.num_generations
                samples = [
                    {
                        "prompt": drawn[i // g],
                        "completion": text,
                        "scores": dict(zip(scorer.aspects, map(float, sc), strict=True)),
                    }
                    for i, (text, sc) in enumerate(zip(result.completions, result.scores, strict=True))
                ]
                mlflow.log_text(
                    json.dumps(samples, indent=1, ensure_ascii=False), f"samples/step-{step:06d}.json"
                )
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                elapsed = elapsed_before + time.perf_counter() - t_start
                save_checkpoint(
                    layout.checkpoints_dir,
                    step,
                    model,
                    optimizer,
                    scheduler,
                    sampler,
                    constraint,
                    rows,
                    fingerprint,
                    elapsed,
                    selector.state_dict() if selector else None,
                )
        bar.close()
        selection = selector.finish(model, cfg.steps) if selector else None
        if selection:
            mlflow.set_tag("safealign.grpo.selected_step", str(selection["selected_step"]))

        wall_this_run = time.perf_counter() - t_start
        summary = {
            "engine": "fast",
            "steps": len(rows),
            "resumed_from": resumed_from,
            "wall_time_s": round(elapsed_before + wall_this_run, 2),
            "wall_time_this_process_s": round(wall_this_run, 2),
            "seconds_per_step": round((elapsed_before + wall_this_run) / max(1, len(rows)), 3),
            "peak_rss_gib": round(peak_rss_gib(), 3),
            "lambda_final": constraint.lam if constraint else None,
            "aspects": list(scorer.aspects),
            "weights": [float(w) for w in weights],
            "benign_weights": [float(w) for w in benign_weights],
            "beta": cfg.beta,
            "benign_beta": benign_beta,
            "selected_step": selection["selected_step"] if selection else len(rows),
            "selection": selection,
            **summarize(rows, list(scorer.aspects)),
        }
        with atomic_dir(layout.adapter_dir) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        write_text(layout.grpo_steps_csv, rows_to_csv(rows))
        write_json(layout.metrics_file("grpo"), summary)
        mlflow.log_metrics(
            {
                f"final_{k}": float(v)
                for k, v in summary.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
        )
        mlflow.log_artifacts(str(layout.adapter_dir), artifact_path="adapter")
        mlflow.log_artifact(str(layout.grpo_steps_csv))
        mlflow.log_artifact(str(layout.metrics_file("grpo")))
    return summary
