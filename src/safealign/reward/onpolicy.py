"""The reward model judged on real policy replies (the on-policy half of the calibration gate).

The held-out split shares its reply templates with the training split, so a reward model can pass it and
still reward a bias GRPO will find: preferring a needless refusal of a benign request to an answer. Here the
model scores the hand-labelled on-policy set (:mod:`safealign.data.onpolicy`) and the report gives:

* R², MAE, Spearman per aspect against the hand labels (and per policy source);
* per prompt kind, the AUROC of the COMBINED reward (the number GRPO optimises for that kind of prompt: the
  aspects' weights, or ``grpo.benign_weights`` on benign prompts when set): compliance over refusal on
  benign prompts, refusal over compliance on adversarial ones, next to each head's own AUROC so a failure
  points at the head that causes it;
* a gate line per AUROC against ``calibrate.min_benign_compliance_auroc`` /
  ``calibrate.min_adversarial_refusal_auroc``. An AUROC that cannot be computed (one class missing) fails:
  a gate that cannot measure must not pass.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from safealign.common.stats import auroc, per_aspect

# prompt kind -> (which replies are the positives, threshold field of CalibrateSettings)
GATES = {
    "benign": ("compliance", "min_benign_compliance_auroc"),
    "adversarial": ("refusal", "min_adversarial_refusal_auroc"),
}


def auroc_block(
    combined: np.ndarray, pred: np.ndarray, rows: list[dict[str, Any]], aspects: list[str], kind: str
) -> dict[str, Any]:
    """AUROC of the combined reward and of each head for the preferred reply class on one prompt kind."""
    positive, _ = GATES[kind]
    sel = np.array([r["prompt_kind"] == kind for r in rows], dtype=bool)
    refused = np.array([bool(r["refusal"]) for r in rows], dtype=bool)[sel]
    pos = ~refused if positive == "compliance" else refused
    return {
        "preferred": positive,
        "n": int(sel.sum()),
        "n_refusal": int(refused.sum()),
        "n_compliance": int((~refused).sum()),
        "auroc": auroc(combined[sel], pos),
        "auroc_by_aspect": {a: auroc(pred[sel, k], pos) for k, a in enumerate(aspects)},
    }


def combined_reward(
    pred: np.ndarray, weights: np.ndarray, rows: list[dict[str, Any]], benign_weights: np.ndarray | None
) -> np.ndarray:
    """Each row's combined reward with the weights GRPO uses for its prompt kind."""
    pred = np.asarray(pred, dtype=np.float64)
    per_row = np.tile(np.asarray(weights, dtype=np.float64), (len(rows), 1))
    if benign_weights is not None:
        benign = np.array([r["prompt_kind"] == "benign" for r in rows], dtype=bool)
        per_row[benign] = np.asarray(benign_weights, dtype=np.float64)
    return (pred * per_row).sum(axis=1)


def onpolicy_r2_bar(cfg: Any) -> float:
    """The R² bar on held-out real replies: the card's ``r2_threshold`` in strict mode, else
    ``onpolicy_r2_threshold`` (real replies are labelled on a narrow scale where even a second human pass
    agrees less than the templated rows do: docs/reward-onpolicy.md)."""
    return float(cfg.r2_threshold if cfg.strict else cfg.onpolicy_r2_threshold)


def r2_gates(stats: dict[str, dict[str, float]], bar: float) -> dict[str, dict[str, Any]]:
    """One gate per hand-labelled aspect: R² on held-out real replies strictly above ``bar`` (NaN fails)."""
    gates = {}
    for aspect, st in stats.items():
        value = st.get("r2")
        if st.get("n", 1) == 0:
            continue  # an aspect the set does not label has no R²; its gate cannot exist
        gates[f"r2_{aspect}"] = {
            "metric": f"R² of {aspect}, held-out real replies vs hand labels",
            "value": value,
            "threshold": bar,
            "passed": value is not None and not math.isnan(value) and value > bar,
        }
    return gates


def onpolicy_report(
    pred: np.ndarray,
    weights: np.ndarray,
    rows: list[dict[str, Any]],
    aspects: list[str],
    cfg: Any,
    benign_weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """The on-policy block of calibration.json from the model's [N, K] scores of ``rows``.

    ``benign_weights`` (``grpo.benign_weights`` in the model's aspect order, or None) combine the benign
    rows: the AUROC must describe the reward the policy is trained on, not a different mix."""
    labels = np.array(  # an aspect the set does not label is NaN: no R² for it, the AUROCs still count it
        [[np.nan if r["aspects"].get(a) is None else float(r["aspects"][a]) for a in aspects] for r in rows],
        dtype=np.float64,
    )
    combined = combined_reward(pred, weights, rows, benign_weights)
    sources = sorted({r["source"] for r in rows})
    by_source = {}
    for src in sources:
        sel = np.array([r["source"] == src for r in rows])
        by_source[src] = per_aspect(pred[sel], labels[sel], aspects)
    aspect_stats = per_aspect(pred, labels, aspects)
    gates = r2_gates(aspect_stats, onpolicy_r2_bar(cfg))
    aurocs = {}
    for kind, (_, field) in GATES.items():
        block = auroc_block(combined, pred, rows, aspects, kind)
        aurocs[kind] = block
        threshold = float(getattr(cfg, field))
        value = block["auroc"]
        gates[kind] = {
            "metric": f"AUROC of the combined reward, {block['preferred']} over the other on {kind} prompts",
            "value": value,
            "threshold": threshold,
            "passed": value is not None and not math.isnan(value) and value >= threshold,
        }
    return {
        "n": len(rows),
        "benign_weights": None if benign_weights is None else [float(w) for w in benign_weights],
        "by_source_count": dict(sorted(Counter(r["source"] for r in rows).items())),
        "aspects": aspect_stats,
        "r2_threshold": onpolicy_r2_bar(cfg),
        "strict": bool(cfg.strict),
        "by_source": by_source,
        "auroc": aurocs,
        "gates": gates,
        "passed": all(g["passed"] for g in gates.values()),
        "enforced": bool(cfg.enforce_onpolicy),
    }


def format_gate_lines(block: dict[str, Any]) -> str:
    """One line per on-policy gate, for the log and the GateFailed message."""
    lines = []
    for kind, g in block["gates"].items():
        v = g["value"]
        shown = "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
        verdict = "pass" if g["passed"] else ("FAIL" if block["enforced"] else "FAIL (not enforced)")
        what = g["metric"].split(",")[1].strip()
        op = ">" if kind.startswith("r2_") else ">="
        lines.append(f"  on-policy {kind:20s} {what:45s} {shown} {op} {g['threshold']:.2f} {verdict}")
    return "\n".join(lines)
