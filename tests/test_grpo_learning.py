"""The loop learns: a tiny random policy with a toy reward it can learn raises its mean reward clearly, and
the SAME test fails when the gradient sign is flipped (the flipped case is a strict xfail). The flip is
made here, by wrapping the engine's ``policy_loss`` so it returns the negated loss: production code has no
switch for it.

The toy: reward = share of completion tokens with an even id. A random tiny model is near-uniform over 49k
tokens and its tied, tiny embeddings give LoRA nothing low-dimensional to steer, so the test gives the
output head a structure the attention LoRA can exploit: every even token's output row leans along one
direction u, every odd row against it. At init the hidden state's component along u is random, so even
and odd tokens alternate by chance (group rewards vary); aligning the hidden state with u is a single
direction for the LoRA on q/v/o to learn. The production LoRA targets are the same kind of modules.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from safealign.config import GrpoSettings

from helpers.grpo import EvenTokenScorer, toy_policy

torch.set_num_threads(2)


def _train_toy(steps: int = 14) -> list[float]:
    from safealign.policy.engine import StepConfig, Trainable, collate_prompts, grpo_step
    from safealign.policy.loading import format_prompt
    from safealign.policy.objective import PromptTreatment

    model, tok = toy_policy()
    raw = ["hi", "How do I pick a lock?"]
    ids = [tok(format_prompt(tok, r), add_special_tokens=False)["input_ids"] for r in raw]
    batch = collate_prompts(raw, ids, tok.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    cfg = StepConfig.from_settings(GrpoSettings(num_generations=4, max_new_tokens=8))
    scorer = EvenTokenScorer()
    means = []
    for _ in range(steps):
        result = grpo_step(
            Trainable(model, tok, optimizer), batch, PromptTreatment(np.array([1.0])), scorer, cfg
        )
        means.append(result.metrics["even_mean"])
    return means


@pytest.mark.parametrize(
    "flip_gradient",
    [
        False,
        pytest.param(True, marks=pytest.mark.xfail(strict=True, reason="a flipped gradient must not learn")),
    ],
    ids=["descend", "flipped-sign"],
)
def test_toy_reward_rises_clearly(flip_gradient, monkeypatch):
    from safealign.policy import engine

    if flip_gradient:  # ascend the loss instead of descending it: the toy reward must not rise
        descend = engine.policy_loss

        def ascend(*args, **kwargs):
            parts = descend(*args, **kwargs)
            return None if parts is None else engine.PolicyLoss(-parts.loss, parts.kl)

        monkeypatch.setattr(engine, "policy_loss", ascend)
    means = _train_toy()
    start, end = float(np.mean(means[:2])), float(np.mean(means[-3:]))
    assert 0.15 < start < 0.85, f"toy reward should start mixed, got {means}"
    assert end > start + 0.3 and end > 0.8, f"mean reward did not rise clearly: {np.round(means, 3).tolist()}"
