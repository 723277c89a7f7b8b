"""Every safealign GRPO feature on TRL 1.16's GRPOTrainer, as extensions of the pinned trainer.

TRL stays the engine (generation incl. vLLM, accelerate/DeepSpeed, the clipped-ratio loss, checkpoints);
this module only adds what safealign's objective has on top, each through the narrowest hook TRL offers and
each computed by ``objective.py``, the module the fast engine calls too:

- **advantages** (per-kind aspect weights, the Lagrangian term, the std floor with zeroed flat groups):
  TRL 1.16 computes advantages inline in ``_generate_and_score_completions`` from ONE ``reward_weights``
  vector for every row and ``(r - mean) / (std + 1e-4)`` (no floor). :class:`SafealignGRPOTrainer` keeps
  the gathered per-aspect scores from ``_calculate_rewards`` and, after TRL's method returns, replaces the
  ``advantages`` it hands to the loss with ``Objective.shape`` + ``Objective.advantages`` of the same
  scores. TRL's own ``reward`` / ``rewards/<aspect>/mean`` logs stay as TRL computes them.
- **the safety constraint's multiplier**: :class:`ConstraintCallback` takes the dual step after each
  optimizer step (the fast engine's order: shape with the current lambda, then update); lambda travels in
  the checkpoint (:meth:`SafealignGRPOTrainer._save_checkpoint`, as TRL saves its own entropy controller).
- **per-sample KL coefficients** (``grpo.benign_beta``): TRL's ``beta`` is one float applied to every
  token. The trainer runs with TRL's ``beta = 0`` and adds ``objective.sequence_kl`` itself: the reference
  log-probs come from TRL's own ``_get_per_token_logps_and_entropies`` with the adapter disabled (what TRL
  does for a PEFT reference), the policy log-probs are the ones TRL's loss forward computed (kept by the
  ``_get_per_token_logps_and_entropies`` override, so no second forward), and the term is averaged like
  ``loss_type="grpo"`` and divided by the same accumulation normaliser.
- **checkpoint selection**: :class:`SelectionCallback` validates the policy after step 0 and every N steps
  with ``selection.Selector`` (the same class the fast engine uses) and keeps the best adapter; the selector
  travels in the checkpoint.
- **the per-step mix of prompt kinds** (``grpo.benign_fraction``): :class:`KindMixSampler` draws each step's
  prompts with ``grpo.PromptSampler``, so both engines train on the same prompts in the same order.
- **the warm-up schedule** (``objective.lr_factor``) and **the prompt cut** (``grpo.max_prompt_tokens``, TRL
  1.16 has no prompt length limit) through ``create_scheduler`` and ``_tokenize_prompts``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers import TrainerCallback
from trl import GRPOTrainer

from safealign.policy.checkpoints import plain_state
from safealign.policy.constraint import LagrangeConstraint
from safealign.policy.objective import Objective, lr_factor, sequence_kl, token_kl
from safealign.policy.outputs import per_kind_metrics
from safealign.policy.prompts import PromptSampler
from safealign.policy.reward_adapter import text_of

log = logging.getLogger(__name__)

STATE_FILE = "safealign_state.pt"  # our part of a TRL checkpoint folder (lambda, selector, step rows)
KIND_COLUMN = "adversarial"  # dataset column: True for adversarial prompts, False for benign ones
PREFIX = "safealign/"  # our metrics in TRL's logs (TRL logs its own "reward_std", "kl", ... beside them)


# ------------------------------------------------------------------------------------------- prompts


class KindMixSampler(Sampler[int]):
    """Dataset indices in TRL's RepeatSampler layout (each prompt G times in a row, P prompts per step),
    drawn by ``grpo.PromptSampler``: the fixed share of benign prompts per step and the same draws as the
    fast engine for the same seed.

    Each ``__iter__`` restarts the draw from the seed, so the Trainer's batch skipping on resume lands on
    exactly the prompts an uninterrupted run would have drawn.
    """

    def __init__(
        self,
        adversarial: Sequence[str],
        benign: Sequence[str],
        per_step: int,
        benign_fraction: float,
        seed: int,
        steps: int,
        group_size: int,
    ) -> None:
        self.adversarial, self.benign = list(adversarial), list(benign)
        self.per_step, self.benign_fraction, self.seed = per_step, benign_fraction, seed
        self.steps, self.group_size = steps, group_size
        self.index = {(True, p): i for i, p in reversed(list(enumerate(self.adversarial)))}
        offset = len(self.adversarial)
        self.index.update({(False, p): offset + i for i, p in reversed(list(enumerate(self.benign)))})

    def rows(self) -> list[dict[str, Any]]:
        """The dataset rows the indices point at: adversarial prompts first, then benign ones."""
        return [{"raw_prompt": p, KIND_COLUMN: True} for p in self.adversarial] + [
            {"raw_prompt": p, KIND_COLUMN: False} for p in self.benign
        ]

    def __iter__(self) -> Iterator[int]:

        sampler = PromptSampler(self.adversarial, self.benign, self.per_step, self.benign_fraction, self.seed)
        for _ in range(self.steps):
            drawn, kinds = sampler.draw()
            for prompt, adversarial in zip(drawn, kinds, strict=True):
                yield from [self.index[(adversarial, prompt)]] * self.group_size

    def __len__(self) -> int:
        return self.steps * self.per_step * self.group_size


# ------------------------------------------------------------------------------------------- trainer


class SafealignGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages, KL term, schedule and checkpoints follow ``objective.py`` (see above)."""

    def __init__(
        self,
        *args: Any,
        objective: Objective,
        constraint: LagrangeConstraint | None = None,
        max_prompt_tokens: int | None = None,
        warmup_steps: int = 0,
        sampler: KindMixSampler | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs["args"].beta != 0:
            raise ValueError("SafealignGRPOTrainer adds the KL term itself: pass beta=0 in GRPOConfig")
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.constraint = constraint
        self.max_prompt_tokens = max_prompt_tokens
        self.warmup_steps = warmup_steps
        self.kind_sampler = sampler
        self.checkpoint_extras: dict[str, Any] = {}  # name -> object with state_dict()/load_state_dict()
        self.last_batch: dict[str, Any] = {}  # the last scored batch, for the callbacks
        self._batch: dict[str, Any] = {}
        self._loss_logps: torch.Tensor | None = None

    # ---- prompts and schedule

    def _get_train_sampler(self, dataset: Any = None) -> Sampler:
        return self.kind_sampler if self.kind_sampler is not None else super()._get_train_sampler(dataset)

    def _tokenize_prompts(self, prompts: list) -> tuple:
        prompt_ids, images, fields = super()._tokenize_prompts(prompts)
        if self.max_prompt_tokens:  # cut from the left, as the fast engine's PromptEncoder does
            prompt_ids = [list(ids)[-self.max_prompt_tokens :] for ids in prompt_ids]
        return prompt_ids, images, fields

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, functools.partial(lr_factor, warmup_steps=self.warmup_steps)
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ---- rewards and advantages

    def _calculate_rewards(self, inputs: list, prompts: list, completions: list, completion_ids_list: list):
        from accelerate.utils import gather_object

        scores = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # gathered
        self._batch = {
            "scores": scores.detach().double().cpu().numpy(),
            "kinds": [bool(k) for k in gather_object([bool(x.get(KIND_COLUMN, True)) for x in inputs])],
            "texts": list(gather_object([text_of(c) for c in completions])),
            "prompts": list(gather_object([str(x.get("raw_prompt", "")) for x in inputs])),
        }
        return scores

    def _generate_and_score_completions(self, inputs: list) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        batch, self._batch = self._batch, {}
        g = self.num_generations if self.model.training else self.num_generations_eval
        kinds = batch["kinds"][::g]
        if any(set(batch["kinds"][i * g : (i + 1) * g]) != {k} for i, k in enumerate(kinds)):
            raise RuntimeError(
                "a group of completions mixes prompt kinds: the sampler must repeat each prompt G times"
            )
        objective = self.objective if g == self.objective.group_size else _regroup(self.objective, g)
        shaped = objective.shape(batch["scores"], kinds, self.constraint, batch["texts"])
        adv = objective.advantages(shaped.rewards)
        n_local = out["completion_ids"].shape[0]
        local = slice(
            self.accelerator.process_index * n_local, (self.accelerator.process_index + 1) * n_local
        )
        device = out["completion_ids"].device
        out["advantages"] = adv.values[local].to(device)
        if objective.uses_kl:
            betas = torch.tensor(np.repeat(objective.prompt_betas(kinds), g)[local], dtype=torch.float32)
            out["kl_beta"] = betas.to(device)
            out["ref_per_token_logps"] = self._reference_logps(out)
        self.last_batch = {**batch, "shaped": shaped, "advantages": adv, "kinds": kinds, "group_size": g}
        mode = "train" if self.model.training else "eval"
        self._record(mode, batch, shaped, adv, kinds, g, seconds=time.perf_counter() - t0)
        return out

    def _reference_logps(self, out: dict[str, Any]) -> torch.Tensor:
        """log pi_ref of every local completion token: TRL's forward with the LoRA adapter switched off."""
        from trl.models.utils import disable_gradient_checkpointing
        from trl.trainer.utils import use_adapter

        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        model = self.accelerator.unwrap_model(self.model)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            use_adapter(model, adapter_name=None),
        ):
            ref, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                ids,
                mask,
                out["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size,
            )
        return ref

    def _record(
        self, mode: str, batch: dict, shaped: Any, adv: Any, kinds: list[bool], g: int, seconds: float
    ) -> None:
        """The fast engine's per-step metrics, added to TRL's logs (averaged per logging step like TRL's)."""
        metrics = {
            "reward_mean": float(shaped.combined.mean()),
            "reward_std": float(shaped.combined.std()),
            "shaped_reward_mean": float(np.mean(shaped.rewards)),
            "frac_refusal_penalised": shaped.penalised_share,
            **adv.stats(),
            "distinct_completions": float(len(set(batch["texts"]))),
            "s_generate_and_score": seconds,
        }
        for k, aspect in enumerate(self.objective.aspects):
            metrics[f"{aspect}_mean"] = float(batch["scores"][:, k].mean())
            metrics[f"{aspect}_std"] = float(batch["scores"][:, k].std())
        metrics.update(
            per_kind_metrics(batch["scores"], shaped.rewards, kinds, g, list(self.objective.aspects))
        )
        for key, value in metrics.items():
            self._metrics[mode][PREFIX + key].append(value)

    # ---- loss

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> tuple:
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if kwargs.get("compute_entropy"):  # only the loss forward asks for entropies: keep its log-probs
            self._loss_logps = out[0]
        return out

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        loss = super()._compute_loss(model, inputs)
        if "kl_beta" not in inputs:
            return loss
        logps, self._loss_logps = self._loss_logps, None
        mask = (
            inputs["completion_mask"]
            if "tool_mask" not in inputs
            else inputs["completion_mask"] * inputs["tool_mask"]
        )
        betas = inputs["kl_beta"]
        per_seq = sequence_kl(logps, inputs["ref_per_token_logps"], mask, betas)
        mode = "train" if self.model.training else "eval"
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        penalised = (betas != 0)[:, None] * mask
        kl = (token_kl(logps.detach(), inputs["ref_per_token_logps"]) * penalised).sum()
        totals = self.accelerator.reduce(torch.stack([kl, penalised.sum().to(kl.dtype)]), reduction="sum")
        self._metrics[mode][PREFIX + "kl"].append((totals[0] / totals[1].clamp(min=1.0)).item())
        return loss + per_seq.mean() / normalizer

    # ---- checkpoints

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Our state first (atomically), then TRL's: a folder with both files is a complete checkpoint."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        from safealign.common.atomic import atomic_file

        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            folder.mkdir(parents=True, exist_ok=True)
            state = plain_state({name: obj.state_dict() for name, obj in self.checkpoint_extras.items()})
            with atomic_file(folder / STATE_FILE, mode="wb") as handle:
                torch.save(state, handle)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        state = torch.load(Path(checkpoint) / STATE_FILE, weights_only=True)  # data, never code
        for name, obj in self.checkpoint_extras.items():
            if name in state:
                obj.load_state_dict(state[name])


