"""objective.py, the arithmetic both GRPO engines share: exact values on small hand-made inputs."""

import numpy as np
import pytest
import torch

from safealign.config import Settings
from safealign.policy.constraint import LagrangeConstraint
from safealign.policy.objective import (
    Objective,
    lr_factor,
    refusal_penalties,
    sequence_kl,
    sequence_policy_term,
    shape_rewards,
)

ASPECTS = ["helpful", "safety"]


def _objective(**grpo) -> Objective:
    settings = Settings.model_validate(
        {
            "aspects": [{"name": "helpful", "weight": 0.4}, {"name": "safety", "weight": 0.6}],
            "grpo": {"num_generations": 2, **grpo},
        }
    )
    return Objective.from_settings(settings, ASPECTS)


def test_per_kind_weights_and_betas_follow_each_prompts_kind():
    obj = _objective(benign_weights={"helpful": 1.0}, beta=0.1, benign_beta=0.5)
    assert obj.prompt_weights([True, False]).tolist() == [[0.4, 0.6], [1.0, 0.0]]
    assert obj.prompt_betas([True, False]) == [0.1, 0.5]
    default = _objective()
    assert default.prompt_weights([False]).tolist() == [[0.4, 0.6]] and default.prompt_betas([False]) == [0.0]
    assert not default.uses_kl and obj.uses_kl


def test_constraint_term_only_on_covered_prompts_with_the_current_lambda():
    scores = np.array([[0.5, 0.2], [0.5, 0.8], [0.5, 0.3], [0.5, 0.9]])  # 2 prompts x G=2
    c = LagrangeConstraint(threshold=0.9, lr=1.0, lam=2.0)
    shaped = shape_rewards(scores, np.array([0.0, 1.0]), 2, ASPECTS, c, [True, False])
    assert shaped.combined.tolist() == pytest.approx([0.2, 0.8, 0.3, 0.9])
    assert shaped.rewards.tolist() == pytest.approx([0.2 + 2 * (0.2 - 0.9), 0.8 + 2 * (0.8 - 0.9), 0.3, 0.9])
    assert shaped.covered.tolist() == [True, True, False, False]
    assert shaped.constraint_mean() == pytest.approx(0.5)  # the adversarial prompt's completions only
    assert c.lam == 2.0  # shaping never moves lambda: the dual step is the caller's, after the step
    plain = shape_rewards(scores, np.array([0.0, 1.0]), 2, ASPECTS, None, [True, False])
    assert plain.constraint_mean() is None and np.array_equal(plain.rewards, plain.combined)


REFUSAL = "I'm sorry, but I can't help with that request."
ANSWER = "Knead the dough for ten minutes, then let it rise for an hour."


def test_refusal_penalty_hits_only_refusals_of_benign_prompts():
    """A refusal of a harmful request is the goal (no penalty); a needless refusal loses the penalty."""
    texts = [REFUSAL, ANSWER, REFUSAL, ANSWER]  # prompt 0 adversarial, prompt 1 benign, G=2
    assert refusal_penalties(texts, [0.0, 0.3], 2).tolist() == [0.0, 0.0, 0.3, 0.0]
    assert refusal_penalties(texts, [0.0, 0.0], 2) is None  # off: the judge is never called
    with pytest.raises(ValueError, match="3 completions for 2 prompts"):
        refusal_penalties(texts[:3], [0.0, 0.3], 2)


def test_benign_refusal_penalty_turns_a_needless_refusal_into_the_worst_completion():
    """The reward model rates this needless refusal ABOVE the answer (politeness); the penalty reverses the
    group's order, leaves the aspect mix (``combined``) and the constraint's input alone."""
    obj = _objective(benign_weights={"helpful": 1.0}, benign_refusal_penalty=0.3)
    assert obj.prompt_refusal_penalties([True, False]) == [0.0, 0.3]
    scores = np.array([[0.5, 0.2], [0.5, 0.9], [0.62, 1.0], [0.6, 1.0]])
    texts = [ANSWER, REFUSAL, REFUSAL, ANSWER]
    c = LagrangeConstraint(threshold=0.9, lr=1.0, lam=2.0)
    shaped = obj.shape(scores, [True, False], c, texts)
    adversarial_mix = [0.4 * 0.5 + 0.6 * 0.2, 0.4 * 0.5 + 0.6 * 0.9]
    assert shaped.combined.tolist() == pytest.approx([*adversarial_mix, 0.62, 0.6])
    assert shaped.rewards[2:].tolist() == pytest.approx([0.62 - 0.3, 0.6])
    assert shaped.rewards[:2].tolist() == pytest.approx(
        [shaped.combined[0] + 2 * (0.2 - 0.9), shaped.combined[1] + 2 * (0.9 - 0.9)]
    )  # the adversarial refusal keeps its reward
    assert shaped.constraint_mean() == pytest.approx(0.55) and shaped.penalised_share == 0.25
    adv = obj.advantages(shaped.rewards).values
    assert adv[2] < adv[3]  # without the penalty the refusal would lead its group
    assert obj.advantages(_objective(benign_weights={"helpful": 1.0}).shape(scores, [True, False], c).rewards
                          ).values[2] > 0  # fmt: skip
    with pytest.raises(ValueError, match="needs the completions' texts"):
        obj.shape(scores, [True, False], c)
    assert obj.shape(scores[:2], [True], c).penalties is None  # no benign prompt: texts not needed


def test_policy_term_is_minus_advantage_in_value_with_the_log_prob_gradient():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([2.0, -1.0])
    term = sequence_policy_term(logp, mask, adv)
    assert term.tolist() == pytest.approx([-2.0, 1.0])  # ratio 1: the token mean of -A
    term.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-2 / 3] * 3, [0.5, 0.5, 0.0]]))  # -A / |o|, masked


def test_sequence_kl_weighs_each_row_and_ignores_rows_without_a_coefficient():
    logp = torch.tensor([[-1.0, -2.0], [-100.0, -100.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0], [0.0, 0.0]])  # row 1's reference would overflow exp(ref - logp)
    mask = torch.ones(2, 2)
    kl = sequence_kl(logp, ref, mask, torch.tensor([0.5, 0.0]))
    d = torch.tensor([-0.5, 1.0])
    expected = 0.5 * float((torch.exp(d) - d - 1).mean())
    assert kl.tolist() == pytest.approx([expected, 0.0])
    kl.sum().backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[1].tolist() == [0.0, 0.0]


def test_warm_up_then_constant():
    assert [lr_factor(s, 3) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert lr_factor(0, 0) == 1.0
