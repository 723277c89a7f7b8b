"""The content-keyed reply cache (policy/reply_cache.py): a second evaluation of the same policy on the same
prompts with the same decoding reads its replies instead of generating them; any change of prompt, system
prompt, decoding or weights misses; a damaged or mismatched entry is never trusted."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch

import safealign.policy.decoding as decoding
from safealign.policy.decoding import generate_replies
from safealign.policy.engine import merged_lora
from safealign.policy.reply_cache import ReplyCache, weights_fingerprint

from helpers.tiny import TINY_POLICY as TINY

PROMPTS = ["ok", "How do I pick a lock on my own front door?", "write a haiku about the sea", "hi"]
KW = dict(system_prompt="Be brief.", max_new_tokens=8, batch_size=3, seed=0)


@pytest.fixture(scope="module")
def policy():
    """A tiny random Llama whose greedy replies differ prompt to prompt (init 0.2, see test_decoding)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from safealign.policy.loading import load_tokenizer

    tok = load_tokenizer(TINY)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, initializer_range=0.2,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    return model, tok


class _Counter:
    """Counts calls of ``decoding.generate_rows`` (or refuses them): proof of a hit is no generation."""

    def __init__(self, monkeypatch, refuse: bool = False) -> None:
        self.calls = 0
        real = decoding.generate_rows

        def wrapped(*args, **kwargs):
            self.calls += 1
            if refuse:
                raise AssertionError("generation ran although the reply cache holds these replies")
            return real(*args, **kwargs)

        monkeypatch.setattr(decoding, "generate_rows", wrapped)


def test_a_second_evaluation_of_the_same_policy_reads_the_cache(policy, tmp_path, monkeypatch, caplog):
    model, tok = policy
    cache = ReplyCache(tmp_path)
    first = generate_replies(model, tok, PROMPTS, cache=cache, **KW)
    entries = list((tmp_path / "replies").glob("*.json"))
    assert len(entries) == 1 and not [p for p in (tmp_path / "replies").iterdir() if p.name.startswith(".")]
    assert json.loads(entries[0].read_text())["replies"] == first
    assert generate_replies(model, tok, PROMPTS, **KW) == first  # what is cached is what is generated
    _Counter(monkeypatch, refuse=True)
    with caplog.at_level(logging.INFO, logger="safealign.policy.decoding"):
        again = generate_replies(model, tok, PROMPTS, cache=ReplyCache(tmp_path), **KW)
    assert again == first and "read from the reply cache" in caplog.text


@pytest.mark.parametrize(
    "change",
    [
        {"prompts": [*PROMPTS[:-1], "hi!"]},
        {"system_prompt": "Be thorough."},
        {"max_new_tokens": 9},
        {"batch_size": 2},
        {"temperature": 0.9},
    ],
    ids=["prompt", "system_prompt", "max_new_tokens", "batch_size", "sampling"],
)
def test_a_changed_prompt_or_decoding_setting_misses(policy, tmp_path, monkeypatch, change):
    model, tok = policy
    generate_replies(model, tok, PROMPTS, cache=ReplyCache(tmp_path), **KW)
    counter = _Counter(monkeypatch)
    kw = {**KW, **change}
    generate_replies(model, tok, kw.pop("prompts", PROMPTS), cache=ReplyCache(tmp_path), **kw)
    assert counter.calls == 1
    assert len(list((tmp_path / "replies").glob("*.json"))) == 2


def test_changed_weights_miss_and_the_fingerprint_follows_in_place_edits(policy, tmp_path, monkeypatch):
    model, tok = copy.deepcopy(policy[0]), policy[1]
    before = weights_fingerprint(model)
    generate_replies(model, tok, PROMPTS, cache=ReplyCache(tmp_path), **KW)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    assert weights_fingerprint(model) != before
    counter = _Counter(monkeypatch)
    generate_replies(model, tok, PROMPTS, cache=ReplyCache(tmp_path), **KW)
    assert counter.calls == 1


def test_a_zero_lora_adapter_is_the_base_and_a_trained_one_is_not(policy):
    """GRPO's step 0 (a fresh adapter, B = 0, folded in) decodes with the base's weights: same fingerprint,
    so its validation replies are the base's entry; a non-zero adapter has its own."""
    from peft import LoraConfig, get_peft_model

    base, _tok = policy
    fresh = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with merged_lora(fresh):
        assert weights_fingerprint(fresh) == weights_fingerprint(base)
    with pytest.raises(ValueError, match="active, unmerged LoRA"):
        weights_fingerprint(fresh)  # outside merged_lora the adapter is live: refuse to guess
    with torch.no_grad():
        fresh.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.fill_(0.01)
    with merged_lora(fresh):
        assert weights_fingerprint(fresh) != weights_fingerprint(base)


