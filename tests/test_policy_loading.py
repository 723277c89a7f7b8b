"""Policy loading: tiny test model, chat template, cached base folder, adapter round trip, GGUF conversion."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from safealign.config import Settings
from safealign.errors import ConfigError
from safealign.policy.loading import (
    base_model_dir,
    format_prompt,
    load_policy,
    load_policy_with_adapter,
    parse_spec,
)

from helpers.tiny import TINY_POLICY as TINY

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_tiny_is_small_deterministic_and_left_padded(cache):
    m1, tok = load_policy(TINY, cache_dir=cache)
    m2, _ = load_policy(TINY, cache_dir=cache)
    assert m1.config.num_hidden_layers == 2 and m1.config.hidden_size == 64
    assert m1.dtype == torch.float32
    for (n1, p1), (_n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(p1, p2), n1
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert len(tok) == m1.config.vocab_size == 49152  # the real SmolLM2 tokenizer


def test_tiny_does_not_disturb_caller_rng(cache):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_policy(TINY, cache_dir=cache)
    assert torch.equal(torch.rand(3), expected)


def test_format_prompt_uses_chat_template(cache):
    _, tok = load_policy(TINY, cache_dir=cache)
    text = format_prompt(tok, "How do I kill a Python process?")
    assert "<|im_start|>user\nHow do I kill a Python process?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert "SmolLM" in text  # the template's default system prompt is kept when none is given
    custom = format_prompt(tok, "hi", system_prompt="Be careful.")
    assert "<|im_start|>system\nBe careful.<|im_end|>" in custom and "SmolLM" not in custom


def test_base_model_dir_for_tiny_reloads_same_weights(cache):
    from transformers import AutoModelForCausalLM

    folder = base_model_dir(TINY, cache)
    assert (folder / "config.json").exists() and (folder / "tokenizer_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    model, _ = load_policy(TINY, cache_dir=cache)
    ids = torch.tensor([[1, 5, 9, 200]])
    assert torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-6)


def test_adapter_round_trip_merged_equals_unmerged(cache, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, _ = load_policy(TINY, cache_dir=cache)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B starts at zero; make the adapter do something so the test can fail
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.tensor([[1, 5, 9, 200, 17]])
    expected = peft_model(ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    settings = Settings(policy={"model": TINY}, paths={"cache_dir": str(cache)})
    merged, _ = load_policy_with_adapter(settings, tmp_path / "adapter")
    unmerged, _ = load_policy_with_adapter(settings, tmp_path / "adapter", merge=False)
    base, _ = load_policy(settings)
    assert torch.allclose(merged(ids).logits, expected, atol=1e-5)
    assert torch.allclose(unmerged(ids).logits, expected, atol=1e-5)
    assert not torch.allclose(base(ids).logits, expected, atol=1e-3)


def test_bad_specs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown tiny model"):
        parse_spec("tiny:gpt5")
    with pytest.raises(ConfigError, match="adapter"):
        load_policy_with_adapter(TINY, tmp_path)
    assert parse_spec("Qwen/Qwen2.5-0.5B-Instruct") == ("path", "Qwen/Qwen2.5-0.5B-Instruct")


@pytest.mark.integration
def test_embedded_gguf_converts_once_and_generates(tmp_path):
    import time

    model, tok = load_policy("embedded:smollm2-135m-instruct", cache_dir=tmp_path)
    folder = tmp_path / "policy" / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").exists()
    stamp = (folder / "model.safetensors").stat().st_mtime
    time.sleep(0.01)
    again, _ = load_policy("embedded:smollm2-135m-instruct", cache_dir=tmp_path)
    assert (folder / "model.safetensors").stat().st_mtime == stamp  # reused, not converted again
    enc = tok(
        [format_prompt(tok, "What is the capital of France?")], return_tensors="pt", add_special_tokens=False
    )
    out = again.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc.input_ids.shape[1] :])
