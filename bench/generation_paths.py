"""Greedy generation of the real default policy through today's ``model.generate`` path and through the one
fast path (``policy/decoding.py``: HF prefill + lean KV-cached decoder), side by side in one process.

Work (issue 29): ``policy.model`` from params.yaml (the embedded SmolLM2-135M-Instruct by default), N
train-split prompts (else a fixed list) templated with the policy's system prompt, greedy, M new tokens,
batch B, the evaluation's length-sorted left-padded batches. The paths are alternated A B A B after one
small warm-up each, so machine load hits both alike. Prints per repetition the seconds of each path and the
load average (``os.getloadavg``) around it, the median ratio, how many replies are identical token for token,
and what the reply cache costs and saves (weights fingerprint, a miss that writes, a hit).

The machine is shared: quote the ratio and the load beside it, not the absolute seconds.

    .venv/bin/python bench/generation_paths.py [--prompts 64] [--new-tokens 64] [--batch 64] [--reps 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
# grpo_step chooses the OpenMP wait policy before torch loads (see grpo_vs_trl.py); it must come first.
import grpo_step  # noqa: E402

WAIT_POLICY = grpo_step.WAIT_POLICY

import torch  # noqa: E402
from grpo_step import ROOT, bench_prompts  # noqa: E402
from grpo_vs_trl import measure_machine  # noqa: E402

from safealign.config import load_settings  # noqa: E402
from safealign.policy.decoding import Decoding, generate_from_texts, generate_rows, lean_blocker  # noqa: E402
from safealign.policy.loading import format_prompt, load_policy  # noqa: E402
from safealign.policy.reply_cache import ReplyCache, weights_fingerprint  # noqa: E402


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def timed_rows(model, tok, texts: list[str], dec: Decoding, lean: bool) -> tuple[float, list, str, str]:
    """(seconds, rows, load before, load after) of one path over all texts."""
    before = load()
    t = time.perf_counter()
    rows = generate_rows(model, tok, texts, dec, lean=lean)
    return time.perf_counter() - t, rows, before, load()


def cache_costs(model, tok, texts: list[str], dec: Decoding) -> dict[str, float]:
    """Seconds for the weights fingerprint (cold), a cache miss (generate + write) and a cache hit."""
    from safealign.policy import reply_cache

    reply_cache._WEIGHTS.clear()
    t = time.perf_counter()
    weights_fingerprint(model)
    cold = time.perf_counter() - t
    reply_cache._WEIGHTS.clear()
    kw = dict(max_new_tokens=dec.max_new_tokens, batch_size=dec.batch_size, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        generate_from_texts(model, tok, texts, cache=ReplyCache(folder), **kw)
        miss = time.perf_counter() - t
        t = time.perf_counter()
        generate_from_texts(model, tok, texts, cache=ReplyCache(folder), **kw)
        hit = time.perf_counter() - t
    return {"fingerprint_s": cold, "miss_s": miss, "hit_s": hit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--set", action="append", default=[], help="params override, e.g. policy.model=...")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # params.yaml's relative paths (the converted policy in .cache) resolve from the repo
    settings = load_settings(ROOT / "params.yaml", args.set)
    machine = measure_machine()
    print(
        f"machine: fp32 matmul {machine['gflops']:.0f} GFLOP/s, copy {machine['copy_gbs']:.1f} GB/s; torch "
        f"threads {torch.get_num_threads()}; {WAIT_POLICY}; load {load()}",
        flush=True,
    )
    model, tok = load_policy(settings)
    raw = bench_prompts(settings, args.prompts)
    texts = [format_prompt(tok, p, settings.policy.system_prompt) for p in raw]
    dec = Decoding(args.new_tokens, args.batch, 0)
    blocker = lean_blocker(model, dec)
    print(
        f"work: {settings.policy.model}, {len(texts)} prompts x {args.new_tokens} new tokens greedy, batch "
        f"{args.batch}; lean path {'ON' if blocker is None else 'OFF: ' + blocker}",
        flush=True,
    )
    for lean in (False, True):  # warm-up: first-call costs (weight packing, allocator) out of the timings
        generate_rows(model, tok, texts[:4], Decoding(4, 4, 0), lean=lean)
    times: dict[bool, list[float]] = {False: [], True: []}
    rows: dict[bool, list] = {}
    for rep in range(args.reps):
        for lean in (False, True):
            seconds, rows[lean], before, after = timed_rows(model, tok, texts, dec, lean)
            times[lean].append(seconds)
            name = "lean path     " if lean else "model.generate"
            print(f"rep {rep + 1} {name}: {seconds:7.1f} s (load before {before}, after {after})", flush=True)
    same = sum(torch.equal(a, b) for a, b in zip(rows[False], rows[True], strict=True))
    hf, lean_s = statistics.median(times[False]), statistics.median(times[True])
    print(f"median: model.generate {hf:.1f} s, lean path {lean_s:.1f} s -> {hf / lean_s:.2f}x faster")
    ratios = [a / b for a, b in zip(times[False], times[True], strict=True)]
    print(f"per-rep ratios: {', '.join(f'{r:.2f}x' for r in ratios)}")
    print(f"identical replies (token for token): {same}/{len(texts)}")
    costs = cache_costs(model, tok, texts, dec)
    print(
        f"reply cache: weights fingerprint {costs['fingerprint_s']:.2f} s, miss (generate + write) "
        f"{costs['miss_s']:.1f} s, hit {costs['hit_s']:.2f} s; load {load()}"
    )


if __name__ == "__main__":
    main()
