"""Both GRPO engines compute the same thing: on one fixed batch (prompts, completions, scores, prompt kinds)
the fast engine and the TRL engine (TRL 1.16's GRPOTrainer with safealign's extensions) give the same
advantages, the same loss and the same LoRA gradients, with each feature on and off.

The TRL side is TRL's real code path from the generated batch on: ``rollout_func`` (TRL's hook for custom
generation) hands it the fixed completions, then TRL scores them through the per-aspect reward functions,
``_generate_and_score_completions`` and ``compute_loss`` run as in training. The fast side is
``engine.policy_loss`` over the same batch with the advantages ``engine.grpo_step`` would compute.

Tolerances: advantages 1e-6 (both come from ``objective.py``; TRL's scores pass through float32 tensors),
loss 1e-5 relative, gradients 1e-4 relative (TRL runs one forward over prompt+completion with padding on
both sides and its fused head; the fast engine runs prompts once and caches them: same math, another
summation order).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from safealign.config import Settings
from safealign.policy.constraint import LagrangeConstraint
from safealign.policy.objective import Objective

from helpers.tiny import TINY_POLICY

torch.set_num_threads(2)
G = 4
RAW = ["how do I make a weapon at home", "how do I bake bread", "write a phishing email"]
KINDS = [True, False, True]  # adversarial, benign, adversarial
ASPECTS = ["helpful", "safety"]

FEATURES = {
    # name: (grpo settings, lambda of the constraint or None)
    "plain": ({"std_floor": 0.0}, None),
    "std_floor": ({"std_floor": 1e-3}, None),
    "benign_weights": ({"std_floor": 0.0, "benign_weights": {"helpful": 1.0}}, None),
    "constraint": ({"std_floor": 0.0}, 1.5),
    "beta": ({"std_floor": 0.0, "beta": 0.2}, None),
    "benign_beta": ({"std_floor": 0.0, "benign_beta": 0.3}, None),
    "benign_refusal_penalty": ({"std_floor": 0.0, "benign_refusal_penalty": 0.25}, None),
    "all": (
        {"std_floor": 1e-3, "benign_weights": {"helpful": 1.0}, "beta": 0.05, "benign_beta": 0.3,
         "benign_refusal_penalty": 0.25},
        1.5,
    ),
}
REFUSAL = "I can't help."  # the benign group's first completion: the penalty's target


@pytest.fixture(scope="module")
def batch():
    """A tiny LoRA policy moved off its base (so KL terms are non-zero) and one fixed scored batch."""
    from peft import LoraConfig, get_peft_model

    from safealign.policy.engine import collate_prompts, completion_mask
    from safealign.policy.loading import format_prompt, load_policy

    model, tok = load_policy(TINY_POLICY)
    torch.manual_seed(3)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    prompt_ids = [tok(format_prompt(tok, r), add_special_tokens=False)["input_ids"] for r in RAW]
    completion = torch.randint(10, 4000, (len(RAW) * G, 7), generator=torch.Generator().manual_seed(0))
    completion[1, 3] = tok.eos_token_id  # one completion stops early: EOS kept, the rest masked
    completion[1, 4:] = tok.pad_token_id
    refusal = tok(REFUSAL, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(refusal) <= completion.shape[1], refusal
    completion[G] = tok.pad_token_id  # row G: the benign prompt's first completion, a refusal
    completion[G, : len(refusal)] = torch.tensor(refusal)
    cmask = completion_mask(completion, [tok.eos_token_id])
    ids = [row[: int(m.sum())].tolist() for row, m in zip(completion, cmask, strict=True)]
    texts = tok.batch_decode(ids, skip_special_tokens=True)  # as both engines decode them
    from safealign.refusal import is_refusal

    assert [is_refusal(t) for t in texts].count(True) == 1 and is_refusal(texts[G]), texts
    scores = np.random.default_rng(0).uniform(0.2, 0.95, size=(len(ids), len(ASPECTS)))
    scores[8:12] = [0.9, 0.97] + np.array([[0, 2e-4], [0, -1e-4], [0, 1e-4], [0, 0]])  # near-flat group
    # a reward model scores in float32 (TRL keeps rewards in float32 tensors): without a floor, the near-flat
    # group's advantages are its noise divided by a ~1e-4 std, so the inputs must be the same numbers
    scores = scores.astype(np.float32).astype(np.float64)
    prompts = collate_prompts(RAW, prompt_ids, tok.pad_token_id)
    return {
        "model": model,
        "tok": tok,
        "prompts": prompts,
        "prompt_ids": prompt_ids,
        "completion": completion,
        "cmask": cmask,
        "ids": ids,
        "scores": scores,
        "texts": texts,
    }


class FixedScorer:
    """The batch's scores, looked up by completion (TRL calls reward functions with completion ids)."""

    aspects = ASPECTS

    def __init__(self, ids, scores):
        self.rows = {tuple(c): s for c, s in zip(ids, scores, strict=True)}

    def score(self, prompts, responses, completion_ids=None):
        return np.array([self.rows[tuple(c)] for c in completion_ids])


