"""The same GRPO step through TRL 1.16's GRPOTrainer (default configuration) and through our fast engine.

Work (issue 8): SmolLM2-135M-Instruct + LoRA r=8 on q/v, the MiniLM 4-output reward (trained if present,
else a random head: same cost), 4 prompts x G=4 completions x 64 new tokens, same seed. Engines are
alternated A B A B in one process (after one warm-up step each), so machine load hits both alike. Prints
the median seconds per step and each part, tokens/s, peak RSS during the step, the ratio, and the ratio of
each to a floor computed from matmul GFLOP/s and memory-copy GB/s measured in the same run.

TRL "default configuration" = the TRL engine as ``grpo.engine=trl`` builds it (GRPOTrainer with safealign's
extensions, which add no work at these settings: no KL, no constraint) with GRPOConfig's defaults except what
defines the work and the algorithm (G, lengths, batch of 4 prompts x G, lr, loss_type="grpo", LoRA via
peft_config): so bf16 autocast and gradient checkpointing stay ON, as TRL ships them. ``--trl-fp32`` also
runs TRL with both off (what ``safealign grpo`` uses on a CPU), the best plain configuration of TRL here.

The first line printed is the machine: fp32 matmul GFLOP/s and memory-copy GB/s measured in the run, torch
threads and the OpenMP wait policy chosen before torch loaded (spin on an idle CPU, sleep on a shared one),
so ratios from two machines can be compared.

Peak RSS is the process's VmHWM reset before each step; both engines' models are resident throughout, so
each engine's number includes the other's weights (about 0.6 GiB): an upper bound for either alone.

    .venv/bin/python bench/grpo_vs_trl.py [--reps 3] [--trl-fp32] [--threads 2]
"""

from __future__ import annotations

import argparse
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Importing grpo_step chooses the OpenMP wait policy (as `safealign grpo` does), and libgomp reads it once,
# when torch loads: grpo_step must load BEFORE torch, or the choice never applies. It used to sit in one
# import block with `import torch`, which the import sorter (ruff I001) put first, and the bench printed
# "OpenMP wait unchanged: torch was already imported". The assignment below ends the import block, so no
# sorter can move torch above it.
import grpo_step  # noqa: E402

WAIT_POLICY = grpo_step.WAIT_POLICY

import torch  # noqa: E402
from grpo_step import (  # noqa: E402
    ROOT,
    bench_prompts,
    bench_scorer,
    bench_settings,
    fast_engine,
    fast_step,
    fmt_table,
    reset_peak_rss,
    rss_gib,
)

WORK = [
    "policy.model=embedded:smollm2-135m-instruct",
    "grpo.lora.r=8",
    "grpo.lora.alpha=16",
    "grpo.lora.target_modules=[q_proj,v_proj]",
    "grpo.prompts_per_step=4",
    "grpo.num_generations=4",
    "grpo.max_new_tokens=64",
]


# ------------------------------------------------------------------------------------------- machine floor


