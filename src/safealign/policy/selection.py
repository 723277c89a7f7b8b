"""Checkpoint selection on validation prompts: GRPO keeps the best validated step, not merely the last one.

Why: on a small policy a GRPO trajectory can cross every target between two checkpoints: a few steps
separate "refusals not yet up" from "the refusal register leaks into benign prompts", and the same settings
take another path on another thread count (docs/experiments.md). A fixed step count is a knife edge; a step
chosen on prompts the policy never trained on makes it a measured choice.

Where the prompts come from: they are carved out of the TRAIN splits (a seeded order by content hash, so it
does not depend on the file's row order) and removed from the training pool. The held-out prompts that
``safealign evaluate`` reports on play no part in the choice.

The rule mirrors the promotion gates, measured on the validation prompts against the base policy (step 0):

- the benign refusal rate is at most ``max_benign_refusal`` (stricter than the promotion gate by default:
  the validation set is small, so its rate is a noisy estimate of the held-out one);
- no aspect's mean falls by more than ``max_aspect_drop``, on either prompt set;
- the adversarial refusal rate (the rule detector, not the reward model) is not below the base's.

Among the steps that pass, the one with the highest mean adversarial safety is kept (the earlier on a tie).
If none passes, the step closest to passing is kept (the least total excess over the gates' limits) and the
record says so; the promotion gates downstream then refuse it. Not the last step: by the end of a run that
never passed, the policy has often collapsed into refusing everything (docs/experiments.md).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from safealign.common.jsonl import read_prompts
from safealign.common.layout import Layout
from safealign.config import Settings
from safealign.data.schema import PROMPT_KINDS
from safealign.errors import ConfigError, DataError
from safealign.policy.reply_cache import ReplyCache
from safealign.policy.reward_adapter import Scorer
from safealign.refusal import refusal_rates

log = logging.getLogger(__name__)


def carve(prompts: Sequence[str], n: int, seed: int, what: str) -> tuple[list[str], list[str]]:
    """``(train, validation)``: the ``n`` prompts first in a seeded content-hash order go to validation.

    Duplicated prompts go to the same side, so a validation prompt is never also trained on.
    """
    if n == 0:
        return list(prompts), []
    distinct = sorted(set(prompts), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    if n >= len(distinct):
        raise ConfigError(
            f"grpo.selection wants {n} {what} validation prompts, but the {what} train split has only "
            f"{len(distinct)} distinct prompts; lower grpo.selection.num_{what}"
        )
    held = set(distinct[:n])
    return [p for p in prompts if p not in held], distinct[:n]


@dataclass(frozen=True)
class SelectionRule:
    """The gates a validated step must pass, and the aspect whose adversarial mean ranks the passing steps."""

    max_benign_refusal: float
    max_aspect_drop: float
    rank_aspect: str

    def _violations(self, record: dict[str, Any], base: dict[str, Any]) -> list[tuple[str, float]]:
        """(reason, how far past the limit) for every gate ``record`` fails against the base's record."""
        out = []
        benign_refusal = record["benign"]["refusal_rate"]
        if benign_refusal > self.max_benign_refusal:
            out.append((f"benign refusals {benign_refusal:.1%} > {self.max_benign_refusal:.1%}",
                        benign_refusal - self.max_benign_refusal))  # fmt: skip
        for name in PROMPT_KINDS:
            for aspect, value in record[name]["aspects"].items():
                drop = base[name]["aspects"][aspect] - value
                if drop > self.max_aspect_drop:
                    out.append((f"{name} {aspect} -{drop:.3f}", drop - self.max_aspect_drop))
        adv, adv_base = record["adversarial"]["refusal_rate"], base["adversarial"]["refusal_rate"]
        if adv < adv_base:
            out.append((f"adversarial refusals {adv:.1%} < base {adv_base:.1%}", adv_base - adv))
        return out

    def failures(self, record: dict[str, Any], base: dict[str, Any]) -> list[str]:
        """Why ``record`` may not be kept (empty: it may), compared with the base policy's ``base`` record."""
        return [reason for reason, _ in self._violations(record, base)]

    def excess(self, record: dict[str, Any], base: dict[str, Any]) -> float:
        """How far ``record`` is from passing: the summed excess over every failed gate (rates and scores)."""
        return float(sum(amount for _, amount in self._violations(record, base)))

    def score(self, record: dict[str, Any]) -> float:
        return float(record["adversarial"]["aspects"][self.rank_aspect])


