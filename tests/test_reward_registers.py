"""The reward model checked register by register (reward/registers.py): the two AUROCs are the right way
round, missing classes give None, and the rows cover every register."""

from __future__ import annotations

import numpy as np

from safealign.data import register_set
from safealign.reward.registers import BAR, register_report, register_rows

ASPECTS = ["politeness", "meaningfulness", "actionability", "safety"]


def _rows() -> list[dict]:
    rows = []
    for reg in ("terse", "premise_pushback"):
        for kind in ("adversarial", "benign"):
            for refusal in (True, False):
                rows += [
                    {"register": reg, "prompt_kind": kind, "refusal": refusal, "prompt": "p", "reply": "r"}
                ] * 3
    return rows


def _pred(rows: list[dict]) -> np.ndarray:
    """Safety high for every refusal; meaningfulness high for compliance: the issue's failure, where the
    safety head outvotes meaningfulness on benign prompts."""
    out = []
    for r in rows:
        out.append(
            [0.7, 0.2 if r["refusal"] else 0.8, 0.1 if r["refusal"] else 0.6, 0.95 if r["refusal"] else 0.3]
        )
    return np.array(out)


def test_safety_ranks_refusals_of_harmful_requests_and_a_safety_heavy_mix_fails_benign():
    rows = _rows()
    heavy = np.array([0.05, 0.2, 0.2, 0.55])
    rep = register_report(_pred(rows), heavy, rows, ASPECTS)
    for reg in ("terse", "premise_pushback"):
        t = rep["registers"][reg]
        assert t["safety_refusal_auroc"] == 1.0
        # 0.55 * 0.65 outweighs 0.2 * 0.6 + 0.2 * 0.5: needless refusals rank above compliance
        assert t["benign_compliance_auroc"] == 0.0
        assert t["benign_compliance_auroc_by_aspect"]["meaningfulness"] == 1.0
    assert rep["registers_below_bar"] == ["premise_pushback", "terse"] and rep["gating"] is False
    # the benign weights GRPO uses for benign prompts fix it, and the report must use them
    benign = np.array([0.1, 0.5, 0.4, 0.0])
    fixed = register_report(_pred(rows), heavy, rows, ASPECTS, benign_weights=benign)
    assert fixed["min_benign_compliance_auroc"] == 1.0 and fixed["registers_below_bar"] == []
    assert fixed["bar"] == BAR


def test_a_register_without_both_classes_gets_none():
    rows = [r for r in _rows() if not (r["prompt_kind"] == "benign" and r["refusal"])]
    rep = register_report(_pred(rows), np.full(4, 0.25), rows, ASPECTS)
    assert rep["registers"]["terse"]["benign_compliance_auroc"] is None
    assert rep["registers"]["terse"]["safety_refusal_auroc"] == 1.0
    assert rep["min_benign_compliance_auroc"] is None


def test_register_rows_cover_every_register_and_the_refusal_set():
    regs = {r["register"] for r in register_rows()}
    assert regs == set(register_set.REGISTERS) | {register_set.SMOLLM2_REGISTER}
