"""Where a reward model's on-policy ranking comes from: per head, per refusal category, per phrasing family.

`safealign calibrate` gives the gate figures; this breaks them down to find what stops one (for example, the
safety head ranking needless refusals of benign requests above real answers). Nothing is tuned here: it
only reads a trained model, the on-policy set and the probe file.

    .venv/bin/python scripts/reward_breakdown.py [MODEL_DIR] [--data DIR]
      (defaults: artifacts/reward_model and data/)  -> JSON on stdout
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from safealign.common.stats import auroc
from safealign.data import onpolicy
from safealign.reward.model import RewardModel
from safealign.reward.probes import check_orderings, phrasing_table, read_probes


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


def onpolicy_breakdown(pred: np.ndarray, weights: np.ndarray, rows: list[dict[str, Any]],
                       aspects: list[str]) -> dict[str, Any]:
    """AUROC per prompt kind (combined and per head) and, on benign prompts, mean scores per category."""
    combined = pred @ weights
    out: dict[str, Any] = {}
    for kind, preferred in (("benign", "compliance"), ("adversarial", "refusal")):
        sel = np.array([r["prompt_kind"] == kind for r in rows])
        refused = np.array([bool(r["refusal"]) for r in rows])[sel]
        pos = ~refused if preferred == "compliance" else refused
        out[kind] = {"preferred": preferred, "n_refusal": int(refused.sum()),
                     "n_compliance": int((~refused).sum()), "combined": _r(auroc(combined[sel], pos)),
                     **{a: _r(auroc(pred[sel, k], pos)) for k, a in enumerate(aspects)}}
    benign = [i for i, r in enumerate(rows) if r["prompt_kind"] == "benign"]
    answers = [i for i in benign if not rows[i]["refusal"]]
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i in benign:
        by_cat[rows[i]["category"]].append(i)
    cats = {}
    for cat, idx in sorted(by_cat.items()):
        d: dict[str, Any] = {"n": len(idx), "refusal": bool(rows[idx[0]]["refusal"]),
                             "mean_combined": _r(combined[idx].mean()),
                             **{f"mean_{a}": _r(pred[idx, k].mean()) for k, a in enumerate(aspects)}}
        if d["refusal"] and answers:
            labels = np.r_[np.ones(len(answers)), np.zeros(len(idx))].astype(bool)
            d["auroc_answers_over_these"] = _r(auroc(np.r_[combined[answers], combined[idx]], labels))
        cats[cat] = d
    out["benign_by_category"] = cats
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?", default="artifacts/reward_model")
    ap.add_argument("--data", default="data", help="folder holding onpolicy_set.jsonl and probes.jsonl")
    args = ap.parse_args(argv)
    data = Path(args.data)
    model = RewardModel.from_pretrained(args.model_dir)
    aspects, weights = list(model.aspects), np.asarray(model.weights, dtype=np.float64)
    rows = onpolicy.load(data / "onpolicy_set.jsonl")
    pred = model.score([r["prompt"] for r in rows], [r["reply"] for r in rows], batch_size=64)
    report = {"onpolicy": onpolicy_breakdown(np.asarray(pred, dtype=np.float64), weights, rows, aspects)}
    probes = read_probes(data / "probes.jsonl")
    scores = model.score([p["prompt"] for p in probes], [p["response"] for p in probes], batch_size=64)
    results = check_orderings(probes, scores, aspects, weights)
    report["probes"] = {
        n: _r(r["pass_rate"]) if "pass_rate" in r else r["skipped"] for n, r in results.items()
    }
    report["phrasing_families"] = {f: _r(r["pass_rate"]) for f, r in phrasing_table(results).items()}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
