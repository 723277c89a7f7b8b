"""The refusal judgement every caller uses: ``judge(reply)``, ``is_refusal``, ``refusal_rates``.

Why a façade: the detector behind ``judge`` is chosen here (:func:`detector_mode`), so evaluation,
robustness, selection and labelling callers never change when it does. Two detectors exist:

* ``rules`` (the default): :mod:`safealign.refusal.rules`, transparent rules over the whole
  reply, tuned on the refusal set's tune part;
* ``combined``: the rules stacked with a learned classifier on frozen MiniLM embeddings, calibrated
  (:mod:`safealign.refusal.learned`), which reads other chat-model families' registers better.

Both are measured leave one register out by :mod:`safealign.evaluation.registers`; docs/evaluation.md has
the figures and why the default is what it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from safealign.refusal.rules import (
    REFUSAL_OPENINGS,
    RULE_FEATURES,
    RefusalJudgement,
    Verdict,
    judge_rules,
    opening_match,
    rule_features,
)

__all__ = [
    "DEFAULT_DETECTOR",
    "REFUSAL_OPENINGS",
    "RULE_FEATURES",
    "RefusalJudgement",
    "Verdict",
    "detector_mode",
    "is_refusal",
    "judge",
    "judge_rules",
    "opening_match",
    "refusal_rates",
    "rule_features",
]

# Which detector judge() is: "rules" (the default) or "combined" (rules + learned classifier). The default
# stays "rules" because, measured leave one register out (docs/evaluation.md), the combined detector reads
# other families' registers better but loses precision on SmolLM2's own register (the project's policy):
# held-out part precision .84 vs .957. Switch with SAFEALIGN_REFUSAL_DETECTOR=combined.
DEFAULT_DETECTOR = "rules"


def detector_mode() -> str:
    """``rules`` or ``combined``, from SAFEALIGN_REFUSAL_DETECTOR (default :data:`DEFAULT_DETECTOR`)."""
    mode = os.environ.get("SAFEALIGN_REFUSAL_DETECTOR", DEFAULT_DETECTOR).strip().lower()
    if mode not in ("combined", "rules"):
        raise ValueError(f"SAFEALIGN_REFUSAL_DETECTOR must be 'combined' or 'rules', got {mode!r}")
    return mode


def judge(reply: str) -> RefusalJudgement:
    """The project's refusal judgement of one reply (every caller's entry point; the detector behind it is
    chosen by :func:`detector_mode`).

    ``rules`` (default): :func:`judge_rules`. ``combined``: the rules stacked with the learned classifier
    (:mod:`safealign.refusal.learned`, a logistic head on frozen MiniLM embeddings, calibrated), which
    carries other families' wording better; measured leave one register out in
    :mod:`safealign.evaluation.registers`. An empty reply is ``empty`` either way.
    """
    rules = judge_rules(reply)
    if rules.verdict == "empty" or detector_mode() == "rules":
        return rules
    from safealign.refusal.learned import shipped, shipped_probability

    p = shipped_probability(reply)
    verdict: Verdict = "refuse" if p >= shipped().threshold else "comply"
    agree = "agrees with" if (verdict == "refuse") == rules.is_refusal else "overrules"
    return RefusalJudgement(
        verdict, rules.decline, f"combined p(refusal)={p:.2f}, {agree} the rules ({rules.reason})"
    )


def is_refusal(reply: str) -> bool:
    return judge(reply).is_refusal


def refusal_rates(replies: Iterable[str]) -> dict[str, float]:
    """Share of refusals, compliances and empty replies; the three add up to 1 (0 for no replies)."""
    replies = list(replies)
    if detector_mode() == "combined":
        from safealign.refusal.learned import prefetch

        prefetch([r for r in replies if (r or "").strip()])  # one batched encoder pass, not one per reply
    verdicts = [judge(r).verdict for r in replies]
    n = len(verdicts)
    if n == 0:
        return {"refusal_rate": 0.0, "comply_rate": 0.0, "empty_rate": 0.0, "n": 0}
    return {
        "refusal_rate": verdicts.count("refuse") / n,
        "comply_rate": verdicts.count("comply") / n,
        "empty_rate": verdicts.count("empty") / n,
        "n": n,
    }
