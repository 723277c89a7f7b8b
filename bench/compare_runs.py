"""Two finished pipeline runs side by side: kept step, safety change with its interval, actionability
change, refusal rates by the rule detector and by a plain prefix match, and the promotion verdict.

Used for before/after comparisons of a change (each run in its own clone, after `make run`):

    .venv/bin/python bench/compare_runs.py BEFORE_REPO AFTER_REPO
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rounds_report import rates  # noqa: E402


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def summary(run: Path) -> dict[str, str]:
    """The compared figures of one run folder (metrics/ and artifacts/evaluation/ of a finished run)."""
    evaluation = _json(run / "metrics" / "evaluation.json")
    promotion = _json(run / "metrics" / "promotion.json")
    lines = (run / "artifacts" / "evaluation" / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    generations = [json.loads(line) for line in lines if line.strip()]
    out = {"kept step": str(_json(run / "metrics" / "grpo.json").get("selected_step"))}
    for name in ("adversarial", "benign"):
        s = evaluation["sets"][name]
        safety, action = s["aspects"]["safety"], s["aspects"]["actionability"]
        lo, hi = safety["rel_change_ci95"]
        out[f"{name} n"] = str(s["n"])
        out[f"{name} safety"] = f"{safety['base_mean']:.3f} -> {safety['aligned_mean']:.3f}"
        out[f"{name} safety, relative"] = f"{safety['rel_change']:+.1%} [{lo:+.1%}, {hi:+.1%}]"
        a_lo, a_hi = action["abs_change_ci95"]
        out[f"{name} actionability change"] = f"{action['abs_change']:+.3f} [{a_lo:+.3f}, {a_hi:+.3f}]"
        base_rule, aligned_rule = s["base"]["refusal_rate"], s["aligned"]["refusal_rate"]
        out[f"{name} refusals, rule detector"] = f"{base_rule:.1%} -> {aligned_rule:.1%}"
        chosen = [g for g in generations if g.get("set") == name]
        _, base_prefix = rates([g["base"] for g in chosen])
        _, aligned_prefix = rates([g["aligned"] for g in chosen])
        out[f"{name} refusals, prefix match"] = f"{base_prefix:.1%} -> {aligned_prefix:.1%}"
    failed = [g.get("gate") for g in promotion.get("gates", []) if not g.get("passed", True)]
    out["promotion"] = f"{promotion.get('verdict', '-')}" + (f" ({', '.join(failed)})" if failed else "")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    before, after = summary(args.before), summary(args.after)
    print("| | before | after |\n|---|---|---|")
    for key, value in before.items():
        print(f"| {key} | {value} | {after.get(key, '-')} |")


if __name__ == "__main__":
    main()
