"""RewardModel: text-pair truncation, batched scoring, combined reward, save/load, any K."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from safealign.config import Settings, load_settings
from safealign.reward.model import REWARD_CONFIG, RewardModel, load_encoder

from helpers.tiny import TINY_ENCODER as TINY


def _settings(aspects: list[tuple[str, float]], max_length: int = 32) -> Settings:
    over = [f"reward.encoder={TINY}", f"reward.max_length={max_length}", "reward.freeze_layers=0"]
    s = load_settings(None, over)
    s.aspects = [{"name": n, "weight": w} for n, w in aspects]
    return s


@pytest.fixture(scope="module")
def model() -> RewardModel:
    torch.manual_seed(0)
    return RewardModel.from_settings(
        _settings([("politeness", 0.2), ("meaningfulness", 0.2), ("actionability", 0.2), ("safety", 0.4)])
    )


def test_tiny_encoder_is_small_with_real_tokenizer():
    enc, tok = load_encoder(TINY)
    assert enc.config.hidden_size == 64 and enc.config.num_hidden_layers == 2
    assert tok("hello world", add_special_tokens=False)["input_ids"] == [7592, 2088]  # MiniLM's vocabulary


def test_long_prompt_is_cut_response_kept(model):
    prompt = "alpha " * 200 + "final question here"
    response = "refuse politely"
    ((ids, types, resp),) = model.tokenize([prompt], [response])
    tokens = model.tokenizer.convert_ids_to_tokens(ids)
    assert len(ids) == model.max_length
    response_tokens = model.tokenizer.tokenize(response)
    assert tokens[-len(response_tokens) - 1 :] == response_tokens + ["[SEP]"]
    # the END of the prompt (nearest the response) survives, its beginning is cut
    assert "final" in tokens and "question" in tokens
    assert tokens[0] == "[CLS]" and types[-1] == 1 and types[1] == 0
    assert sum(resp) == len(response_tokens) + 1 and resp[-1] == 1 and resp[0] == 0


def test_long_response_still_leaves_the_prompt_a_share(model):
    ((ids, types, resp),) = model.tokenize(["how do I bake bread"], ["word " * 500])
    assert len(ids) == model.max_length
    prompt_ids = model.tokenizer("how do I bake bread", add_special_tokens=False)["input_ids"]
    assert ids[1 : 1 + len(prompt_ids)] == prompt_ids
    assert ids[1 + len(prompt_ids)] == model.tokenizer.sep_token_id


def test_score_is_in_input_order_and_matches_single_scoring(model):
    prompts = ["short", "a much longer prompt with many more words in it", "mid length prompt", "x"]
    responses = ["ok", "a long long long response with words " * 3, "fine then", ""]
    batched = model.score(prompts, responses, batch_size=2)
    single = np.vstack([model.score([p], [r]) for p, r in zip(prompts, responses, strict=True)])
    assert batched.shape == (4, 4)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert ((batched > 0) & (batched < 1)).all()


def test_score_restores_training_mode_and_has_no_grad(model):
    model.train()
    out = model.score(["a"], ["b"])
    assert model.training
    assert isinstance(out, np.ndarray)
    model.eval()


def test_reward_is_weighted_sum(model):
    p, r = ["a", "b"], ["c", "dd"]
    np.testing.assert_allclose(
        model.reward(p, r), model.score(p, r) @ np.array([0.2, 0.2, 0.2, 0.4]), rtol=1e-6
    )
    assert model.aspects == ["politeness", "meaningfulness", "actionability", "safety"]


def test_empty_input_gives_empty_array(model):
    assert model.score([], []).shape == (0, 4)


def test_mismatched_lengths_rejected(model):
    with pytest.raises(ValueError):
        model.score(["a", "b"], ["c"])


@pytest.mark.parametrize(
    "aspects",
    [
        [("safety", 0.7), ("meaningfulness", 0.3)],
        [("a", 0.1), ("b", 0.2), ("c", 0.3), ("d", 0.2), ("e", 0.2)],
    ],
)
def test_any_k_and_save_load_gives_identical_scores(tmp_path, aspects):
    torch.manual_seed(1)
    m = RewardModel.from_settings(_settings(aspects))
    with torch.no_grad():
        m.head.bias.copy_(torch.linspace(-1, 1, len(aspects)))
    p, r = ["how do I kill a python process?", "hi"], ["use kill -9", "hello"]
    before = m.score(p, r)
    m.save_pretrained(tmp_path / "rm")
    meta = json.loads((tmp_path / "rm" / REWARD_CONFIG).read_text())
    assert meta["aspects"] == [a for a, _ in aspects]
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    after = loaded.score(p, r)
    assert after.shape == (2, len(aspects))
    np.testing.assert_array_equal(before, after)
    np.testing.assert_allclose(loaded.weights, [w for _, w in aspects])
    assert not any(p.name.startswith(".rm.tmp") for p in tmp_path.iterdir())


def test_from_pretrained_rejects_a_non_model_folder(tmp_path):
    from safealign.errors import EXIT_BAD_INPUT, ModelFolderError

    with pytest.raises(ModelFolderError, match="not a reward model folder") as info:
        RewardModel.from_pretrained(tmp_path)
    assert info.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.integration
def test_embedded_minilm_loads_and_scores():
    m = RewardModel.from_settings(load_settings(None, ["reward.encoder=embedded:all-minilm-l6-v2"]))
    assert m.encoder.config.hidden_size == 384
    out = m.score(["How do I bake bread?"], ["Mix flour, water, yeast and salt, knead, rise, bake."])
    assert out.shape == (1, 4)


def test_cached_frozen_prefix_gives_the_same_logits_as_a_full_forward(model):
    model.eval()
    batch = model.collate(
        model.tokenize(["how do I bake bread", "hi"], ["mix flour and water, then bake", "x"])
    )
    full = model(**batch)
    hidden = model.lower_hidden(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], 1)
    assert not hidden.requires_grad
    upper = model.upper_forward(hidden, batch["attention_mask"], 1, batch["response_mask"])
    torch.testing.assert_close(upper, full)


def test_freeze_lower_layers_freezes_embeddings_and_the_lowest_layers():
    m = RewardModel.from_settings(_settings([("safety", 1.0)]))
    assert m.freeze_lower_layers(5) == 1  # clamped: one of the two layers keeps learning
    assert not any(p.requires_grad for p in m.encoder.embeddings.parameters())
    assert not any(p.requires_grad for p in m.encoder.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in m.encoder.encoder.layer[1].parameters())
    assert all(p.requires_grad for p in m.head.parameters())
