"""One GRPO step per engine on the shapes of the paper's models, with no network: the GPU sizing table.

The machine that runs it has no network, so nothing is downloaded: the policies are random-init models
built from the Qwen2.5-0.5B and Qwen2.5-7B configurations (same layers, widths, heads, vocabulary: the same
FLOPs and bytes per token), the reward model is a RoBERTa-base-shaped encoder with a random 4-aspect head,
and the tokenizer is a word-level one over the policy's whole vocabulary (``w0 w1 ...``), so every sampled
id decodes and every word the reward model sees is one token. A random policy almost never samples EOS, so
every completion runs the full ``--new-tokens``: the work per step is fixed.

Per policy, G and engine it reports s/step, generation tokens/s, the loss forward+backward time and the
peak GPU memory (``torch.cuda.max_memory_allocated``) of the timed steps (after one warm-up step):

- ``trl``: ``grpo.engine=trl`` exactly as ``safealign grpo`` builds it (``trl_engine.build_trl_trainer``:
  the GRPOTrainer subclass with every safealign feature), bf16, gradient checkpointing, HF ``generate``;
- ``trl+vllm``: the same with TRL's ``use_vllm`` (colocated), when vLLM is importable;
- ``fast``: the CPU engine; on CUDA it refuses (it is CPU-only), and the table says so.

GPU mode (default where CUDA is available): Qwen2.5-0.5B and 7B shapes, G in {4, 8}, 16 prompts, 256 new
tokens, one warm-up and one timed step each, sized to finish in under 8 minutes on one H100/H200-class GPU.
``--cpu-tiny``: 2-layer, hidden-64 shapes on the CPU, both engines, seconds (a test runs it).

    .venv/bin/python bench/gpu_step.py [--policies 0.5b 7b] [--groups 4 8] [--json out.json]
    .venv/bin/python bench/gpu_step.py --cpu-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from safealign.common.openmp_wait import choose_wait_policy  # noqa: E402

WAIT_POLICY = choose_wait_policy()  # before torch loads (only the CPU mode's threads care)

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Qwen2.5 configurations (config.json of the Instruct models); "tiny" for the CPU mode.
POLICIES: dict[str, dict[str, Any]] = {
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=2048,
        tie_word_embeddings=True,
    ),
}
REWARDS: dict[str, dict[str, Any]] = {
    "roberta-base": dict(
        vocab_size=50265,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
    ),
    "tiny": dict(
        vocab_size=2048,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=514,
    ),
}
# Completions per forward/backward (grpo.micro_batch_size): 7B's loss over 64-128 completions of 320 tokens
# runs in pieces of 32 (a starting point for one 80+ GB GPU, not measured yet); the others in one piece.
MICRO_BATCH = {"0.5b": None, "7b": 32, "tiny": None}
ASPECTS = ["politeness", "meaningfulness", "actionability", "safety"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


# ------------------------------------------------------------------------------------------- models


def word_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer over ``vocab_size`` ids: ``w<i>`` is id i, the specials sit at the top."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab_size - len(SPECIALS))}
    words.update({s: vocab_size - len(SPECIALS) + k for k, s in enumerate(SPECIALS)})
    core = Tokenizer(models.WordLevel(words, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="w0"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_policy(shape: str, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """A random-init Qwen2 causal LM of the named shape, built directly on ``device`` (no weights read)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(**POLICIES[shape], max_position_embeddings=4096, rope_theta=1e6)
    tok = word_tokenizer(config.vocab_size)
    config.eos_token_id, config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def build_scorer(shape: str, device: str) -> Any:
    """A RoBERTa-shaped RewardModel (random encoder and head) behind the Scorer protocol both engines use."""
    from transformers import RobertaConfig, RobertaModel

    from safealign.policy.reward_adapter import RewardModelScorer
    from safealign.reward.model import RewardModel

    config = RobertaConfig(**REWARDS[shape])
    torch.manual_seed(1)
    tok = word_tokenizer(config.vocab_size)
    reward = RewardModel(RobertaModel(config), tok, ASPECTS, [0.15, 0.15, 0.15, 0.55], max_length=384)
    return RewardModelScorer(reward.to(device).eval(), batch_size=64)


def bench_prompts(n: int, words: int, vocab: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(10, vocab - 10, size=words)) for _ in range(n)]


