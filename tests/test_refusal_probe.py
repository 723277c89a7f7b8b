"""grpo.benign_refusal_probe: greedy refusals of benign train prompts put into the step, where the benign
refusal penalty meets them (policy/refusal_probe.py, engine.splice)."""

import numpy as np
import pytest
import torch

from safealign.config import Settings
from safealign.errors import ConfigError
from safealign.policy.engine import splice
from safealign.policy.prompts import PromptSampler
from safealign.policy.refusal_probe import substitute

from helpers.tiny import TINY_POLICY

PAD = 0


@pytest.fixture(scope="module")
def tiny_lora():
    from peft import LoraConfig, get_peft_model

    from safealign.policy.loading import load_policy

    model, tok = load_policy(TINY_POLICY)
    torch.manual_seed(3)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])), tok


def test_splice_puts_each_forced_completion_in_the_last_row_of_its_group_and_widens_the_batch():
    completion = torch.tensor([[5, 6, 7], [5, 6, 2], [8, 9, 9], [8, 2, 0]])  # 2 prompts x G=2, EOS = 2
    cmask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]])
    out, mask = splice(completion, cmask, {0: [11, 12, 13, 2]}, 2, PAD)
    assert out.tolist() == [[5, 6, 7, 0], [11, 12, 13, 2], [8, 9, 9, 0], [8, 2, 0, 0]]
    # row 0 was cut at width 3 without EOS: its mask stays 3 long, the new padding is not completion
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]
    narrow, narrow_mask = splice(completion, cmask, {1: [4, 2]}, 2, PAD)
    assert narrow.tolist()[3] == [4, 2, 0] and narrow_mask.tolist()[3] == [1, 1, 0]
    assert narrow.tolist()[:3] == completion.tolist()[:3]
    same, same_mask = splice(completion, cmask, {}, 2, PAD)
    assert same is completion and same_mask is cmask


def test_substitute_fills_only_benign_places_in_order():
    drawn, kinds = ["harm a", "harm b", "bread", "tea"], [True, True, False, False]
    refused = {"floorboard": [1, 2], "ocean films": [3], "email sign-off": [4]}  # more than the places
    prompts, forced = substitute(drawn, kinds, refused)
    assert prompts == ["harm a", "harm b", "floorboard", "ocean films"]
    assert forced == {2: [1, 2], 3: [3]}
    assert substitute(drawn, kinds, {}) == (drawn, {})


def test_draw_benign_gives_distinct_prompts_from_the_checkpointed_generator():
    benign = [f"b{i}" for i in range(10)]
    a, b = PromptSampler(["x"], benign, 4, 0.5, 7), PromptSampler(["x"], benign, 4, 0.5, 7)
    first = a.draw_benign(6)
    assert len(set(first)) == 6 and first == b.draw_benign(6)
    assert sorted(a.draw_benign(50)) == sorted(benign)  # capped at the pool


def test_probe_without_a_penalty_is_refused_in_config():
    with pytest.raises(ValueError, match="benign_refusal_probe needs grpo.benign_refusal_penalty"):
        Settings.model_validate({"grpo": {"benign_refusal_probe": 8}})
    ok = Settings.model_validate({"grpo": {"benign_refusal_probe": 8, "benign_refusal_penalty": 0.2}})
    assert ok.grpo.benign_refusal_probe == 8


def test_trl_engine_refuses_the_probe_with_a_config_error():
    from safealign.policy.trl_engine import train_grpo_trl

    settings = Settings.model_validate(
        {"grpo": {"engine": "trl", "benign_refusal_probe": 8, "benign_refusal_penalty": 0.2}}
    )
    with pytest.raises(ConfigError, match="fast engine"):
        train_grpo_trl(settings)


class _ConstScorer:
    aspects = ["helpful", "safety"]

    def score(self, raw, texts, ids_list):
        return np.array([[0.5, 1.0] for _ in texts])


def test_a_forced_greedy_refusal_is_trained_on_with_the_penalty(tiny_lora):
    """grpo_step with ``forced``: the benign prompt's last sample is the given refusal, it loses the penalty
    and gets the group's only negative advantage (the three samples score alike)."""
    from safealign.policy.engine import StepConfig, Trainable, grpo_step
    from safealign.policy.objective import PromptTreatment
    from safealign.policy.prompts import PromptEncoder

    model, tok = tiny_lora
    g = 4
    cfg = StepConfig.from_settings(Settings.model_validate({"grpo": {"num_generations": g,
                                                                     "max_new_tokens": 4}}).grpo)  # fmt: skip
    batch = PromptEncoder(tok, None, 64).batch(["how do I make a weapon", "how do I bake bread"])
    refusal = tok("I can't help.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(0)
    treatment = PromptTreatment(np.array([0.5, 0.5]), constrained=[True, False], refusal_penalties=[0.0, 0.3],
                                forced={1: refusal})  # fmt: skip
    policy = Trainable(model, tok, torch.optim.SGD(params, lr=0.0))
    result = grpo_step(policy, batch, treatment, _ConstScorer(), cfg)
    assert result.completions[2 * g - 1] == "I can't help."
    assert np.allclose(result.rewards[g:], [0.75, 0.75, 0.75, 0.45])
    assert result.advantages.values[2 * g - 1] < 0 < result.advantages.values[g]
    assert result.metrics["frac_refusal_penalised"] == pytest.approx(1 / (2 * g))


def test_the_grpo_stage_trains_on_the_greedy_refusals_it_probes(tmp_path, monkeypatch):
    """The stage end to end on tiny models with the probe on. The tiny policy never refuses, so the judge's
    verdict on the probe's greedy replies is injected ("every greedy reply refuses"): each step's benign
    place then holds a probed prompt, the step rows count it, and the penalty (the real judge, on the
    forced gibberish) stays 0."""
    from safealign.policy import engine, refusal_probe
    from safealign.policy.grpo import train_grpo

    from helpers.grpo import RecordingScorer, read_csv, stage_inputs

    steps: list[tuple[list[str], dict]] = []
    probes: list[dict] = []
    real_step, real_probe = engine.grpo_step, refusal_probe.probe_benign

    def recording_step(policy, prompts, treatment, *args, **kwargs):
        steps.append((list(prompts.raw), dict(treatment.forced)))
        return real_step(policy, prompts, treatment, *args, **kwargs)

    def recording_probe(*args, **kwargs):
        probes.append(real_probe(*args, **kwargs))
        return probes[-1]

    monkeypatch.setattr(refusal_probe, "is_refusal", lambda reply: True)
    monkeypatch.setattr("safealign.policy.grpo.grpo_step", recording_step)
    monkeypatch.setattr("safealign.policy.grpo.probe_benign", recording_probe)
    settings, layout = stage_inputs(
        tmp_path, benign_fraction=0.5, steps=4, benign_refusal_probe=2, benign_refusal_penalty=0.2
    )
    summary = train_grpo(settings, resume=False, scorer=RecordingScorer())

    assert summary["benign_refusal_probe"] == 2 and summary["benign_refusal_penalty"] == 0.2
    assert len(steps) == len(probes) == 4
    for (prompts, forced), refused in zip(steps, probes, strict=True):
        first = next(iter(refused))  # the probe's first refused prompt takes the one benign place ...
        assert prompts[1] == first and forced == {1: refused[first]}  # ... with its greedy reply
        assert prompts[0] not in refused
    rows = read_csv(layout.grpo_steps_csv)
    assert [float(r["probe_refused_frac"]) for r in rows] == [1.0] * 4
    assert [float(r["probe_forced"]) for r in rows] == [1.0] * 4
