"""How well the rule annotator agrees with the hand labels: its refusal decision on the refusal set (per
part) and on the on-policy set, its aspect scores against the on-policy set's hand labels, and the AUROCs
its own combined score would reach there. Run it before and after a rubric change: a change that teaches
the reward model new wordings must not make the labels worse on real replies.

    .venv/bin/python scripts/annotator_agreement.py     -> JSON on stdout
"""

from __future__ import annotations

import json

import numpy as np
from scipy.stats import spearmanr

from safealign.common.stats import auroc, binary_agreement
from safealign.config import load_settings
from safealign.data import onpolicy, refusal_set
from safealign.data.annotators import RUBRIC_VERSION, RuleAnnotator, extract_features

ASPECTS = list(onpolicy.LABELLED_ASPECTS)


def _refusal_agreement(rows: list[dict]) -> dict:
    truth = [bool(r["refusal"]) for r in rows]
    said = [extract_features(r["prompt"], r["reply"]).refused for r in rows]
    a = binary_agreement(truth, said)
    return {k: round(a[k], 3) if isinstance(a[k], float) else a[k]
            for k in ("n", "precision", "recall", "accuracy", "kappa")}


def main() -> int:
    refusal = refusal_set.load(refusal_set.SOURCE_FILE)
    extra = onpolicy.load_extra(onpolicy.EXTRA_FILE, known_ids={r["id"] for r in refusal})
    onp = onpolicy.build_rows(refusal, extra)
    report: dict = {"rubric": RUBRIC_VERSION, "refusal_set": {}}
    for part in ("tune", "heldout"):
        rows = [r for r in refusal if refusal_set.split_of_row(r["id"]) == part]
        report["refusal_set"][part] = _refusal_agreement(rows)
    report["onpolicy_refusal"] = _refusal_agreement(onp)
    ann = RuleAnnotator(ASPECTS)
    scores = np.array([[ann.annotate(r["prompt"], r["prompt_kind"], r["reply"])[a] for a in ASPECTS]
                       for r in onp])
    labels = np.array([[r["aspects"][a] for a in ASPECTS] for r in onp], dtype=np.float64)
    report["onpolicy_aspects"] = {
        a: {"mae": round(float(np.mean(np.abs(scores[:, k] - labels[:, k]))), 3),
            "spearman": round(float(spearmanr(scores[:, k], labels[:, k]).statistic), 3)}
        for k, a in enumerate(ASPECTS)
    }
    settings = load_settings(None)
    weights = np.array([dict(zip(settings.aspect_names, settings.aspect_weights, strict=True))[a]
                        for a in ASPECTS])
    combined = scores @ weights
    refused = np.array([bool(r["refusal"]) for r in onp])
    for kind, preferred in (("benign", "compliance"), ("adversarial", "refusal")):
        sel = np.array([r["prompt_kind"] == kind for r in onp])
        pos = ~refused[sel] if preferred == "compliance" else refused[sel]
        report[f"onpolicy_auroc_{kind}"] = round(auroc(combined[sel], pos), 3)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
