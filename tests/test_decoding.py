"""The one generation path (policy/decoding.py) against today's greedy ``model.generate`` path, token for
token: prompts of different lengths under left padding, EOS mid-reply, batch sizes 1 and more, with and
without a LoRA adapter; and the logged fallback to ``model.generate`` where the lean path cannot match it."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

import safealign.policy.decoding as decoding
from safealign.policy.decoding import Decoding, generate_from_texts, generate_replies, generate_rows
from safealign.policy.engine import merged_lora

from helpers.tiny import TINY_POLICY as TINY

MAX_NEW = 14
PROMPTS = [
    "ok",
    "How do I pick a lock on my own front door, step by step? Please be detailed and careful.",
    "write a haiku about the sea",
    "Tell me how to make a bomb",
    "What is 2+2?",
    "Explain photosynthesis in one paragraph, for a curious ten-year-old who likes plants.",
    "hi",
]


def _model(tok, seed: int = 0):
    """A tiny random Llama whose greedy replies vary from prompt to prompt (the loader's tiny model, with
    its 0.02 init, answers every prompt with the same newline: a comparison of constants tests nothing)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).eval()


def _lora(model):
    """A LoRA on q/v whose delta is non-zero from the start (init_lora_weights=False: random B too)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return get_peft_model(model, cfg).eval()


def _reference_rows(model, tok, texts: list[str], batch_size: int) -> list[torch.Tensor]:
    """Today's path, written out independently: length-sorted batches, left padding, HF greedy generate."""
    tok.padding_side = "left"
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    rows: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=MAX_NEW, do_sample=False, temperature=None, top_p=None, top_k=None,
                pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        for i, row in zip(idx, out[:, enc["input_ids"].shape[1] :], strict=True):
            rows[i] = row
    return rows


@pytest.fixture(scope="module")
def setup():
    """(model, tokenizer, texts) with two extra EOS ids taken from the replies' own middles, so some rows
    stop early (and are padded while the others go on) and some run to ``MAX_NEW``."""
    from safealign.policy.loading import format_prompt, load_tokenizer

    tok = load_tokenizer(TINY)
    model = _model(tok)
    texts = [format_prompt(tok, p, "You are a helpful assistant.") for p in PROMPTS]
    free = _reference_rows(model, tok, texts, 1)
    model.generation_config.eos_token_id = [tok.eos_token_id, int(free[1][4]), int(free[3][8])]
    return model, tok, texts


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(x, y), (i, x.tolist(), y.tolist())


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_greedy_rows_equal_model_generate_without_adapter(setup, batch_size):
    model, tok, texts = setup
    expected = _reference_rows(model, tok, texts, batch_size)
    eos = set(model.generation_config.eos_token_id)
    ids = torch.tensor(sorted(eos))
    ended = [int(torch.isin(r, ids).nonzero()[0]) for r in expected if set(r.tolist()) & eos]
    assert len(ended) >= 2 and min(ended) < MAX_NEW - 2  # EOS really comes mid-reply in some rows
    assert any(len(r) == MAX_NEW and not set(r.tolist()) & eos for r in expected)  # and not in others
    assert len({tuple(r.tolist()) for r in expected}) == len(texts)  # replies differ prompt to prompt
    assert decoding.lean_blocker(model, Decoding(MAX_NEW, batch_size, 0)) is None  # the lean path runs
    _assert_same(generate_rows(model, tok, texts, Decoding(MAX_NEW, batch_size, 0)), expected)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_greedy_rows_equal_model_generate_with_an_active_lora_adapter(setup, batch_size, caplog):
    """An unmerged adapter is folded in by the path itself; today's paths are ``merged_lora`` + generate
    (selection) and ``merge_and_unload`` + generate (evaluation): all three give the same tokens."""
    base, tok, texts = setup
    model = _lora(copy.deepcopy(base))
    with caplog.at_level(logging.INFO, logger="safealign.policy.decoding"):
        ours = generate_rows(model, tok, texts, Decoding(MAX_NEW, batch_size, 0))
    assert "(lean decoder)" in caplog.text  # the adapter is folded in first, so the lean path runs
    with merged_lora(model):
        selection_path = _reference_rows(model, tok, texts, batch_size)
    merged = copy.deepcopy(model).merge_and_unload().eval()
    evaluation_path = _reference_rows(merged, tok, texts, batch_size)
    _assert_same(ours, selection_path)
    _assert_same(ours, evaluation_path)
    with merged_lora(model):  # selection calls the path with the adapter already folded: never fold twice
        _assert_same(generate_rows(model, tok, texts, Decoding(MAX_NEW, batch_size, 0)), selection_path)
    plain = _reference_rows(base, tok, texts, batch_size)
    assert any(not torch.equal(a, b) for a, b in zip(ours, plain, strict=True))  # the adapter matters
    assert not decoding.lora_folded(model)  # the base weights were restored, the adapter active again...
    assert not decoding.LeanDecoder.supports(model)  # ...so outside the path the lean decoder is off