def _regroup(objective: Objective, g: int) -> Objective:
    from dataclasses import replace

    return replace(objective, group_size=g)


def complete_checkpoints(root: Path) -> list[Path]:
    """TRL checkpoint folders that hold both our state and TRL's trainer state, oldest first."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    found = []
    if root.exists():
        for path in root.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            suffix = path.name.rsplit("-", 1)[-1]
            if suffix.isdigit() and (path / STATE_FILE).exists() and (path / "trainer_state.json").exists():
                found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


# ------------------------------------------------------------------------------------------- callbacks


class ConstraintCallback(TrainerCallback):
    """The Lagrange multiplier's dual step after each optimizer step, from the step's covered mean safety."""

    def __init__(self, trainer: SafealignGRPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        constraint, batch = self.trainer.constraint, self.trainer.last_batch
        if constraint is None or not batch:
            return
        mean = batch["shaped"].constraint_mean()
        if mean is not None:
            constraint.update(mean)
        self.trainer._metrics["train"][PREFIX + "lambda"].append(float(constraint.lam))


class SelectionCallback(TrainerCallback):
    """Checkpoint selection: validate the base and then the policy after each step in ``steps``.

    Every process validates (greedy decoding gives all of them the same record and the same kept adapter,
    and generation under DeepSpeed ZeRO-3 needs every rank anyway); the record is logged once.
    """

    def __init__(
        self, selector: Any, scorer: Any, tokenizer: Any, steps: Sequence[int], on_record: Any = None
    ):
        self.selector, self.scorer, self.tokenizer = selector, scorer, tokenizer
        self.steps = set(steps)
        self.on_record = on_record

    def _observe(self, model: Any, step: int) -> None:
        record = self.selector.observe(model, self.tokenizer, self.scorer, step)
        if self.on_record is not None:
            self.on_record(record)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not self.selector.records:
            self._observe(model, 0)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step in self.steps:
            self._observe(model, state.global_step)


class StepLogCallback(TrainerCallback):
    """Hands each training step's log entry, safealign's metrics unprefixed, to ``on_step(step, metrics,
    logs, is_main)``: the rows of the GRPO stage come from here."""

    def __init__(self, on_step: Any) -> None:
        self.on_step = on_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or PREFIX + "reward_mean" not in logs:
            return
        ours = {k[len(PREFIX) :]: v for k, v in logs.items() if k.startswith(PREFIX)}
        self.on_step(int(state.global_step), ours, logs, bool(state.is_world_process_zero))
