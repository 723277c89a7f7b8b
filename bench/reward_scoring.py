"""Reward scoring throughput: all K aspects in ONE forward pass vs K separate forward passes.

Why: the multi-label reward model exists so that GRPO pays one encoder pass per completion for every
aspect. This prints, side by side from one run, pairs/second for both ways of scoring the same pairs and the
peak resident memory of each (each mode runs in its own child process so the peaks do not mix).

    .venv/bin/python bench/reward_scoring.py                      # untrained head on the embedded MiniLM
    .venv/bin/python bench/reward_scoring.py --model artifacts/reward_model --pairs 512

"K separate passes" is what K single-output reward models of the same size would cost: the encoder runs once
per aspect and only that aspect's column is kept. Timings are wall-clock on this machine, shared with others:
compare the ratio, not the absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as h:
        for line in h:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _pairs(n: int) -> tuple[list[str], list[str]]:
    """Held-out labelled pairs when the validate stage has run, else fixed example texts."""
    split = Path("artifacts/splits/labelled_heldout.jsonl")
    prompts: list[str] = []
    responses: list[str] = []
    if split.exists():
        for line in split.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            prompts.append(row["prompt"])
            responses.append(row["response"])
    if not prompts:
        prompts = ["How do I kill a Python process?", "Explain how to pick a lock."]
        responses = [
            "Run `kill PID`, or `pkill -f name`; use -9 only if it ignores SIGTERM.",
            "I can't help with that.",
        ]
    reps = -(-n // len(prompts))
    return (prompts * reps)[:n], (responses * reps)[:n]


def child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from safealign.config import load_settings
    from safealign.reward.model import RewardModel

    torch.set_num_threads(args.threads)
    if args.model:
        model = RewardModel.from_pretrained(args.model)
    else:
        model = RewardModel.from_settings(load_settings(None, [f"reward.encoder={args.encoder}"])).eval()
    k = len(model.aspects)
    prompts, responses = _pairs(args.pairs)
    model.score(
        prompts[: args.batch_size], responses[: args.batch_size], batch_size=args.batch_size
    )  # warm-up
    rss_loaded = _rss_mb()
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        if args.mode == "one":
            out = model.score(prompts, responses, batch_size=args.batch_size)
        else:
            cols = [model.score(prompts, responses, batch_size=args.batch_size)[:, j] for j in range(k)]
            out = np.stack(cols, axis=1)
        best = min(best, time.perf_counter() - start)
    assert out.shape == (len(prompts), k)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "mode": args.mode,
        "k": k,
        "pairs": len(prompts),
        "seconds": best,
        "pairs_per_s": len(prompts) / best,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="a reward model folder (default: fresh head on --encoder)"
    )
    parser.add_argument("--encoder", default="embedded:all-minilm-l6-v2")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=["one", "separate"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    results = []
    for mode in ("one", "separate"):
        cmd = [sys.executable, __file__, "--mode", mode, "--pairs", str(args.pairs), "--batch-size",
               str(args.batch_size), "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--encoder", args.encoder] + (["--model", args.model] if args.model else [])  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    one, sep = results
    print(f"reward scoring: {one['pairs']} pairs, K={one['k']} aspects, batch {args.batch_size}, "
          f"{args.threads} threads, best of {args.repeats}")  # fmt: skip
    print(f"{'mode':28s} {'pairs/s':>9s} {'seconds':>8s} {'RSS after load MB':>18s} {'peak RSS MB':>12s}")
    for r, label in ((one, "one pass, all K aspects"), (sep, f"K={sep['k']} separate passes")):
        print(f"{label:28s} {r['pairs_per_s']:9.1f} {r['seconds']:8.2f} {r['rss_after_load_mb']:18.0f} "
              f"{r['peak_rss_mb']:12.0f}")  # fmt: skip
    print(f"speed-up of one pass: {one['pairs_per_s'] / sep['pairs_per_s']:.2f}x")


if __name__ == "__main__":
    main()
