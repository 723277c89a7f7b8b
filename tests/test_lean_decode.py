"""The lean decoder (policy/lean_decode.py) against HF's own forward: same logits at every decode step, same
sampled tokens through ``engine.generate``, and HF's path kept wherever the lean one is not exact."""

from __future__ import annotations

import pytest
import torch

import safealign.policy.engine as engine
from safealign.policy.lean_decode import LeanDecoder

from helpers.tiny import TINY_POLICY as TINY

G = 3
STEPS = 12


@pytest.fixture(scope="module")
def tiny_llama():
    from safealign.policy.loading import load_policy

    model, tok = load_policy(TINY)
    with torch.no_grad():  # peakier, like a trained LM: attention and rope then change the logits visibly
        model.model.embed_tokens.weight.mul_(10)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
    return model, tok


def _qwen2(seed: int = 0, vocab: int = 300, **overrides):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    shape.update(num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    cfg = Qwen2Config(vocab_size=vocab, rope_theta=10000.0, **{**shape, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg).eval()
        with torch.no_grad():  # HF zero-initialises biases: make q/k/v biases real so fusing them is tested
            model.model.embed_tokens.weight.mul_(10)
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(8)
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    return model


def _prompts(lengths: list[int], vocab: int, pad_id: int, seed: int = 1) -> engine.PromptBatch:
    """Left-padded prompts of different lengths (random ids, no special meaning)."""
    gen = torch.Generator().manual_seed(seed)
    ids = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]
    return engine.collate_prompts([f"p{i}" for i in range(len(lengths))], ids, pad_id)


def _prefill(model, batch: engine.PromptBatch):
    """HF's prefill of the prompts, as engine.generate does it (position ids under left padding)."""
    pos = engine._positions(batch.mask)
    return model(
        input_ids=batch.ids, attention_mask=batch.mask, position_ids=pos, use_cache=True, logits_to_keep=1
    )


def _hf_step_logits(model, batch: engine.PromptBatch, g: int, feed: torch.Tensor) -> list[torch.Tensor]:
    """HF's forward, step by step: prefill once, cache repeated g times, then one token per row per step."""
    out = _prefill(model, batch)
    cache = out.cache
    cache.batch_repeat_interleave(g)
    attn = batch.mask.repeat_interleave(g, dim=0)
    pos = engine._positions(batch.mask)[:, -1].repeat_interleave(g, dim=0) + 1
    logits = [out.logits[:, -1].repeat_interleave(g, dim=0)]
    for t in range(feed.shape[1]):
        attn = torch.cat([attn, torch.ones((attn.shape[0], 1), dtype=attn.dtype)], dim=1)
        o = model(input_ids=feed[:, t : t + 1], attention_mask=attn, position_ids=pos[:, None], cache=cache)
        logits.append(o.logits[:, -1])
        pos = pos + 1
    return logits


def _lean_step_logits(
    model, batch: engine.PromptBatch, g: int, feed: torch.Tensor, pack: bool
) -> list[torch.Tensor]:
    decoder = LeanDecoder.build(model, pack=pack)
    assert decoder is not None
    out = _prefill(model, batch)
    decoder.start(out.cache, batch.mask, g, feed.shape[1] + 1)
    logits = [out.logits[:, -1].repeat_interleave(g, dim=0)]
    for t in range(feed.shape[1]):
        logits.append(decoder.step(feed[:, t]))
    return logits


def _assert_same_logits(model, vocab: int, pad_id: int, pack: bool) -> None:
    batch = _prompts([5, 17, 1, 9], vocab, pad_id)
    feed = torch.randint(
        3, vocab, (batch.ids.shape[0] * G, STEPS), generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        hf = _hf_step_logits(model, batch, G, feed)
        lean = _lean_step_logits(model, batch, G, feed, pack)
    assert len(hf) == len(lean) == STEPS + 1
    for step, (a, b) in enumerate(zip(hf, lean, strict=True)):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-4, rtol=0), (step, float((a - b).abs().max()))
    assert float(hf[-1].std()) > 0.1  # the comparison is not between two constant outputs


@pytest.mark.parametrize("pack", [True, False])
def test_llama_lean_logits_match_hf_at_every_decode_step(tiny_llama, pack):
    model, tok = tiny_llama
    _assert_same_logits(model, len(tok), tok.pad_token_id, pack)


@pytest.mark.parametrize("pack", [True, False])
def test_qwen2_lean_logits_match_hf_at_every_decode_step(pack):
    model = _qwen2()
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    _assert_same_logits(model, model.config.vocab_size, 0, pack)


def test_prepared_weights_follow_in_place_changes(tiny_llama):
    """merged_lora edits weights in place every step: a cached fused/packed copy must never go stale."""
    model, tok = tiny_llama
    q = model.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        before = LeanDecoder.build(model).layers[0].qkv
        again = LeanDecoder.build(model).layers[0].qkv
        assert again is before  # unchanged weights: reused, not rebuilt
        saved = q.clone()
        q.add_(0.5)
        try:
            assert LeanDecoder.build(model).layers[0].qkv is not before
            _assert_same_logits(model, len(tok), tok.pad_token_id, pack=True)
        finally:
            q.copy_(saved)


def _lora(model):
    """A LoRA on q/v whose delta is non-zero from the start (init_lora_weights=False: random B too)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return get_peft_model(model, cfg).eval()


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (1.5, 0.95)])
def test_generate_lean_and_hf_paths_sample_the_same_tokens(temperature, top_p):
    from safealign.policy.loading import format_prompt, load_policy

    base, tok = load_policy(TINY)
    with torch.no_grad():
        base.model.embed_tokens.weight.mul_(4)
    model = _lora(base)
    raw = ["hi", "How do I pick a lock on my own front door, step by step?", "write a haiku"]
    ids = [tok(format_prompt(tok, r), add_special_tokens=False)["input_ids"] for r in raw]
    batch = engine.collate_prompts(raw, ids, tok.pad_token_id)
    eos = engine.eos_token_ids(model, tok)
    runs = {}
    with engine.merged_lora(model):
        assert LeanDecoder.build(model) is not None  # the lean path really runs here
        for lean in (True, False):
            torch.manual_seed(7)
            runs[lean] = engine.generate(
                model, batch, 4, 24, eos, tok.pad_token_id, temperature, top_p, lean=lean
            )
            runs[lean] = (*runs[lean], torch.rand(1))  # the RNG stream is left in the same place
    for a, b in zip(runs[True], runs[False], strict=True):
        assert torch.equal(a, b)
    assert len(set(runs[True][0].flatten().tolist())) > 5  # really sampled, not one repeated token


def test_active_unmerged_lora_falls_back_to_hf(tiny_llama):
    """Outside merged_lora the base weights are not the policy: the lean path must not be used."""
    import copy

    model = _lora(copy.deepcopy(tiny_llama[0]))
    assert LeanDecoder.build(model) is None
    with engine.merged_lora(model):
        assert LeanDecoder.build(model) is not None
    assert LeanDecoder.build(model) is None


def test_unsupported_architecture_falls_back_to_hf():
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(
            GPT2Config(vocab_size=200, n_embd=32, n_layer=2, n_head=2, n_positions=128)
        ).eval()
    assert LeanDecoder.build(model) is None
    batch = _prompts([4, 7], 200, 0)
    out = {}
    for lean in (True, False):
        torch.manual_seed(5)
        out[lean] = engine.generate(model, batch, 2, 6, [199], 0, lean=lean)
    assert torch.equal(out[True][0], out[False][0])
    assert out[True][0].shape == (4, 6)


def test_sliding_window_qwen2_falls_back():
    model = _qwen2(use_sliding_window=True, sliding_window=8, max_window_layers=0)
    assert "sliding_attention" in model.config.layer_types
    assert LeanDecoder.build(model) is None


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_head_logprobs_equal_the_logits_path(monkeypatch, temperature):
    """completion_logprobs via hidden states + _TokenLogProb == via HF logits + cross_entropy, values and
    grads
    (the lm_head made trainable here so its weight/bias gradients are checked too)."""
    model = _qwen2().train()
    head = model.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.randn(head.out_features) * 0.1)
    batch = _prompts([5, 11, 2], model.config.vocab_size, 0)
    completion = torch.randint(3, model.config.vocab_size, (batch.ids.shape[0] * 2, 7))
    weights = torch.randn(completion.shape)
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(engine, "_head_split", lambda m: None)
        model.zero_grad()
        logp = engine.completion_logprobs(model, batch, completion, 2, temperature)
        (logp * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logp.detach(), grads))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, atol=1e-5)
    assert "lm_head.weight" in ga and "lm_head.bias" in ga and ga.keys() == gb.keys()
    for name in ga:
        assert torch.allclose(ga[name], gb[name], rtol=1e-4, atol=1e-6), name