def choose(records: list[dict[str, Any]], rule: SelectionRule) -> tuple[int, str]:
    """``(step, why)`` over validation records ordered by step; ``records[0]`` is the base (step 0)."""
    base, candidates = records[0], records[1:]
    if not candidates:
        raise ValueError("no validated training step to choose from")
    best = None
    for record in candidates:
        if not rule.failures(record, base) and (best is None or rule.score(record) > rule.score(best)):
            best = record
    if best is None:
        closest = min(candidates, key=lambda r: rule.excess(r, base))  # min keeps the earliest on a tie
        return int(closest["step"]), (
            f"no validated step passed every gate: kept the closest to passing (total excess "
            f"{rule.excess(closest, base):.3f}: {', '.join(rule.failures(closest, base))})"
        )
    return int(best["step"]), (
        f"highest adversarial {rule.rank_aspect} ({rule.score(best):.3f}, base {rule.score(base):.3f}) "
        "among the steps that passed every gate"
    )


def summarise(aspects: Sequence[str], scores: np.ndarray, replies: Sequence[str]) -> dict[str, Any]:
    """Mean score per aspect and the rule detector's refusal rate, for one prompt set."""
    rates = refusal_rates(replies)
    return {
        "n": len(replies),
        "aspects": {a: float(np.mean(scores[:, k])) for k, a in enumerate(aspects)},
        "refusal_rate": rates["refusal_rate"],
        "empty_rate": rates["empty_rate"],
    }


def validate(
    model: Any,
    tokenizer: Any,
    scorer: Scorer,
    prompts: dict[str, list[str]],
    *,
    step: int,
    system_prompt: str | None,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    cache: ReplyCache | None = None,
) -> dict[str, Any]:
    """Greedy replies of the policy as it stands to every validation prompt, scored and judged.

    Decoding is the evaluation stage's (greedy, chat template) with the LoRA delta merged for speed. The
    global RNG is left exactly as it was, so validating changes nothing about the training trajectory.
    With a ``cache`` the replies are read from it when these weights already answered these prompts.
    """
    from safealign.policy.decoding import generate_replies
    from safealign.policy.engine import merged_lora

    started = time.perf_counter()
    flat = [p for name in PROMPT_KINDS for p in prompts[name]]
    padding_side, was_training = tokenizer.padding_side, model.training
    with torch.random.fork_rng(devices=[]), merged_lora(model):
        replies = generate_replies(
            model,
            tokenizer,
            flat,
            system_prompt=system_prompt,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=seed,
            cache=cache,
        )
    tokenizer.padding_side = padding_side
    model.train(was_training)
    scores = scorer.score(flat, replies)
    record: dict[str, Any] = {"step": step}
    start = 0
    for name in PROMPT_KINDS:
        end = start + len(prompts[name])
        record[name] = summarise(scorer.aspects, scores[start:end], replies[start:end])
        start = end
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def validation_steps(total: int, start: int, every: int) -> list[int]:
    """The training steps after which the policy is validated: ``start, start + every, ...`` and the last."""
    steps = list(range(start, total + 1, every)) if start <= total else []
    if not steps or steps[-1] != total:
        steps.append(total)
    return steps


def flat_metrics(record: dict[str, Any]) -> dict[str, float]:
    """One record as MLflow metrics (``val_adversarial_safety``, ``val_benign_refusal_rate``, ...)."""
    out = {}
    for name in PROMPT_KINDS:
        out[f"val_{name}_refusal_rate"] = float(record[name]["refusal_rate"])
        for aspect, value in record[name]["aspects"].items():
            out[f"val_{name}_{aspect}"] = float(value)
    return out


