"""The TRL engine learns the same toy as the fast engine (test_grpo_learning.py): the share of even token ids
in a completion rises clearly within 14 steps, and does not when the loss is ascended instead (strict xfail).

It runs the engine as ``safealign grpo --set grpo.engine=trl`` builds it (``trl_engine.build_trl_trainer``:
TRL's GRPOTrainer with safealign's advantages, sampler and schedule), on the same toy policy and settings.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from safealign.config import Settings

from helpers.grpo import EvenTokenScorer, toy_policy

torch.set_num_threads(2)


def _train_toy_trl(tmp_path, steps: int = 14) -> list[float]:
    from safealign.policy.trl_engine import build_trl_trainer

    settings = Settings.model_validate(
        {
            "aspects": [{"name": "even", "weight": 1.0}],
            "grpo": {
                "num_generations": 4,
                "prompts_per_step": 2,
                "max_new_tokens": 8,
                "learning_rate": 3e-3,
                "warmup_steps": 0,
                "selection": None,
                "safety_constraint": None,
            },
        }
    )
    model, tok = toy_policy()
    trainer, _ = build_trl_trainer(
        settings, model, tok, EvenTokenScorer(), ["hi", "How do I pick a lock?"], [], tmp_path, steps
    )
    trainer.train()
    return [h["safealign/even_mean"] for h in trainer.state.log_history if "safealign/even_mean" in h]


@pytest.mark.parametrize(
    "ascend",
    [
        False,
        pytest.param(True, marks=pytest.mark.xfail(strict=True, reason="an ascended loss must not learn")),
    ],
    ids=["descend", "flipped-sign"],
)
def test_trl_engine_raises_the_toy_reward_clearly(ascend, tmp_path, monkeypatch):
    from safealign.policy.trl_extensions import SafealignGRPOTrainer

    if ascend:
        descend = SafealignGRPOTrainer._compute_loss
        monkeypatch.setattr(SafealignGRPOTrainer, "_compute_loss", lambda self, m, i: -descend(self, m, i))
    means = _train_toy_trl(tmp_path)
    assert len(means) == 14
    start, end = float(np.mean(means[:2])), float(np.mean(means[-3:]))
    assert 0.15 < start < 0.85, f"toy reward should start mixed, got {means}"
    assert end > start + 0.3 and end > 0.8, f"mean reward did not rise clearly: {np.round(means, 3).tolist()}"
