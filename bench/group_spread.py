"""How spread are a GRPO group's rewards, per kind of prompt? (a diagnostic, not a speed benchmark)

Why: advantages divide by the group's reward std. If benign groups had much smaller spreads than
adversarial ones, that division would turn near-ties on benign prompts into full-size advantages and push
benign answers around by noise. This samples G completions for some train prompts of each kind, as a GRPO
step does (same sampler, temperature, token budget and aspect weights), scores them with the trained
reward model and prints the distribution of the groups' std. Run after `make run`:

    .venv/bin/python bench/group_spread.py                                   # the base policy
    .venv/bin/python bench/group_spread.py --adapter artifacts/policy/adapter  # the kept step

Measured (README, checkpoint selection): median std 0.070 adversarial / 0.078 benign for the base,
0.082 / 0.043 at the default run's kept step (step 44); no group below 0.01.
"""

from __future__ import annotations

import argparse
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from safealign.common.jsonl import read_prompts
from safealign.common.layout import Layout
from safealign.config import load_settings
from safealign.policy.engine import eos_token_ids, generate
from safealign.policy.loading import load_policy, load_policy_with_adapter
from safealign.policy.prompts import PromptEncoder
from safealign.policy.reward_adapter import aspect_weights, load_scorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--adapter", default=None, help="a LoRA adapter folder; default: the base policy")
    parser.add_argument("--prompts", type=int, default=24, help="train prompts of each kind")
    parser.add_argument("--batch", type=int, default=8, help="prompts per generation call")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    settings = load_settings(args.params)
    cfg = settings.grpo
    layout = Layout.from_settings(settings)
    pick = random.Random(args.seed)
    kinds = {
        "adversarial": pick.sample(read_prompts(layout.adversarial_split("train")), args.prompts),
        "benign": pick.sample(read_prompts(layout.benign_split("train")), args.prompts),
    }
    scorer = load_scorer(settings)
    weights = aspect_weights(settings.aspects, scorer.aspects)
    model, tokenizer = (
        load_policy_with_adapter(settings, args.adapter) if args.adapter else load_policy(settings)
    )
    model.eval()
    encoder = PromptEncoder(tokenizer, settings.policy.system_prompt, cfg.max_prompt_tokens)
    eos, g = eos_token_ids(model, tokenizer), cfg.num_generations
    torch.manual_seed(args.seed)
    for kind, prompts in kinds.items():
        stds: list[float] = []
        for start in range(0, len(prompts), args.batch):
            batch = encoder.batch(prompts[start : start + args.batch])
            with torch.no_grad():
                ids, mask = generate(
                    model,
                    batch,
                    g,
                    cfg.max_new_tokens,
                    eos,
                    int(tokenizer.pad_token_id),
                    cfg.temperature,
                    cfg.top_p,
                )
            kept = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask, strict=True)]
            texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
            raw = [p for p in batch.raw for _ in range(g)]
            rewards = (np.asarray(scorer.score(raw, texts, kept)) @ weights).reshape(-1, g)
            stds += rewards.std(axis=1, ddof=1).tolist()
        s = np.asarray(stds)
        p10, p90 = np.percentile(s, [10, 90])
        print(
            f"{kind}: {len(s)} groups of {g}; reward std median {np.median(s):.4f}, mean {s.mean():.4f}, "
            f"p10 {p10:.4f}, p90 {p90:.4f}; below 0.01: {(s < 0.01).mean():.0%}, "
            f"below 0.05: {(s < 0.05).mean():.0%}"
        )


if __name__ == "__main__":
    main()