def measure_machine(seconds: float = 2.0) -> dict[str, float]:
    """fp32 matmul GFLOP/s (1024^3 GEMMs) and memory copy GB/s (256 MiB tensors), best of a few."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        for _ in range(8):
            a @ b
        best = max(best, 8 * 2 * 1024**3 / (time.perf_counter() - t) / 1e9)
    src = torch.empty(64 * 1024**2)  # 256 MiB of fp32
    dst = torch.empty_like(src)
    bw = 0.0
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        bw = max(bw, src.numel() * 4 / (time.perf_counter() - t) / 1e9)  # bytes copied per second
    return {"gflops": best, "copy_gbs": bw}


def floor_seconds(
    model: Any, machine: dict[str, float], prompt_tokens: float, n_seq: int, new_tokens: float
) -> dict:
    """Arithmetic/bandwidth floor of one step of this work.

    Decode: every step reads all fp32 weights once (bandwidth-bound at batch 16), plus the prefill of the
    prompts once. Loss: forward 2*P FLOPs per token, backward ~2*P more (activation grads only; the frozen
    weights need no grads), over the prompts once and the N completions.
    """
    # Parameters once: the tied embedding stands for the lm_head matmul (the lookup itself is free).
    matmul_params = sum(p.numel() for p in model.parameters())
    weight_bytes = matmul_params * 4
    flops = machine["gflops"] * 1e9
    decode = new_tokens * weight_bytes / (machine["copy_gbs"] * 1e9)
    prefill = 2 * matmul_params * prompt_tokens / flops
    loss = 4 * matmul_params * (prompt_tokens + n_seq * new_tokens) / flops
    return {"decode": decode, "prefill": prefill, "loss": loss, "total": decode + prefill + loss}


# ------------------------------------------------------------------------------------------- TRL side


class _Timer:
    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def wrap(self, obj: Any, name: str, key: str) -> None:
        original = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.t[key] = self.t.get(key, 0.0) + time.perf_counter() - t0

        setattr(obj, name, timed)


def trl_engine(
    settings: Any, scorer: Any, prompts: list[str], out_dir: str, default_precision: bool
) -> tuple:
    from transformers import TrainerCallback

    from safealign.policy.loading import load_policy
    from safealign.policy.trl_engine import build_trl_trainer

    timer = _Timer()

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            timer.t["_step0"] = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kw):  # noqa: ANN001
            timer.t["_opt0"] = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):  # noqa: ANN001
            timer.t["optimizer"] = time.perf_counter() - timer.t["_opt0"]

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            timer.t["step"] = time.perf_counter() - timer.t["_step0"]

    model, tok = load_policy(settings)
    trainer, _cache = build_trl_trainer(
        settings,
        model,
        tok,
        scorer,
        prompts,  # all as adversarial prompts: each step draws the same 4, as the fast engine's step gets
        [],
        out_dir,
        max_steps=1,
        callbacks=[StepClock()],
        trl_defaults=default_precision,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # keep the bench output to the table
    timer.wrap(trainer, "_generate", "generate")
    timer.wrap(trainer, "_calculate_rewards", "reward")
    timer.wrap(trainer, "_prepare_inputs", "prepare")
    timer.wrap(trainer, "compute_loss", "forward")
    timer.wrap(trainer, "training_step", "training_step")
    return trainer, timer


def trl_step(trainer: Any, timer: _Timer, seed: int) -> dict[str, float]:
    timer.t.clear()
    trainer.args.seed = seed
    torch.manual_seed(seed)
    reset_peak_rss()
    trainer.train()
    t = timer.t
    logged = [h for h in trainer.state.log_history if "completions/mean_length" in h][-1]
    n = trainer.args.per_device_train_batch_size
    gen_tokens = float(logged["completions/mean_length"]) * n
    backward = t["training_step"] - t["prepare"] - t["forward"]
    return {
        "generate": t["generate"],
        "reward": t["reward"],
        "old_logps": t["prepare"] - t["generate"] - t["reward"],  # + tokenisation/bookkeeping in TRL
        "fwd_bwd": t["forward"] + backward,
        "optimizer": t.get("optimizer", 0.0),
        "step": t["step"],
        "gen_tokens": gen_tokens,
        "tok_per_s": gen_tokens / t["generate"],
        "peak_rss_gib": rss_gib(),
    }


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--reps", type=int, default=3, help="timed A B rounds after one warm-up round")
    ap.add_argument("--trl-fp32", action="store_true", help="also run TRL with bf16 and checkpointing off")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    settings = bench_settings(args.params, WORK + args.overrides)
    scorer, scorer_kind = bench_scorer(settings)
    prompts = bench_prompts(settings, settings.grpo.prompts_per_step)
    machine = measure_machine()
    print(
        f"machine: fp32 matmul {machine['gflops']:.0f} GFLOP/s, copy {machine['copy_gbs']:.1f} GB/s; torch "
        f"threads {torch.get_num_threads()}, OpenMP wait {WAIT_POLICY}",
        flush=True,
    )
    print(f"reward: {scorer_kind}; work: {' '.join(WORK + args.overrides)}", flush=True)

    engines: dict[str, tuple] = {}
    tmp = tempfile.mkdtemp(prefix="grpo_vs_trl-")
    engines["trl default"] = (
        "trl",
        *trl_engine(settings, scorer, prompts, tmp + "/a", default_precision=True),
    )
    if args.trl_fp32:
        engines["trl fp32, no ckpt"] = ("trl", *trl_engine(settings, scorer, prompts, tmp + "/b", False))
    fast = fast_engine(settings)
    engines["safealign fast"] = ("fast", fast)
    from safealign.policy.engine import merged_lora
    from safealign.policy.lean_decode import LeanDecoder

    with torch.no_grad(), merged_lora(fast[0]):
        lean = LeanDecoder.build(fast[0]) is not None
    print(
        f"fast engine decode: "
        f"{'lean (policy/lean_decode.py)' if lean else 'HF forward (architecture not supported)'}"
    )

    def one(name: str, seed: int) -> dict[str, float]:
        kind, *obj = engines[name]
        if kind == "trl":
            return trl_step(obj[0], obj[1], seed)
        return fast_step(settings, obj[0], scorer, prompts, seed)

    results: dict[str, list[dict[str, float]]] = {k: [] for k in engines}
    for rnd in range(args.reps + 1):  # round 0 is the warm-up
        for name in engines:
            r = one(name, seed=100 + rnd)
            print(f"round {rnd}{' (warm-up)' if rnd == 0 else ''}: {name}: {r['step']:.2f} s", flush=True)
            if rnd > 0:
                results[name].append(r)

    fast_runs = results["safealign fast"]
    prompt_tokens = statistics.median(r["prompt_tokens"] for r in fast_runs)
    n_seq = settings.grpo.prompts_per_step * settings.grpo.num_generations
    new_tokens = statistics.median(r["completion_len_max"] for r in fast_runs)
    floor = floor_seconds(fast[0], machine, prompt_tokens, n_seq, new_tokens)
    rows = []
    for name, runs in results.items():
        med = {
            k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], float | int)
        }
        rows.append({"engine": name, **med, "x_floor": med["step"] / floor["total"]})
    base = rows[0]["step"]
    for r in rows:
        r["speedup"] = base / r["step"]
    cols = [
        ("engine", "engine           ", ""),
        ("step", "s/step", ".2f"),
        ("generate", "generate", ".2f"),
        ("tok_per_s", "tok/s", ".0f"),
        ("reward", "reward", ".3f"),
        ("old_logps", "old logps+other", ".2f"),
        ("fwd_bwd", "fwd+bwd", ".2f"),
        ("optimizer", "optim", ".3f"),
        ("peak_rss_gib", "peak RSS GiB", ".2f"),
        ("speedup", "vs TRL default", ".2f"),
        ("x_floor", "x floor", ".2f"),
    ]
    print()
    print(f"median of {args.reps} alternated rounds (after a warm-up round); same prompts, G, lengths, LoRA")
    print(fmt_table(rows, cols))
    print(
        f"\nfloor {floor['total']:.2f} s = decode {floor['decode']:.2f} (weights read per token) + prefill "
        f"{floor['prefill']:.2f} + loss fwd/bwd {floor['loss']:.2f}; {prompt_tokens:.0f} prompt tokens, "
        f"{n_seq} x {new_tokens:.0f} new tokens"
    )
    ratio = rows[0]["step"] / rows[-1]["step"]
    print(
        f"ratio TRL default / safealign fast = {ratio:.2f}x (target >= 2.5x); fast peak RSS "
        f"{rows[-1]['peak_rss_gib']:.2f} GiB"
    )
    # the ratio depends on the machine (the fast engine's fp32 decode is bandwidth-bound,
    # TRL's bf16 path reads
    # half the bytes): quote it with the numbers that make two machines comparable
    print(
        f"on: fp32 matmul {machine['gflops']:.0f} GFLOP/s, copy {machine['copy_gbs']:.1f} GB/s, "
        f"{torch.get_num_threads()} threads, OpenMP wait {WAIT_POLICY}"
    )


if __name__ == "__main__":
    main()
