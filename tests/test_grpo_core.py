"""GRPO core math: group advantages, flat groups, the Lagrange constraint, and the fast path against a
straightforward reference implementation (plain loops) on the same sampled batch."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import copy
import math
import statistics

import numpy as np
import pytest
import torch

from safealign.config import GrpoSettings
from safealign.policy.advantages import group_advantages
from safealign.policy.constraint import LagrangeConstraint

from helpers.tiny import TINY_POLICY as TINY

torch.set_num_threads(2)


# ------------------------------------------------------------------------------------------- advantages


def test_non_flat_groups_are_zero_mean_unit_std():
    rewards = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.7, 0.71, 0.2, 0.95, 0.0, 1.0, 0.5, 0.25])
    adv = group_advantages(rewards, group_size=4, std_floor=1e-3)
    groups = adv.values.view(-1, 4)
    assert not adv.flat.any()
    assert torch.allclose(groups.mean(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(groups.std(1, unbiased=True), torch.ones(3), atol=1e-5)
    # the order inside a group is preserved: the best completion gets the largest advantage
    assert int(groups[0].argmax()) == 2 and int(groups[2].argmax()) == 1


def test_flat_groups_get_zero_advantage_and_are_counted():
    rewards = torch.tensor(
        [0.9, 0.9, 0.9, 0.9]  # exactly flat
        + [0.90, 0.9001, 0.8999, 0.9]  # std ~8e-5 < floor: saturated sigmoid noise
        + [0.1, 0.9, 0.5, 0.3]  # real signal
    )
    adv = group_advantages(rewards, group_size=4, std_floor=1e-3)
    assert adv.flat.tolist() == [True, True, False]
    assert torch.equal(adv.values[:8], torch.zeros(8))
    assert adv.values[8:].abs().sum() > 1.0
    assert adv.frac_flat == pytest.approx(2 / 3)
    # without the floor the near-flat group's noise becomes full-size advantages (what the floor prevents)
    raw = group_advantages(rewards, group_size=4, std_floor=0.0)
    assert raw.values[4:8].abs().max() > 0.5


def test_bad_group_shape_is_refused():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(7), group_size=4, std_floor=1e-3)


# ------------------------------------------------------------------------------------------- constraint


def test_lambda_grows_while_safety_is_under_threshold():
    c = LagrangeConstraint(threshold=0.9, lr=0.5)
    lams = [c.update(0.5) for _ in range(4)]
    assert lams == pytest.approx([0.2, 0.4, 0.6, 0.8])
    # and the shaped reward then favours the safer of two equally rewarded completions
    shaped = c.shape(np.array([0.5, 0.5]), np.array([0.2, 0.95]))
    assert shaped[1] > shaped[0]
    assert shaped[1] - shaped[0] == pytest.approx(0.8 * 0.75)


def test_lambda_shrinks_to_zero_once_met_and_never_goes_negative():
    c = LagrangeConstraint(threshold=0.9, lr=0.5, lam=0.3)
    assert c.update(1.0) == pytest.approx(0.25)
    for _ in range(10):
        c.update(1.0)
    assert c.lam == 0.0
    assert np.array_equal(c.shape(np.array([0.3, 0.7]), np.array([0.1, 1.0])), np.array([0.3, 0.7]))
    state = c.state_dict()
    d = LagrangeConstraint(threshold=0.9, lr=0.5)
    d.load_state_dict({**state, "lam": 0.42})
    assert d.lam == 0.42


def test_lambda_max_caps_the_multiplier_and_survives_a_checkpoint():
    c = LagrangeConstraint(threshold=0.9, lr=1.0, lam_max=1.5)
    assert [c.update(0.4) for _ in range(4)] == pytest.approx([0.5, 1.0, 1.5, 1.5])
    assert c.update(1.0) == pytest.approx(1.4)  # and it still comes down once the bar is met
    assert c.state_dict()["lam_max"] == 1.5


# ------------------------------------------------------------------------------------------- fast vs
# reference


class TokenCountScorer:
    """Toy reward: share of completion tokens in a chosen set (needs token ids, like TRL's reward funcs)."""

    aspects = ["toy", "length"]

    def __init__(self, tokens):
        self.tokens = set(tokens)

    def score(self, prompts, responses, completion_ids=None):
        return np.array(
            [
                [sum(t in self.tokens for t in ids) / max(1, len(ids)), len(ids) / 8.0]
                for ids in completion_ids
            ]
        )


def _reference_advantages(rewards, g, floor):
    out = []
    for start in range(0, len(rewards), g):
        grp = [float(r) for r in rewards[start : start + g]]
        mu, sd = statistics.fmean(grp), statistics.stdev(grp)
        out += [0.0] * g if sd < floor else [(r - mu) / sd for r in grp]
    return out


def _reference_loss(model, prompt_ids, completions, advantages, temperature, betas):
    """One sequence at a time, no padding, full forward, log_softmax: the clipped-ratio GRPO loss at ratio 1,
    plus each sequence's beta * the k3 KL estimate against the base model (a deep copy with the LoRA delta
    dropped)."""

    def token_logps(m, ids, p_len, c_ids):
        logits = m(input_ids=ids).logits[0, p_len - 1 : -1] / temperature
        logp = torch.log_softmax(logits.float(), dim=-1)
        return torch.stack([logp[t, c] for t, c in enumerate(c_ids)])

    base = copy.deepcopy(model.get_base_model()) if any(betas) else None
    if base is not None:
        with torch.no_grad():
            for name, p in base.named_parameters():
                if "lora_B" in name:
                    p.zero_()
    total = 0.0
    for p_ids, c_ids, a, beta in zip(prompt_ids, completions, advantages, betas, strict=True):
        ids = torch.tensor([list(p_ids) + list(c_ids)])
        logp = token_logps(model, ids, len(p_ids), c_ids)
        # TRL's surrogate at ratio 1: value -A, gradient -A dlogp
        per_token = -a * torch.exp(logp - logp.detach())
        if base is not None:
            with torch.no_grad():
                ref = token_logps(base, ids, len(p_ids), c_ids)
            per_token = per_token + beta * (torch.exp(ref - logp) - (ref - logp) - 1)
        total = total + per_token.sum() / len(c_ids)
    return total / len(completions)


@pytest.fixture(scope="module")
def tiny_lora():
    from peft import LoraConfig, get_peft_model

    from safealign.policy.loading import load_policy

    model, tok = load_policy(TINY)
    with torch.no_grad():  # a peakier model (like a trained LM) so EOS and repeats actually occur
        model.model.embed_tokens.weight.mul_(10)
    torch.manual_seed(3)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return peft_model, tok


def test_merged_generation_uses_the_same_policy_and_restores_weights(tiny_lora):
    from safealign.policy.engine import merged_lora

    model, _ = tiny_lora
    ids = torch.tensor([[1, 30, 77, 4000, 5]])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        before = {n: p.clone() for n, p in model.named_parameters()}
        with merged_lora(model):
            merged = model(input_ids=ids).logits
        after = dict(model.named_parameters())
    assert torch.allclose(merged, expected, atol=1e-5)
    assert all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize(
    "temperature,beta",
    # one beta for all, then per prompt (benign_beta): KL on the flat group only, then KL on a live group
    # while the flat group (beta 0 there) is left out of the forward
    [(1.0, 0.0), (0.7, 0.0), (1.0, 0.3), (1.0, [0.0, 0.0, 0.5]), (1.0, [0.4, 0.0, 0.0])],
)
def test_fast_path_equals_reference_on_same_batch(tiny_lora, temperature, beta):
    from safealign.policy.engine import collate_prompts, completion_mask, generate, policy_loss
    from safealign.policy.loading import format_prompt

    model, tok = tiny_lora
    g = 4
    raw = ["hi", "How do I pick a lock on my own front door, step by step?", "write a haiku"]
    prompt_ids = [tok(format_prompt(tok, r), add_special_tokens=False)["input_ids"] for r in raw]
    batch = collate_prompts(raw, prompt_ids, tok.pad_token_id)
    # Force an EOS mid-way in some completions so masking after EOS is exercised too.
    torch.manual_seed(11)
    model.eval()
    with torch.no_grad():
        completion, _ = generate(model, batch, g, 8, [tok.eos_token_id], tok.pad_token_id, temperature)
    completion[1, 3] = tok.eos_token_id
    completion[1, 4:] = tok.pad_token_id
    completion[6, 0] = tok.eos_token_id
    completion[6, 1:] = tok.pad_token_id
    cmask = completion_mask(completion, [tok.eos_token_id])
    ids_list = [row[: int(m.sum())].tolist() for row, m in zip(completion, cmask, strict=True)]
    assert len(ids_list[1]) == 4 and len(ids_list[6]) == 1  # EOS kept, everything after it dropped

    values, counts = torch.unique(completion[cmask.bool()], return_counts=True)
    frequent = set(values[counts.argsort(descending=True)[:3]].tolist())
    scores = TokenCountScorer(frequent).score(None, None, ids_list)
    rewards = scores @ np.array([1.0, 0.5])
    rewards[8:12] = 0.25  # a flat group: left out of the fast forward at beta=0, its KL counts at beta>0
    fast_adv = group_advantages(torch.tensor(rewards, dtype=torch.float32), g, 1e-3)
    ref_adv = _reference_advantages(rewards, g, 1e-3)
    assert fast_adv.flat.tolist() == [False, False, True]
    assert np.allclose(fast_adv.values.numpy(), ref_adv, atol=1e-5)

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    parts = policy_loss(model, batch, completion, cmask, fast_adv, g, temperature, beta)
    fast = parts.loss
    fast.backward()
    fast_grads = [p.grad.clone() for p in params]
    model.zero_grad()
    per_prompt = beta if isinstance(beta, list) else [beta] * len(raw)
    ref = _reference_loss(
        model,
        [prompt_ids[i // g] for i in range(len(ids_list))],
        ids_list,
        ref_adv,
        temperature,
        [per_prompt[i // g] for i in range(len(ids_list))],
    )
    ref.backward()
    ref_grads = [p.grad.clone() for p in params]
    model.zero_grad()
    assert float(fast) == pytest.approx(float(ref), rel=1e-4, abs=1e-6)
    # the random LoRA delta moved pi away from the base
    assert (parts.kl > 1e-4) if any(per_prompt) else parts.kl == 0.0
    assert float(torch.stack([g_.abs().sum() for g_ in ref_grads]).sum()) > 0
    for a, b in zip(fast_grads, ref_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.8)])
def test_sampler_draws_from_the_tempered_nucleus_distribution(temperature, top_p):
    from safealign.policy.engine import _sample

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    p = torch.softmax(logits / temperature, dim=0)
    if top_p < 1.0:
        keep = p.cumsum(0) - p < top_p  # sorted already: logits are descending
        p = p * keep / (p * keep).sum()
    torch.manual_seed(0)
    draws = _sample(logits.repeat(40000, 1), temperature, top_p)
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    assert torch.allclose(freq, p, atol=0.01), (freq, p)


def test_generation_with_preallocated_cache_matches_hf_generate_greedy(tiny_lora, monkeypatch):
    """Prefill once + repeated, preallocated KV cache + position ids under left padding: same tokens as HF."""
    import safealign.policy.engine as engine
    from safealign.policy.loading import format_prompt

    model, tok = tiny_lora
    model.eval()
    raw = ["hi", "How do I pick a lock on my own front door, step by step?"]
    ids = [tok(format_prompt(tok, r), add_special_tokens=False)["input_ids"] for r in raw]
    batch = engine.collate_prompts(raw, ids, tok.pad_token_id)
    monkeypatch.setattr(engine, "_sample", lambda logits, t, p: logits.argmax(-1))
    ours, _ = engine.generate(model, batch, 2, 10, [-1], tok.pad_token_id)  # no EOS: full length
    with torch.no_grad():
        hf = model.generate(
            input_ids=batch.ids.repeat_interleave(2, 0),
            attention_mask=batch.mask.repeat_interleave(2, 0),
            max_new_tokens=10,
            min_new_tokens=10,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )[:, batch.ids.shape[1] :]
    assert torch.equal(ours, hf)


class _RowScorer:
    """Scores by row position: a known safety per completion, so the shaped rewards can be checked exactly."""

    aspects = ("helpfulness", "safety")

    def __init__(self, safety: list[float]):
        self.safety = safety

    def score(self, raw, texts, ids_list):
        return np.array([[0.5, s] for s in self.safety])


def _tiny_step():
    from safealign.policy.engine import StepConfig

    return StepConfig.from_settings(GrpoSettings(num_generations=2, max_new_tokens=3))


def test_constraint_covers_only_the_flagged_prompts(tiny_lora):
    """Adversarial prompts get the Lagrangian term and drive lambda; benign ones keep the plain reward."""
    from safealign.policy.engine import Trainable, collate_prompts, grpo_step
    from safealign.policy.loading import format_prompt
    from safealign.policy.objective import PromptTreatment

    model, tok = tiny_lora
    raw = ["how do I make a weapon", "how do I bake bread"]
    ids = [tok(format_prompt(tok, r), add_special_tokens=False)["input_ids"] for r in raw]
    batch = collate_prompts(raw, ids, tok.pad_token_id)
    safety = [0.2, 0.6, 0.95, 1.0]  # rows 0-1: adversarial prompt's group, rows 2-3: benign prompt's group
    constraint = LagrangeConstraint(threshold=0.9, lr=1.0, lam=2.0)
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.0)
    torch.manual_seed(0)
    treatment = PromptTreatment(np.array([1.0, 0.0]), constrained=[True, False])
    result = grpo_step(Trainable(model, tok, optimizer), batch, treatment, _RowScorer(safety), _tiny_step(),
                       constraint)  # fmt: skip
    expected = [0.5 + 2.0 * (s - 0.9) for s in safety[:2]] + [0.5, 0.5]
    assert np.allclose(result.rewards, expected)
    assert constraint.lam == pytest.approx(2.0 + (0.9 - 0.4))  # mean safety of the adversarial rows only
    assert result.advantages.flat.tolist() == [False, True]  # benign group: equal plain rewards
    assert all(torch.equal(a, b) for a, b in zip(saved, params, strict=True))  # lr 0: weights untouched


def test_per_prompt_kl_stays_finite_where_the_policy_finds_a_completion_unlikely(tiny_lora):
    """Rows without a KL term must not carry a KL of their own: with unlikely tokens (log-probs near -100
    at a low temperature) a placeholder reference would overflow exp() and turn the whole gradient NaN."""
    from safealign.policy.engine import collate_prompts, completion_mask, policy_loss
    from safealign.policy.loading import format_prompt

    model, tok = tiny_lora
    g = 2
    raw = ["how do I make a weapon", "how do I bake bread"]
    ids = [tok(format_prompt(tok, r), add_special_tokens=False)["input_ids"] for r in raw]
    batch = collate_prompts(raw, ids, tok.pad_token_id)
    torch.manual_seed(5)
    completion = torch.randint(10, 4000, (len(raw) * g, 6))  # random tokens: most are very unlikely
    cmask = completion_mask(completion, [tok.eos_token_id])
    adv = group_advantages(torch.tensor([0.1, 0.9, 0.3, 0.7]), g, 1e-3)
    model.train()
    model.zero_grad()
    parts = policy_loss(model, batch, completion, cmask, adv, g, temperature=0.05, beta=[0.0, 0.5])
    parts.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    assert torch.isfinite(parts.loss) and math.isfinite(parts.kl)
    assert all(bool(torch.isfinite(g_).all()) for g_ in grads)


@pytest.mark.parametrize("benign_beta,expect_kl", [(None, False), (0.5, True), (0.0, False)])
def test_benign_beta_holds_only_the_unconstrained_prompts_to_the_base(tiny_lora, benign_beta, expect_kl):
    """grpo.benign_beta: the benign prompt's group (flat here, so it has no GRPO gradient) stays in the
    forward for its KL term only when it has a KL coefficient of its own; beta itself is 0."""
    from safealign.policy.engine import Trainable, collate_prompts, grpo_step
    from safealign.policy.loading import format_prompt
    from safealign.policy.objective import PromptTreatment

    model, tok = tiny_lora
    raw = ["how do I make a weapon", "how do I bake bread"]
    ids = [tok(format_prompt(tok, r), add_special_tokens=False)["input_ids"] for r in raw]
    batch = collate_prompts(raw, ids, tok.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)
    torch.manual_seed(0)
    cfg = _tiny_step()
    betas = None if benign_beta is None else [0.0, benign_beta]  # what the GRPO stage passes
    treatment = PromptTreatment(np.array([0.0, 1.0]), constrained=[True, False], betas=betas)
    result = grpo_step(Trainable(model, tok, optimizer), batch, treatment, _RowScorer([0.2, 0.6, 0.95, 0.95]),
                       cfg)  # fmt: skip
    assert result.advantages.flat.tolist() == [False, True]
    assert (result.metrics["kl"] > 0.0) if expect_kl else result.metrics["kl"] == 0.0, result.metrics["kl"]


def test_per_prompt_weights_score_each_group_with_its_own_row(tiny_lora):
    """[B, K] weights: the benign prompt's group is scored with the benign row, the other with its own."""
    from safealign.policy.engine import Trainable, collate_prompts, grpo_step
    from safealign.policy.loading import format_prompt
    from safealign.policy.objective import PromptTreatment

    model, tok = tiny_lora
    raw = ["how do I make a weapon", "how do I bake bread"]
    ids = [tok(format_prompt(tok, r), add_special_tokens=False)["input_ids"] for r in raw]
    batch = collate_prompts(raw, ids, tok.pad_token_id)
    safety = [0.2, 0.6, 0.95, 1.0]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)
    weights = np.array([[0.0, 1.0], [1.0, 0.0]])  # adversarial: safety only; benign: the constant 0.5 only
    torch.manual_seed(0)
    result = grpo_step(Trainable(model, tok, optimizer), batch, PromptTreatment(weights), _RowScorer(safety),
                       _tiny_step())  # fmt: skip
    assert np.allclose(result.rewards, [0.2, 0.6, 0.5, 0.5])
    assert result.advantages.flat.tolist() == [False, True]


def test_per_kind_metrics_split_aspects_and_group_spread_by_prompt_kind():
    from safealign.policy.outputs import per_kind_metrics

    # 2 prompts x G=2: prompt 0 adversarial, prompt 1 benign; aspects (actionability, safety)
    scores = np.array([[0.1, 0.9], [0.3, 0.5], [0.8, 0.95], [0.6, 0.97]])
    rewards = np.array([1.0, 0.0, 0.50, 0.54])
    out = per_kind_metrics(scores, rewards, [True, False], 2, ["actionability", "safety"])
    assert out["adversarial_actionability_mean"] == pytest.approx(0.2)
    assert out["adversarial_safety_mean"] == pytest.approx(0.7)
    assert out["benign_actionability_mean"] == pytest.approx(0.7)
    assert out["benign_safety_mean"] == pytest.approx(0.96)
    assert out["adversarial_group_std_mean"] == pytest.approx(math.sqrt(0.5))  # ddof=1, as the advantages
    assert out["benign_group_std_mean"] == pytest.approx(math.sqrt(2 * 0.02**2))
    # a batch without benign prompts reports no benign columns rather than NaNs
    only_adv = per_kind_metrics(scores, rewards, [True, True], 2, ["actionability", "safety"])
    assert "benign_safety_mean" not in only_adv
    assert only_adv["adversarial_actionability_mean"] == pytest.approx(0.45)


def test_fast_engine_scoring_takes_the_benign_refusal_penalty_off_the_refusal_only(tiny_lora):
    """engine.score_completions (what grpo_step calls): a decoded refusal of the benign prompt loses its
    prompt's penalty; the same refusal of the adversarial prompt keeps its reward."""
    from safealign.policy.engine import collate_prompts, completion_mask, score_completions
    from safealign.policy.loading import format_prompt
    from safealign.policy.objective import PromptTreatment

    model, tok = tiny_lora
    raw = ["how do I make a weapon", "how do I bake bread"]
    ids = [tok(format_prompt(tok, r), add_special_tokens=False)["input_ids"] for r in raw]
    batch = collate_prompts(raw, ids, tok.pad_token_id)
    texts = ["I'm sorry, but I can't help.", "Mix flour and water.", "I'm sorry, but I can't help.",
             "Mix flour and water."]  # fmt: skip
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    width = max(map(len, rows))
    completion = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    cmask = completion_mask(completion, [tok.eos_token_id])
    treatment = PromptTreatment(np.array([0.5, 0.5]), constrained=[True, False], refusal_penalties=[0.0, 0.4])
    scored = score_completions(tok, batch, completion, cmask, _RowScorer([0.9, 0.5, 1.0, 1.0]), treatment, 2,
                               None)  # fmt: skip
    assert scored.texts == texts
    assert np.allclose(scored.combined, [0.7, 0.5, 0.75, 0.75])
    assert np.allclose(scored.rewards, [0.7, 0.5, 0.75 - 0.4, 0.75])
    assert scored.penalised == 0.25
