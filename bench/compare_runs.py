"""Two finished pipeline runs side by side: kept step, safety change with its interval, actionability
change, refusal rates by the rule detector and by a plain prefix match, and the promotion verdict.

Used for before/after comparisons of a change (each run in its own clone, after `make run`):

    .venv/bin/python bench/compare_runs.py BEFORE_REPO AFTER_REPO

``--same`` checks instead that a change (a refactor) changed no result: every number and string in
metrics/*.json and metrics/*.csv, and the bytes of artifacts/evaluation/generations.jsonl, must be equal,
except what measures time, memory or names a run (keys in ``VOLATILE``). Exit 1 lists what differs.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
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


# keys whose values measure the machine or name a run, not a result
VOLATILE = re.compile(
    r"(^|_)(s|seconds?|time|timing|timings|wall|rss|gib|per_s|tokens_per_s|run_id|uri|path|dir)(_|$)"
    r"|seconds|wall_time|timing|peak_rss|^s_|_s$|created|started|host|server|experiment_id"
)


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten JSON into ``a.b[2].c -> value``, leaving out volatile keys (and everything under them)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, child in value.items():
            if not VOLATILE.search(str(key)):
                out.update(_leaves(child, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for i, child in enumerate(value):
            out.update(_leaves(child, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _metrics(run: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted((run / "metrics").glob("*.json")):
        out.update(_leaves(_json(path), path.name))
    for path in sorted((run / "metrics").glob("*.csv")):
        with path.open(encoding="utf-8", newline="") as handle:
            out.update(_leaves(list(csv.DictReader(handle)), path.name))
    generations = run / "artifacts" / "evaluation" / "generations.jsonl"
    out["generations.jsonl bytes"] = generations.read_bytes() if generations.is_file() else None
    return out


def differences(before: Path, after: Path) -> list[str]:
    """What differs between two finished runs, volatile keys left out; [] when they agree."""
    a, b = _metrics(before), _metrics(after)
    return [f"{key}: {a.get(key, '<missing>')!r:.80} != {b.get(key, '<missing>')!r:.80}"
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--same", action="store_true", help="every result equal? (exit 1 if not)")
    args = parser.parse_args()
    if args.same:
        diffs = differences(args.before, args.after)
        compared = len(_metrics(args.before))
        print(f"{compared} results compared, {len(diffs)} differ")
        print("\n".join(diffs))
        sys.exit(1 if diffs else 0)
    before, after = summary(args.before), summary(args.after)
    print("| | before | after |\n|---|---|---|")
    for key, value in before.items():
        print(f"| {key} | {value} | {after.get(key, '-')} |")


if __name__ == "__main__":
    main()