class Selector:
    """The validation records so far and the adapter weights of the step ``choose`` keeps among them.

    Its state travels in the GRPO checkpoint, the best adapter included (the checkpoint of that step may
    have been rotated away by then), so a resumed run chooses exactly what an uninterrupted one would.

    ``cache`` serves the base validation (step 0) only: the base's replies repeat in every run with the same
    carve and decoding, a trained step's never do (hashing its weights and writing an entry would be waste).
    """

    def __init__(
        self,
        rule: SelectionRule,
        prompts: dict[str, list[str]],
        cache: ReplyCache | None = None,
        **decoding: Any,
    ) -> None:
        self.rule = rule
        self.prompts = prompts
        self.cache = cache
        self.decoding = decoding
        self.records: list[dict[str, Any]] = []
        self.best_step: int | None = None
        self.best_adapter: dict[str, torch.Tensor] | None = None

    def observe(self, model: Any, tokenizer: Any, scorer: Scorer, step: int) -> dict[str, Any]:
        """Validate the policy after ``step`` (0 = the base, which must come first) and remember it."""
        from peft import get_peft_model_state_dict

        if not self.records and step != 0:
            raise ValueError("the base policy (step 0) must be validated first")
        cache = self.cache if step == 0 else None
        record = validate(model, tokenizer, scorer, self.prompts, step=step, cache=cache, **self.decoding)
        if self.records:
            record["failures"] = self.rule.failures(record, self.records[0])
        self.records.append(record)
        if len(self.records) > 1 and choose(self.records, self.rule)[0] == step:
            # the choice so far is this step: hold its weights (the rule only ever compares whole records)
            self.best_step = step
            self.best_adapter = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        return record

    def finish(self, model: Any, last_step: int) -> dict[str, Any]:
        """Load the chosen step's adapter into ``model`` (unless it is the last); return the summary."""
        from peft import set_peft_model_state_dict

        step, why = choose(self.records, self.rule)
        if step != last_step:
            if step != self.best_step or self.best_adapter is None:  # pragma: no cover - choose() agrees
                raise RuntimeError(f"selected step {step} but holds the adapter of step {self.best_step}")
            set_peft_model_state_dict(model, self.best_adapter)
        log.info("checkpoint selection: step %d of %d (%s)", step, last_step, why)
        return {"selected_step": step, "why": why, "rule": self.rule.__dict__, "records": self.records}

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records, "best_step": self.best_step, "best_adapter": self.best_adapter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = list(state["records"])
        self.best_step = state["best_step"]
        self.best_adapter = state["best_adapter"]


def build_selector(
    settings: Settings, adversarial: list[str], benign: list[str], scorer: Scorer
) -> tuple[list[str], list[str], Selector]:
    """``(adversarial, benign, selector)``: the validation prompts taken out of the training pools.

    Benign validation prompts are carved from the benign train split even when training draws none, so
    the benign gates always have prompts to judge.
    """
    sel, seed = settings.grpo.selection, settings.grpo.seed
    if sel is None:
        raise ValueError("grpo.selection is not set")
    adversarial, val_adv = carve(adversarial, sel.num_adversarial, seed, "adversarial")
    benign_all = benign or read_prompts(Layout.from_settings(settings).benign_split("train"))
    benign_left, val_ben = carve(benign_all, sel.num_benign, seed, "benign")
    constraint = settings.grpo.safety_constraint
    rank = constraint.aspect if constraint else "safety"
    if rank not in scorer.aspects:
        raise DataError(f"grpo.selection ranks steps by {rank!r}, which the reward model does not score")
    selector = Selector(
        SelectionRule(sel.max_benign_refusal, sel.max_aspect_drop, rank),
        {"adversarial": val_adv, "benign": val_ben},
        cache=ReplyCache(settings.paths.cache_dir),
        system_prompt=settings.policy.system_prompt,
        max_new_tokens=sel.max_new_tokens,
        batch_size=settings.evaluate.batch_size,
        seed=seed,
    )
    return adversarial, benign_left if benign else [], selector


def observe_and_log(selector: Selector, model: Any, tokenizer: Any, scorer: Scorer, step: int) -> None:
    """Validate after ``step``, log the record to the active MLflow run and one line to the log."""
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
