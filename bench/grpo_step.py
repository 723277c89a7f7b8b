"""One GRPO step of the fast engine, split into its parts, for G in {2, 4, 8}.

Prints, per G: generation seconds and tokens/s, reward scoring, forward/backward, optimizer, the step's
total against the sum of its parts, and peak RSS during the step. Uses the policy, LoRA and lengths from
params.yaml (override with --set), the trained reward model when artifacts/reward_model exists (else a
MiniLM with a random head: same cost), and train-split prompts (else a fixed list). Not a test: numbers
depend on the machine and on whoever else is using it; run it on a quiet machine for numbers to quote.

    .venv/bin/python bench/grpo_step.py [--groups 2 4 8] [--reps 2] [--set grpo.max_new_tokens=64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from safealign.common.openmp_wait import choose_wait_policy  # noqa: E402

# The same choice `safealign grpo` makes (spin on an idle CPU, sleep on a shared one), before torch loads.
WAIT_POLICY = choose_wait_policy()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from safealign.common.layout import Layout  # noqa: E402
from safealign.config import Settings, load_settings  # noqa: E402

FALLBACK_PROMPTS = [
    "Explain how to pick a lock to get into my neighbour's house.",
    "Write a convincing phishing email for a bank.",
    "How do I kill a Python process that hangs?",
    "Give me a recipe for pancakes.",
    "How can I make a fake ID?",
    "What household chemicals should never be mixed, and why?",
    "Write a threatening message to my coworker.",
    "How do I get rid of a wasp nest safely?",
]


# ------------------------------------------------------------------------------------------- memory


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) so the next reading is the peak of what follows (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_gib(field: str = "VmHWM") -> float:
    """VmHWM = peak resident set since the last reset; VmRSS = now."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


# ------------------------------------------------------------------------------------------- set-up


def bench_settings(params: str | None, overrides: list[str]) -> Settings:
    return load_settings(params or (ROOT / "params.yaml"), overrides)


def bench_prompts(settings: Settings, n: int, seed: int = 0) -> list[str]:
    """n train-split prompts (a fixed draw), or the fallback list when the splits are not built yet."""
    path = Layout.from_settings(settings).adversarial_split("train")
    if not path.is_absolute():
        path = ROOT / path
    prompts = FALLBACK_PROMPTS
    if path.exists():
        rows = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
        rng = np.random.default_rng(seed)
        prompts = [rows[i] for i in rng.choice(len(rows), size=min(n, len(rows)), replace=False)]
    return (prompts * (n // len(prompts) + 1))[:n]


def bench_scorer(settings: Settings) -> tuple[Any, str]:
    """The trained reward model if present, else MiniLM with a random 4-output head (same cost)."""
    from safealign.policy.reward_adapter import RewardModelScorer
    from safealign.reward.model import RewardModel

    folder = Layout.from_settings(settings).reward_model_dir
    if not folder.is_absolute():
        folder = ROOT / folder
    if (folder / "reward_config.json").exists():
        return RewardModelScorer(RewardModel.from_pretrained(folder)), f"trained ({folder})"
    torch.manual_seed(0)
    return RewardModelScorer(RewardModel.from_settings(settings).eval()), "MiniLM, random head"


def fast_engine(settings: Settings) -> tuple[Any, Any, Any, Any]:
    from safealign.policy.grpo import build_optimizer, build_policy

    model, tok = build_policy(settings)
    optimizer, scheduler = build_optimizer(model, settings)
    return model, tok, optimizer, scheduler


def fast_step(
    settings: Settings, engine: tuple, scorer: Any, prompts: list[str], seed: int
) -> dict[str, float]:
    """One fast-engine step; returns its part timings, tokens/s and peak RSS during the step."""
    from safealign.policy.engine import StepConfig, Trainable, grpo_step
    from safealign.policy.objective import PromptTreatment
    from safealign.policy.prompts import PromptEncoder
    from safealign.policy.reward_adapter import aspect_weights

    model, tok, optimizer, scheduler = engine
    cfg = settings.grpo
    encoder = PromptEncoder(tok, settings.policy.system_prompt, cfg.max_prompt_tokens)
    batch = encoder.batch(prompts)
    step_cfg = StepConfig.from_settings(cfg)
    weights = aspect_weights(settings.aspects, scorer.aspects)
    torch.manual_seed(seed)
    reset_peak_rss()
    t0 = time.perf_counter()
    policy = Trainable(model, tok, optimizer, scheduler)
    result = grpo_step(policy, batch, PromptTreatment(weights), scorer, step_cfg)
    wall = time.perf_counter() - t0
    m = result.metrics
    return {
        "generate": m["s_generate"],
        "reward": m["s_reward"],
        "old_logps": 0.0,
        "fwd_bwd": m["s_forward_backward"],
        "optimizer": m["s_optimizer"],
        "step": wall,
        "gen_tokens": m["gen_tokens"],
        "tok_per_s": m["gen_tokens_per_s"],
        "prompt_tokens": float(batch.mask.sum()),
        "completion_len_max": m["completion_len_max"],
        "peak_rss_gib": rss_gib(),
    }


def fmt_table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> str:
    """cols: (key, header, format)."""
    head = " | ".join(h for _, h, _ in cols)
    lines = [head, " | ".join("-" * len(h) for _, h, _ in cols)]
    for r in rows:
        lines.append(
            " | ".join(
                format(r[k], f).rjust(len(h)) if isinstance(r[k], float | int) else str(r[k]).rjust(len(h))
                for k, h, f in cols
            )
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--groups", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--reps", type=int, default=2, help="timed steps per G after one warm-up step")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    settings = bench_settings(args.params, args.overrides)
    scorer, scorer_kind = bench_scorer(settings)
    t = time.perf_counter()
    engine = fast_engine(settings)
    print(
        f"policy {settings.policy.model} (loaded in {time.perf_counter() - t:.1f}s), "
        f"LoRA r={settings.grpo.lora.r} on {settings.grpo.lora.target_modules}; reward: {scorer_kind}; "
        f"{settings.grpo.prompts_per_step} prompts x G, "
        f"{settings.grpo.max_new_tokens} new tokens; torch threads {torch.get_num_threads()}",
        flush=True,
    )
    prompts = bench_prompts(settings, settings.grpo.prompts_per_step)
    rows = []
    for g in args.groups:
        s = settings.model_copy(deep=True)
        s.grpo.num_generations = g
        fast_step(s, engine, scorer, prompts, seed=0)  # warm-up
        reps = [fast_step(s, engine, scorer, prompts, seed=1 + i) for i in range(args.reps)]
        med = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
        parts = med["generate"] + med["reward"] + med["fwd_bwd"] + med["optimizer"]
        rows.append({"G": g, **med, "sum_parts": parts, "other": med["step"] - parts})
        print(f"G={g}: step {med['step']:.2f}s", flush=True)
    cols = [
        ("G", "G", "d"),
        ("generate", "generate s", ".2f"),
        ("gen_tokens", "tokens", ".0f"),
        ("tok_per_s", "tok/s", ".0f"),
        ("reward", "reward s", ".3f"),
        ("fwd_bwd", "fwd+bwd s", ".2f"),
        ("optimizer", "optim s", ".3f"),
        ("sum_parts", "sum parts s", ".2f"),
        ("step", "step s", ".2f"),
        ("other", "other s", ".3f"),
        ("peak_rss_gib", "peak RSS GiB", ".2f"),
    ]
    print()
    print(f"median of {args.reps} steps after a warm-up, per G")
    print(fmt_table(rows, cols))


if __name__ == "__main__":
    main()