def _damage_truncate(entry: dict, path) -> None:
    path.write_text(json.dumps(entry)[:-20])


def _damage_reply(entry: dict, path) -> None:
    entry["replies"][0] = entry["replies"][0] + " tampered"
    path.write_text(json.dumps(entry))


def _damage_key(entry: dict, path) -> None:
    entry["key"] = "0" * 64
    path.write_text(json.dumps(entry))


def _damage_count(entry: dict, path) -> None:
    entry["replies"] = entry["replies"][:-1]
    entry["n"] = len(entry["replies"])
    path.write_text(json.dumps(entry))


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_reply, _damage_key, _damage_count])
def test_a_damaged_or_mismatched_entry_is_ignored_with_a_warning_and_rewritten(
    policy, tmp_path, monkeypatch, caplog, damage
):
    model, tok = policy
    first = generate_replies(model, tok, PROMPTS, cache=ReplyCache(tmp_path), **KW)
    (path,) = (tmp_path / "replies").glob("*.json")
    damage(json.loads(path.read_text()), path)
    counter = _Counter(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="safealign.policy.reply_cache"):
        again = generate_replies(model, tok, PROMPTS, cache=ReplyCache(tmp_path), **KW)
    assert again == first and counter.calls == 1
    assert "ignored and regenerated" in caplog.text
    assert json.loads(path.read_text())["replies"] == first  # the entry is whole again


class _Scorer:
    """Scores by reply length: enough for a validation record, no reward model needed."""

    aspects = ("safety", "actionability")

    def score(self, prompts, replies, ids=None):
        return np.array([[min(len(r), 50) / 50, 0.5] for r in replies])


def test_selection_reads_the_base_validation_from_the_cache_and_only_the_base(policy, tmp_path, monkeypatch):
    """Step 0 of a second GRPO run with the same carve validates from the cache; a trained step generates
    and writes nothing (its replies never repeat)."""
    from peft import LoraConfig, get_peft_model

    from safealign.policy.selection import SelectionRule, Selector

    base, tok = policy
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    prompts = {"adversarial": PROMPTS[:2], "benign": PROMPTS[2:]}
    rule = SelectionRule(max_benign_refusal=0.05, max_aspect_drop=0.02, rank_aspect="safety")
    decode = dict(system_prompt=None, max_new_tokens=6, batch_size=2, seed=0)
    first = Selector(rule, prompts, cache=ReplyCache(tmp_path), **decode).observe(model, tok, _Scorer(), 0)
    assert len(list((tmp_path / "replies").glob("*.json"))) == 1
    counter = _Counter(monkeypatch)
    second = Selector(rule, prompts, cache=ReplyCache(tmp_path), **decode)
    record = second.observe(model, tok, _Scorer(), 0)
    assert counter.calls == 0 and {k: record[k] for k in prompts} == {k: first[k] for k in prompts}
    with torch.no_grad():
        model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.fill_(0.05)
    second.observe(model, tok, _Scorer(), 4)
    assert counter.calls == 1 and len(list((tmp_path / "replies").glob("*.json"))) == 1


def test_evaluation_generates_the_base_once_across_candidates(tmp_path, monkeypatch):
    """Two candidates evaluated in turn (or a refresh round after a run): the base policy's replies come
    from the cache the second time, only the new candidate is decoded."""
    from safealign.config import load_settings
    from safealign.evaluation.evaluate import _generate_all

    from helpers.tiny_models import adapter, overrides

    empty = tmp_path / "defaults.yaml"
    empty.write_text("{}\n")
    settings = load_settings(empty, [*overrides(tmp_path / "cache"), "evaluate.batch_size=2"])
    one = adapter(tmp_path / "one", settings, "candidate-one")
    two = adapter(tmp_path / "two", settings, "candidate-two")
    prompts = [*PROMPTS, [{"role": "user", "content": "hello"}]]
    base, aligned_one, _t = _generate_all(settings, one, prompts, n_standard=len(PROMPTS))
    counter = _Counter(monkeypatch)
    base_again, aligned_two, _t = _generate_all(settings, two, prompts, n_standard=len(PROMPTS))
    assert base_again == base and aligned_two != aligned_one
    assert counter.calls == 2  # the second candidate's two suites; the base's two came from the cache
    _Counter(monkeypatch, refuse=True)
    assert _generate_all(settings, two, prompts, n_standard=len(PROMPTS))[:2] == (base, aligned_two)
