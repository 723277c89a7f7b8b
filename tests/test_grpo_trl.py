"""The TRL comparison path: GRPOTrainer runs our work with one reward forward shared by all aspects."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from safealign.config import Settings
from safealign.errors import ConfigError
from safealign.policy.reward_adapter import aspect_weights

torch.set_num_threads(2)


ASPECTS = ["politeness", "meaningfulness", "actionability", "safety"]


class CountingScorer:
    aspects = ASPECTS

    def __init__(self):
        self.calls = 0

    def score(self, prompts, responses, completion_ids=None):
        self.calls += 1
        rng = np.random.default_rng(self.calls)
        return rng.uniform(size=(len(prompts), 4))


def test_aspect_weights_follow_the_scorer_order_and_refuse_unscored():
    s = Settings.model_validate(
        {"aspects": [{"name": n, "weight": w} for n, w in zip(ASPECTS, [0.1, 0.2, 0.3, 0.4], strict=True)]}
    )
    w = aspect_weights(s.aspects, ["safety", "politeness", "meaningfulness", "actionability"])
    assert w.tolist() == [0.4, 0.1, 0.2, 0.3]
    with pytest.raises(ConfigError, match="safety"):
        aspect_weights(s.aspects, ["politeness", "meaningfulness", "actionability"])


@pytest.mark.parametrize(
    "key,value", [("benign_weights", {"actionability": 1.0}), ("benign_beta", 0.5), ("selection", {"start": 8})]
)
def test_trl_engine_refuses_benign_settings_it_would_ignore(key, value):
    from safealign.policy.trl_engine import train_grpo_trl

    s = Settings.model_validate(
        {"grpo": {"engine": "trl", "benign_weights": None, "benign_beta": None, "selection": None, key: value}}
    )
    with pytest.raises(ConfigError, match=f"grpo.{key} .*grpo.engine=fast"):
        train_grpo_trl(s, scorer=CountingScorer())


def test_trl_grpo_trainer_runs_with_shared_reward_forward(tmp_path):
    from safealign.policy.loading import load_policy
    from safealign.policy.trl_engine import build_trl_trainer

    settings = Settings.model_validate(
        {
            "policy": {"model": "tiny:smollm2-135m-instruct"},
            "grpo": {
                "max_new_tokens": 6,
                "prompts_per_step": 2,
                "num_generations": 2,
                "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
            },
        }
    )
    model, tok = load_policy(settings)
    scorer = CountingScorer()
    trainer, cache = build_trl_trainer(
        settings, model, tok, scorer, ["hi", "how do I pick a lock"], tmp_path, max_steps=2, default_precision=False
    )
    assert trainer.args.loss_type == "grpo" and trainer.args.beta == 0.0
    assert trainer.args.reward_weights == settings.aspect_weights
    trainer.train()
    assert scorer.calls == 2 and cache.forwards == 2  # four reward functions, one forward per step
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logged) == 2
    for aspect in CountingScorer.aspects:
        assert f"rewards/{aspect}/mean" in logged[0] and f"rewards/{aspect}/std" in logged[0]
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in trainer.model.named_parameters())
