"""The TRL engine: GRPOTrainer with one reward forward shared by all aspects, and `safealign grpo` on it with
every feature on (constraint, per-kind weights and KL, checkpoint selection), resumed after a stop."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json

import numpy as np
import pytest
import torch

from safealign.config import Settings
from safealign.errors import ConfigError
from safealign.policy.reward_adapter import aspect_weights

from helpers.tiny import TINY_POLICY

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


def test_trl_grpo_trainer_runs_with_shared_reward_forward(tmp_path):
    from safealign.policy.loading import load_policy
    from safealign.policy.trl_engine import build_trl_trainer

    settings = Settings.model_validate(
        {
            "policy": {"model": TINY_POLICY},
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
        settings, model, tok, scorer, ["hi", "how do I pick a lock"], [], tmp_path, 2
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


# ------------------------------------------------------------------------------------------- the stage


def _trl_stage(tmp, steps: int, script: list[float]):
    """Stage inputs with every feature on, and a scorer that scripts the validation's adversarial safety."""
    from safealign.common.jsonl import read_prompts
    from safealign.policy.selection import carve

    from helpers.grpo import ScriptedValidationScorer, stage_inputs

    tmp.mkdir(parents=True, exist_ok=True)
    settings, layout = stage_inputs(
        tmp, engine="trl", steps=steps, checkpoint_every=1, benign_fraction=0.5, benign_beta=0.5,
        benign_weights={"actionability": 1.0}, safety_constraint={"threshold": 0.95, "lr": 0.5},
        selection={"start": 1, "every": 1, "num_adversarial": 1, "num_benign": 1, "max_new_tokens": 4},
    )  # fmt: skip
    seed = settings.grpo.seed
    _, val_adv = carve(read_prompts(layout.adversarial_split("train")), 1, seed, "adversarial")
    _, val_ben = carve(read_prompts(layout.benign_split("train")), 1, seed, "benign")
    return settings, layout, ScriptedValidationScorer(val_adv + val_ben, script)


def test_trl_stage_runs_every_feature(tmp_path):
    """engine=trl with the constraint, benign weights, benign KL and checkpoint selection: each one is
    accepted and shows in what the stage writes."""
    import mlflow
    from safetensors.torch import load_file

    from safealign.policy.grpo import train_grpo

    from helpers.grpo import read_csv

    settings, layout, scorer = _trl_stage(tmp_path, steps=3, script=[0.5, 0.6, 0.9, 0.7])
    summary = train_grpo(settings, resume=False, scorer=scorer)

    assert summary["engine"] == "trl" and summary["steps"] == 3
    assert json.loads(layout.metrics_file("grpo").read_text()) == summary
    assert summary["benign_weights"] == [0.0, 0.0, 1.0, 0.0] and summary["benign_beta"] == 0.5
    # selection: validated after every step, step 2 (scripted best) kept, its adapter written
    assert scorer.validations == 4 and not set(scorer.validation_prompts) & set(scorer.seen)
    assert summary["selected_step"] == 2
    assert [r["step"] for r in summary["selection"]["records"]] == [0, 1, 2, 3]
    saved = load_file(str(layout.adapter_dir / "adapter_model.safetensors"))
    trl_dir = layout.checkpoints_dir / "trl"
    ckpt = {s: load_file(str(trl_dir / f"checkpoint-{s}" / "adapter_model.safetensors")) for s in (2, 3)}
    assert all(torch.equal(saved[k], ckpt[2][k]) for k in saved)
    assert not all(torch.equal(saved[k], ckpt[3][k]) for k in saved)
    rows = read_csv(layout.grpo_steps_csv)
    assert [int(float(r["step"])) for r in rows] == [1, 2, 3]
    for col in ("safety_mean", "reward_mean", "shaped_reward_mean", "adv_mean", "frac_flat_groups", "lambda",
                "kl", "loss", "s_step", "adversarial_safety_mean", "benign_group_std_mean"):  # fmt: skip
        assert col in rows[0], col
    lams = [float(r["lambda"]) for r in rows]
    assert 0 < lams[0] < lams[1] < lams[2]  # safety stays under the bar: the multiplier keeps growing
    assert summary["lambda_final"] == pytest.approx(lams[-1], rel=1e-4)
    assert float(rows[0]["kl"]) == 0.0 and float(rows[-1]["kl"]) > 0  # beta 0: only the benign prompts' KL
    for row in rows:  # one adversarial and one benign prompt per step (benign_fraction 0.5 of 2)
        halves = (float(row["adversarial_safety_mean"]) + float(row["benign_safety_mean"])) / 2
        assert halves == pytest.approx(float(row["safety_mean"]), abs=1e-5)
    mlflow.set_tracking_uri(settings.tracking.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["grpo-test"], output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["safealign.grpo.engine"] == "trl"
    history = mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "lambda")
    assert [m.step for m in history] == [1, 2, 3]


def test_trl_stage_resumes_where_it_stopped(tmp_path):
    """2 steps, then the same run asked for 4: it resumes from TRL's checkpoint with safealign's state
    (lambda, selector, rows) and ends where 4 uninterrupted steps end."""
    from safealign.policy.grpo import train_grpo

    from helpers.grpo import read_csv

    script = [0.5, 0.8, 0.6, 0.7, 0.65]
    settings, layout, scorer = _trl_stage(tmp_path / "clean", steps=4, script=script)
    clean = train_grpo(settings, resume=False, scorer=scorer)
    settings2, layout2, scorer2 = _trl_stage(tmp_path / "resumed", steps=2, script=script)
    train_grpo(settings2, resume=False, scorer=scorer2)
    settings2.grpo.steps = 4
    scorer2.script, scorer2.validations = script[3:], 0
    resumed = train_grpo(settings2, resume=True, scorer=scorer2)

    assert resumed["resumed_from"] == 2 and resumed["steps"] == 4
    assert scorer2.validations == 2  # steps 3 and 4 only: the base and steps 1-2 came from the checkpoint
    assert [r["step"] for r in resumed["selection"]["records"]] == [0, 1, 2, 3, 4]
    assert clean["selected_step"] == resumed["selected_step"] == 1
    a, b = read_csv(layout.grpo_steps_csv), read_csv(layout2.grpo_steps_csv)
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["1", "2", "3", "4"]
    for col in ("lambda", "reward_mean", "safety_mean", "loss"):
        assert [float(r[col]) for r in a] == pytest.approx([float(r[col]) for r in b], rel=1e-4, abs=1e-6), (
            col
        )


def test_trl_stage_refuses_a_checkpoint_past_the_requested_steps(tmp_path):
    """A 3-step run's checkpoints, then the same settings asked for 2 steps: exit 2 (ConfigError) naming the
    checkpoint, and the longer run's checkpoints are still there (neither resumed as a 2-step run nor
    deleted)."""
    from safealign.errors import ConfigError
    from safealign.policy.grpo import train_grpo

    settings, layout, scorer = _trl_stage(tmp_path, steps=3, script=[0.5, 0.6, 0.9, 0.7])
    train_grpo(settings, resume=False, scorer=scorer)
    trl_dir = layout.checkpoints_dir / "trl"
    before = sorted(p.name for p in trl_dir.iterdir())
    settings.grpo.steps = 2
    with pytest.raises(ConfigError, match=r"checkpoint-3.*past grpo.steps=2") as err:
        train_grpo(settings, resume=True, scorer=scorer)
    assert err.value.exit_code == 2
    assert sorted(p.name for p in trl_dir.iterdir()) == before and "checkpoint-3" in before