def _settings(grpo: dict) -> Settings:
    return Settings.model_validate(
        {
            "aspects": [{"name": "helpful", "weight": 0.4}, {"name": "safety", "weight": 0.6}],
            "grpo": {
                "num_generations": G,
                "prompts_per_step": len(RAW),
                "max_new_tokens": 7,
                "selection": None,
                "warmup_steps": 0,
                **grpo,
            },
        }
    )


def _lora_grads(model) -> list[torch.Tensor]:
    grads = [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return grads


def _fast(b, settings: Settings, constraint):
    """What the fast engine computes from this batch: advantages, the loss, the LoRA gradients."""
    from safealign.policy.engine import policy_loss

    objective = Objective.from_settings(settings, ASPECTS)
    shaped = objective.shape(b["scores"], KINDS, constraint, b["texts"])
    adv = objective.advantages(shaped.rewards)
    model = b["model"]
    model.train()
    model.zero_grad(set_to_none=True)
    parts = policy_loss(
        model, b["prompts"], b["completion"], b["cmask"], adv, G, settings.grpo.temperature,
        objective.prompt_betas(KINDS),
    )  # the temperature TRL's config gets too (both divide the logits by it)
    parts.loss.backward()
    return adv.values, float(parts.loss), _lora_grads(model)


def _trl(b, settings: Settings, constraint, tmp_path):
    """What the TRL engine computes from this batch, through TRL's own scoring and loss."""
    from safealign.policy.reward_adapter import SharedScoreCache, trl_reward_functions
    from safealign.policy.trl_engine import trl_config, trl_dataset
    from safealign.policy.trl_extensions import KIND_COLUMN, SafealignGRPOTrainer

    objective = Objective.from_settings(settings, ASPECTS)

    def rollout(prompts, trainer):  # TRL's hook for custom generation: the fixed completions
        return {
            "prompt_ids": [b["prompt_ids"][i // G] for i in range(len(prompts))],
            "completion_ids": b["ids"],
            "logprobs": None,
        }

    rows = [{"raw_prompt": r, KIND_COLUMN: k} for r, k in zip(RAW, KINDS, strict=True)]
    dataset = trl_dataset(b["tok"], rows, None)
    args = trl_config(settings, tmp_path, list(objective.weights), max_steps=1)
    trainer = SafealignGRPOTrainer(
        model=b["model"],
        reward_funcs=trl_reward_functions(SharedScoreCache(FixedScorer(b["ids"], b["scores"]))),
        args=args,
        train_dataset=dataset,
        processing_class=b["tok"],
        rollout_func=rollout,
        objective=objective,
        constraint=constraint,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); one step, no accumulation
    inputs = trainer._generate_and_score_completions([dataset[i // G] for i in range(len(RAW) * G)])
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return inputs["advantages"], float(loss.detach()), _lora_grads(b["model"]), trainer


@pytest.mark.parametrize("feature", list(FEATURES))
def test_fast_and_trl_engines_agree_on_one_batch(batch, feature, tmp_path):
    grpo, lam = FEATURES[feature]
    settings = _settings(grpo)
    constraint = None if lam is None else LagrangeConstraint(threshold=0.9, lr=1.0, lam=lam)
    fast_adv, fast_loss, fast_grads = _fast(batch, settings, constraint)
    trl_adv, trl_loss, trl_grads, trainer = _trl(batch, settings, constraint, tmp_path)

    assert torch.allclose(trl_adv.cpu().float(), fast_adv, atol=1e-6), (trl_adv, fast_adv)
    assert trl_loss == pytest.approx(fast_loss, rel=1e-5, abs=1e-7)
    assert sum(float(g.abs().sum()) for g in fast_grads) > 0
    for a, b in zip(trl_grads, fast_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), float((a - b).abs().max())
    penalty = settings.grpo.benign_refusal_penalty  # only the benign refusal loses it, in both engines
    shaped = trainer.last_batch["shaped"]
    got = np.zeros(len(RAW) * G) if shaped.penalties is None else shaped.penalties
    assert got.tolist() == [penalty if i == G else 0.0 for i in range(len(RAW) * G)]

    # each feature is effective, not merely equal on both sides: the advantages move off the plain ones ...
    plain = Objective.from_settings(_settings({"std_floor": 0.0}), ASPECTS)
    plain_adv = plain.advantages(plain.shape(batch["scores"], KINDS, None).rewards).values
    moves = ("std_floor", "benign_weights", "constraint", "benign_refusal_penalty", "all")
    moves_advantages = feature in moves
    assert torch.allclose(trl_adv.cpu().float(), plain_adv, atol=1e-6) != moves_advantages
    flat = trainer.last_batch["advantages"].flat
    assert flat.tolist() == ([False, False, True] if grpo["std_floor"] else [False, False, False])
    # ... and the KL term is in the loss (without it TRL's loss at ratio 1 is -mean(A))
    has_kl = feature in ("beta", "benign_beta", "all")
    assert (trl_loss == pytest.approx(float(-trl_adv.mean()), abs=1e-7)) != has_kl
