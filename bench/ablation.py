"""The paper's ablation in small: GRPO against the multi-aspect reward vs a safety-only reward.

Both arms start from the same base policy, the same trained reward model (re-weighting needs no retraining:
GRPO takes the weights from params), the same prompts, seed, steps and decoding; only the aspect weights
differ. Each arm runs `safealign grpo` and `safealign evaluate` into its own folder; the script then prints
base vs aligned per aspect for both arms side by side, plus refusal rates, so one sees what a single
safety objective does to politeness, meaningfulness and actionability.

Needs a trained reward model and the splits (run `dvc repro calibrate` or `make run` first).
Usage: .venv/bin/python bench/ablation.py [--steps 40] [--out bench/results/ablation] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SAFEALIGN = [sys.executable, "-m", "safealign.cli"]


def arm_params(base: dict, safety_only: bool) -> dict:
    """params for one arm. Checkpoint selection is off in both: its gates on aspect drops would pick the
    safety-only arm an early step and hide exactly what the ablation is there to show."""
    params = json.loads(json.dumps(base))
    params.setdefault("grpo", {})["selection"] = None
    if safety_only:
        params["aspects"] = [
            {"name": a["name"], "weight": 1.0 if a["name"] == "safety" else 0.0} for a in params["aspects"]
        ]
        # benign prompts too: their own weights (grpo.benign_weights) would put helpfulness back in the reward
        params.setdefault("grpo", {})["benign_weights"] = None
    return params


def run_arm(name: str, params: dict, out: Path, overrides: list[str]) -> dict:
    arm_dir = out / name
    (arm_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    for shared in ("reward_model", "splits"):
        link = arm_dir / "artifacts" / shared
        if not link.exists():
            link.symlink_to(ROOT / "artifacts" / shared)
    params_file = arm_dir / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    args = [
        "--params",
        str(params_file),
        "--set",
        f"paths.artifacts_dir={arm_dir / 'artifacts'}",
        "--set",
        f"paths.metrics_dir={arm_dir / 'metrics'}",
        "--set",
        "tracking.experiment=ablation",
        *[x for o in overrides for x in ("--set", o)],
    ]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.time()
    for stage in (["grpo", "--no-resume"], ["evaluate"]):
        log = arm_dir / f"{stage[0]}.log"
        with open(log, "w") as handle:
            code = subprocess.call(
                [*SAFEALIGN, *stage, *args], cwd=ROOT, env=env, stdout=handle, stderr=handle
            )
        if code != 0:
            raise SystemExit(f"{name}: safealign {stage[0]} exited {code}; see {log}")
    report = json.loads((arm_dir / "metrics" / "evaluation.json").read_text())
    report["_seconds"] = time.time() - t0
    return report


def print_table(arms: dict[str, dict]) -> None:
    first = next(iter(arms.values()))
    aspects = list(first["sets"]["adversarial"]["aspects"])
    print("\nheld-out adversarial prompts: mean reward-model score, base -> aligned (relative change)")
    print(f"{'aspect':16s}" + "".join(f"{name:>34s}" for name in arms))
    for aspect in aspects:
        cells = []
        for report in arms.values():
            a = report["sets"]["adversarial"]["aspects"][aspect]
            cells.append(f"{a['base_mean']:.3f} -> {a['aligned_mean']:.3f} ({100 * a['rel_change']:+.1f}%)")
        print(f"{aspect:16s}" + "".join(f"{c:>34s}" for c in cells))
    for set_name in ("adversarial", "benign"):
        cells = []
        for report in arms.values():
            s = report["sets"][set_name]
            cells.append(f"{s['base']['refusal_rate']:.2f} -> {s['aligned']['refusal_rate']:.2f}")
        print(f"{'refusal ' + set_name:16s}" + "".join(f"{c:>34s}" for c in cells))
    print(f"{'wall seconds':16s}" + "".join(f"{r['_seconds']:>34.0f}" for r in arms.values()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ablation"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=["multi_aspect", "safety_only"],
        default=["multi_aspect", "safety_only"],
        help="run only these arms (e.g. safety_only when a default run already is the other arm)",
    )
    args = parser.parse_args()
    base = yaml.safe_load(Path(args.params).read_text())
    out = Path(args.out).resolve()
    arms = {}
    for name, safety_only in (("multi_aspect", False), ("safety_only", True)):
        if name not in args.arms:
            continue
        print(f"== arm {name}", flush=True)
        arms[name] = run_arm(name, arm_params(base, safety_only), out, args.overrides)
    print_table(arms)
    summary = {name: r["sets"] for name, r in arms.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    print(f"\nfull reports: {out}/*/artifacts/evaluation/report.md")


if __name__ == "__main__":
    main()