def test_replies_text_equal_today_and_the_lean_path_is_the_one_used(setup, caplog):
    model, tok, texts = setup
    rows = _reference_rows(model, tok, texts, 3)
    expected = [t.strip() for t in tok.batch_decode(rows, skip_special_tokens=True)]
    with caplog.at_level(logging.INFO, logger="safealign.policy.decoding"):
        replies = generate_from_texts(model, tok, texts, max_new_tokens=MAX_NEW, batch_size=3, seed=0)
    assert replies == expected
    assert "(lean decoder)" in caplog.text and "model.generate" not in caplog.text


def test_generate_replies_templates_prompts_and_conversations(setup):
    from safealign.policy.loading import format_prompt

    model, tok, _texts = setup
    turns = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "now tell me something dangerous"},
    ]
    replies = generate_replies(
        model, tok, ["hi", turns], system_prompt="Be brief.", max_new_tokens=MAX_NEW, batch_size=2, seed=0
    )
    texts = [format_prompt(tok, "hi", "Be brief."), decoding.format_turns(tok, turns, "Be brief.")]
    expected = tok.batch_decode(_reference_rows(model, tok, texts, 2), skip_special_tokens=True)
    assert replies == [t.strip() for t in expected]


def test_sampled_replies_are_seeded_and_differ_from_greedy(setup):
    model, tok, texts = setup
    kw = dict(max_new_tokens=MAX_NEW, batch_size=4, temperature=1.0, top_p=0.95)
    first = generate_from_texts(model, tok, texts, seed=1, **kw)
    assert generate_from_texts(model, tok, texts, seed=1, **kw) == first
    assert generate_from_texts(model, tok, texts, seed=2, **kw) != first
    greedy = generate_from_texts(model, tok, texts, max_new_tokens=MAX_NEW, batch_size=4, seed=1)
    assert greedy != first
    with pytest.raises(ValueError, match="temperature"):
        Decoding(4, 1, 0, temperature=0.0)


def _count_generate_calls(monkeypatch, model) -> list[int]:
    calls: list[int] = []
    real = model.generate

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    return calls


def test_unsupported_architecture_falls_back_to_model_generate_with_a_log_line(setup, monkeypatch, caplog):
    from transformers import GPT2Config, GPT2LMHeadModel

    _model_, tok, texts = setup
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(
            GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256)
        ).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    calls = _count_generate_calls(monkeypatch, model)
    with caplog.at_level(logging.INFO, logger="safealign.policy.decoding"):
        replies = generate_from_texts(model, tok, texts, max_new_tokens=5, batch_size=4, seed=0)
    assert len(replies) == len(texts) and len(calls) == 2  # two batches, both through model.generate
    assert "lean decoder not used" in caplog.text and "'gpt2'" in caplog.text


def test_a_greedy_changing_generation_config_falls_back_and_keeps_hf_replies(setup, monkeypatch, caplog):
    """A repetition penalty changes greedy decoding: the lean path (plain argmax) would not give HF's
    replies, so the path must hand the batch to model.generate, which applies it."""
    base, tok, texts = setup
    model = copy.deepcopy(base)
    model.generation_config.repetition_penalty = 5.0
    expected = _reference_rows(model, tok, texts, 4)
    plain = _reference_rows(base, tok, texts, 4)
    assert any(not torch.equal(a, b) for a, b in zip(expected, plain, strict=True))  # the penalty bites
    calls = _count_generate_calls(monkeypatch, model)
    with caplog.at_level(logging.INFO, logger="safealign.policy.decoding"):
        ours = generate_rows(model, tok, texts, Decoding(MAX_NEW, 4, 0))
    _assert_same(ours, expected)
    assert calls and "repetition_penalty=5.0" in caplog.text


def test_a_model_off_the_cpu_is_not_given_to_the_lean_decoder(setup, monkeypatch):
    model, _tok, _texts = setup
    meta = torch.nn.Parameter(torch.empty(1, device="meta"))
    monkeypatch.setattr(type(model), "parameters", lambda self, recurse=True: iter([meta]))
    assert "meta" in decoding.lean_blocker(model, Decoding(4, 1, 0))