def bench_settings(groups: int, prompts: int, new_tokens: int, overrides: list[str]) -> Any:
    from safealign.config import load_settings

    return load_settings(
        ROOT / "params.yaml",
        [
            f"grpo.num_generations={groups}",
            f"grpo.prompts_per_step={prompts}",
            f"grpo.max_new_tokens={new_tokens}",
            "grpo.max_prompt_tokens=512",
            "grpo.selection=null",  # validation is not part of a training step
            "grpo.benign_fraction=0.25",
            "grpo.benign_beta=0.1",  # the per-sample KL: one reference forward, as a run with it has
            *overrides,
        ],
    )


# ------------------------------------------------------------------------------------------- engines


def _cuda_mem() -> float:
    return torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else float("nan")


def run_trl(
    settings: Any, model: Any, tok: Any, scorer: Any, prompts: list[str], steps: int, vllm: bool
) -> list:
    """``steps`` optimizer steps of the TRL engine; per step: s/step, generate s, tokens, fwd+bwd s, GiB."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from safealign.policy.trl_engine import build_trl_trainer

    per_step: list[dict[str, float]] = []
    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            clock.clear()
            clock["t0"] = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            step = time.perf_counter() - clock["t0"]
            per_step.append(
                {
                    "step": step,
                    "generate": clock.get("generate", 0.0),
                    "fwd_bwd": step - clock.get("prepare", 0.0) - clock.get("optimizer", 0.0),
                    "tokens": clock.get("tokens", 0.0),
                    "peak_gib": _cuda_mem(),
                }
            )

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock["opt0"] = time.perf_counter()

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock["optimizer"] = time.perf_counter() - clock["opt0"]

    half = len(prompts) // 2
    out_dir = tempfile.mkdtemp(prefix="gpu_step-")
    overrides = {"use_vllm": True, "vllm_mode": "colocate"} if vllm else {"use_vllm": False}
    if vllm:  # vLLM loads the policy from a folder: write the random weights once (untested without a GPU)
        model.save_pretrained(out_dir + "/policy")
        tok.save_pretrained(out_dir + "/policy")
        model.name_or_path = model.config._name_or_path = out_dir + "/policy"
    trainer, _ = build_trl_trainer(
        settings,
        model,
        tok,
        scorer,
        prompts[:half],
        prompts[half:],
        out_dir,
        steps,
        callbacks=[Clock()],
        **overrides,
    )
    trainer.remove_callback(PrinterCallback)
    _time(trainer, "_generate", "generate", clock, count_tokens=True)
    _time(trainer, "_prepare_inputs", "prepare", clock)
    trainer.train()
    return per_step


def _time(trainer: Any, name: str, key: str, clock: dict[str, float], count_tokens: bool = False) -> None:
    original = getattr(trainer, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        clock[key] = clock.get(key, 0.0) + time.perf_counter() - t0
        if count_tokens:  # _generate returns (prompt_ids, completion_ids, ...)
            clock["tokens"] = clock.get("tokens", 0.0) + float(sum(len(c) for c in out[1]))
        return out

    setattr(trainer, name, timed)


def run_fast(settings: Any, model: Any, tok: Any, scorer: Any, prompts: list[str], steps: int) -> list:
    """``steps`` steps of the fast engine (CPU only: it refuses on CUDA, which is reported instead)."""
    from peft import get_peft_model

    from safealign.policy.engine import StepConfig, Trainable, grpo_step
    from safealign.policy.engine_choice import check_fast_supported
    from safealign.policy.loading import lora_config
    from safealign.policy.objective import Objective, PromptTreatment
    from safealign.policy.prompts import PromptEncoder

    check_fast_supported(settings)
    cfg = settings.grpo
    peft_model = get_peft_model(model, lora_config(settings))
    optimizer = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad], lr=cfg.learning_rate
    )
    encoder = PromptEncoder(tok, None, cfg.max_prompt_tokens)
    objective = Objective.from_settings(settings, ASPECTS)
    half = len(prompts) // 2
    kinds = [True] * half + [False] * (len(prompts) - half)
    step_cfg = StepConfig.from_settings(cfg)
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        treatment = PromptTreatment(
            objective.prompt_weights(kinds), constrained=kinds, betas=objective.prompt_betas(kinds)
        )
        result = grpo_step(
            Trainable(peft_model, tok, optimizer), encoder.batch(prompts), treatment, scorer, step_cfg
        )
        m = result.metrics
        out.append(
            {
                "step": time.perf_counter() - t0,
                "generate": m["s_generate"],
                "fwd_bwd": m["s_forward_backward"],
                "tokens": m["gen_tokens"],
                "peak_gib": float("nan"),
            }
        )
    return out


# ------------------------------------------------------------------------------------------- main


def plan(args: argparse.Namespace) -> tuple[str, torch.dtype, list[str], list[str], str]:
    """(device, dtype, policy shapes, engines, reward shape) for the mode asked for."""
    import importlib.util

    if args.cpu_tiny:
        return "cpu", torch.float32, ["tiny"], ["fast", "trl"], "tiny"
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_step.py: no CUDA device here; use --cpu-tiny for the CPU mode")
    engines = ["trl"] + (["trl+vllm"] if importlib.util.find_spec("vllm") else []) + ["fast"]
    return "cuda", torch.bfloat16, args.policies, engines, "roberta-base"


def one(
    args: argparse.Namespace,
    shape: str,
    g: int,
    engine: str,
    device: str,
    dtype: torch.dtype,
    scorer: Any,
    prompts: list[str],
) -> dict[str, Any]:
    from safealign.errors import SafealignError

    micro = [f"grpo.micro_batch_size={MICRO_BATCH[shape]}"] if MICRO_BATCH[shape] else []
    settings = bench_settings(g, len(prompts), args.new_tokens, micro + args.overrides)
    row: dict[str, Any] = {"policy": shape, "G": g, "engine": engine}
    if engine == "fast" and device == "cuda":
        from safealign.policy.engine_choice import check_fast_supported

        try:
            check_fast_supported(settings)
        except SafealignError as exc:
            return {**row, "refused": str(exc)}
    model, tok = build_policy(shape, device, dtype)
    t0 = time.perf_counter()
    if engine == "fast":
        steps = run_fast(settings, model, tok, scorer, prompts, 1 + args.reps)
    else:
        steps = run_trl(settings, model, tok, scorer, prompts, 1 + args.reps, vllm=engine == "trl+vllm")
    timed = steps[1:]  # the first step warms up kernels, caches and (for vLLM) the engine
    med = {k: statistics.median(s[k] for s in timed) for k in timed[0]}
    row.update(
        s_step=med["step"],
        tok_per_s=med["tokens"] / max(med["generate"], 1e-9),
        s_generate=med["generate"],
        s_fwd_bwd=med["fwd_bwd"],
        peak_gib=med["peak_gib"],
        wall_s=time.perf_counter() - t0,
    )
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cpu-tiny", action="store_true", help="tiny shapes on the CPU (seconds; what the test runs)"
    )
    ap.add_argument("--policies", nargs="+", default=["0.5b", "7b"], choices=["0.5b", "7b"])
    ap.add_argument("--groups", type=int, nargs="+", default=None, help="G values (GPU: 4 8; CPU: 2)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step (GPU: 16; CPU: 2)")
    ap.add_argument("--new-tokens", type=int, default=None, help="(GPU: 256; CPU: 8)")
    ap.add_argument(
        "--prompt-words", type=int, default=None, help="prompt length in tokens (GPU: 64; CPU: 8)"
    )
    ap.add_argument("--reps", type=int, default=1, help="timed steps after one warm-up step")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    tiny = args.cpu_tiny
    args.groups = args.groups or ([2] if tiny else [4, 8])
    args.prompts = args.prompts or (2 if tiny else 16)
    args.new_tokens = args.new_tokens or (8 if tiny else 256)
    args.prompt_words = args.prompt_words or (8 if tiny else 64)
    device, dtype, shapes, engines, reward_shape = plan(args)
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; OpenMP wait {WAIT_POLICY}", flush=True)
    scorer = build_scorer(reward_shape, device)
    prompts = bench_prompts(args.prompts, args.prompt_words, REWARDS[reward_shape]["vocab_size"])
    rows = []
    for shape in shapes:
        for g in args.groups:
            for engine in engines:
                row = one(args, shape, g, engine, device, dtype, scorer, prompts)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = (
        f"{args.prompts} prompts x G, {args.new_tokens} new tokens, median of {args.reps} step(s) after a "
        "warm-up\n\n| policy | G | engine | s/step | generate s | gen tok/s | loss fwd+bwd s | peak GiB |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['policy']} | {r['G']} | {r['engine']} | refused: {r['refused']} | | | | |")
            continue
        lines.append(
            f"| {r['policy']} | {r['G']} | {r['engine']} | {r['s_step']:.2f} | {r['s_generate']:.2f} | "
            f"{r['tok_per_s']:.0f} | {r['s_fwd_bwd']:.2f} | {r['peak_gib']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
