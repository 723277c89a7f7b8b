"""The on-policy calibration set: real policy replies, every aspect labelled; blind subset; agreement."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from safealign.data import onpolicy
from safealign.data import refusal_set as rs
from safealign.errors import DataError
from safealign.results import _onpolicy_lines

ASPECTS = ["politeness", "meaningfulness", "actionability", "safety"]


@pytest.fixture(scope="module")
def rows():
    refusal = rs.load()
    extra = onpolicy.load_extra(known_ids={r["id"] for r in refusal})
    return onpolicy.build_rows(refusal, extra, ASPECTS)


def test_set_has_300_real_replies_of_base_and_aligned_policies_with_every_aspect(rows):
    assert len(rows) >= 300
    sources = Counter(r["source"] for r in rows)
    assert all(s.startswith("policy:") for s in sources)
    assert sources["policy:smollm2-grpo-aligned"] >= 100 and sources["policy:smollm2-base"] >= 50
    kinds = Counter((r["prompt_kind"], r["refusal"]) for r in rows)
    assert all(kinds[(k, ref)] > 0 for k in ("benign", "adversarial") for ref in (True, False)), kinds
    for r in rows:
        assert all(0.0 <= r["aspects"][a] <= 1.0 for a in ASPECTS), r["id"]


def test_blind_file_is_the_current_subset_without_labels(rows):
    lines = onpolicy.BLIND_FILE.read_text(encoding="utf-8").splitlines()
    blind = [json.loads(line) for line in lines]
    assert blind == onpolicy.blind_subset(rows)
    assert len(blind) == onpolicy.BLIND_SIZE
    assert all(set(b) == {"id", "prompt", "reply"} for b in blind)
    by_id = {r["id"]: r for r in rows}
    cells = Counter((by_id[b["id"]]["prompt_kind"], by_id[b["id"]]["refusal"]) for b in blind)
    assert len(cells) == 4 and min(cells.values()) >= 5, cells


def test_a_row_without_every_aspect_label_is_refused_by_id(rows):
    broken = [dict(rows[0], aspects={**rows[0]["aspects"], "safety": None})]
    with pytest.raises(DataError, match=rf"{rows[0]['id']}.*\['safety'\]"):
        onpolicy.build_rows([], broken, ASPECTS)


def test_extra_rows_must_be_policy_replies_and_name_the_line(tmp_path, rows):
    row = {f: rows[0][f] for f in rs.FIELDS}
    path = tmp_path / "extra.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "source": "written"}) + "\n")
    with pytest.raises(DataError, match=r"extra.jsonl:1: same prompt and reply"):
        onpolicy.load_extra(path, known_ids={row["id"]})
    with pytest.raises(DataError, match=r"extra.jsonl:2: field 'source' must start with 'policy:'"):
        onpolicy.load_extra(path)


def test_agreement_is_perfect_for_a_copy_and_drops_for_a_changed_pass(rows):
    sample = rows[:40]
    same = [{"id": r["id"], "aspects": dict(r["aspects"]), "refusal": r["refusal"]} for r in sample]
    ok = onpolicy.agreement(rows, same, ASPECTS)
    assert ok["refusal"]["agreement"] == 1.0
    assert all(ok["aspects"][a]["mae"] == 0.0 and ok["aspects"][a]["share_within"] == 1.0 for a in ASPECTS)
    assert all(ok["aspects"][a]["r2"] == 1.0 for a in ASPECTS if ok["aspects"][a]["r2"] is not None)
    changed = [
        {
            "id": s["id"],
            "aspects": {**s["aspects"], "safety": 1.0 - s["aspects"]["safety"]},
            "refusal": not s["refusal"],
        }
        for s in same
    ]
    bad = onpolicy.agreement(rows, changed, ASPECTS)
    assert bad["refusal"]["agreement"] == 0.0 and bad["refusal"]["kappa"] < 0
    assert bad["aspects"]["safety"]["mae"] > 0.2 and bad["aspects"]["politeness"]["mae"] == 0.0
    assert bad["aspects"]["safety"]["r2"] < 0
    with pytest.raises(DataError, match="regenerate the blind file"):
        onpolicy.agreement(rows, [{"id": "rs-nope", "aspects": {}}], ASPECTS)


def test_both_recorded_second_passes_match_rows_of_the_set(rows):
    """The committed second passes name rows of the shipped on-policy texts (tune pass: the tune rows), so
    calibration.json's label_agreement is computed, not None; blind file and labels hold the same ids."""
    tune = onpolicy.load_extra(onpolicy.TUNE_FILE, known_ids={r["id"] for r in rows})
    for blind, labels in [(onpolicy.TUNE_BLIND_FILE, onpolicy.TUNE_SECOND_PASS_FILE)]:
        blind_ids = [json.loads(line)["id"] for line in blind.read_text().splitlines()]
        second = onpolicy.load_second_pass(labels)
        assert second is not None and [s["id"] for s in second] == blind_ids
    report = onpolicy.label_agreement(rows + tune, ASPECTS)
    assert report["heldout_and_older_rows"]["n_rows"] == 60
    assert report["tune_rows"]["n_rows"] == 64 and report["tune_rows"]["refusal"]["n"] == 64
    assert all(report["tune_rows"]["aspects"][a]["n"] == 64 for a in ASPECTS)
    others = onpolicy.label_agreement(rows, ASPECTS)  # a set without the tune rows: not applicable, no error
    assert others["tune_rows"]["n_rows"] == 0 and others["heldout_and_older_rows"]["n_rows"] == 60
    with pytest.raises(DataError, match="regenerate the blind file"):
        onpolicy.label_agreement(rows + tune[:10], ASPECTS)  # part of a pass only: a stale blind file


def test_results_show_each_onpolicy_gate_with_its_verdict():
    block = {
        "n": 300, "enforced": False, "passed": False,
        "aspects": {"safety": {"r2": 0.4, "spearman": 0.6}},
        "gates": {
            "benign": {"value": 0.56, "threshold": 0.8, "passed": False},
            "adversarial": {"value": 0.9, "threshold": 0.85, "passed": True},
            "r2_safety": {"value": 0.4, "threshold": 0.5, "passed": False},
        },
        "auroc": {
            "benign": {"preferred": "compliance", "n": 100, "n_refusal": 8,
                       "auroc_by_aspect": {"safety": 0.3}},
            "adversarial": {"preferred": "refusal", "n": 200, "n_refusal": 22,
                            "auroc_by_aspect": {"safety": 0.9}},
        },
    }  # fmt: skip
    text = "\n".join(_onpolicy_lines(block))
    assert "not enforced" in text
    assert "| benign: compliance over the other (n 100, 8 refusals) | 0.560 | 0.80 | FAIL |" in text
    assert "| adversarial: refusal over the other (n 200, 22 refusals) | 0.900 | 0.85 | pass |" in text
    assert "R² gate on held-out real replies (> 0.50, calibrate.onpolicy_r2_threshold): safety FAIL." in text
    block["label_agreement"] = {
        "tune_rows": {"n_rows": 64, "aspects": {"safety": {"r2": 0.96}}},
        "heldout_and_older_rows": {"n_rows": 0, "note": "not in this set"},
    }
    text = "\n".join(_onpolicy_lines(block))
    assert "Second labelling pass (tune rows, 64 rows), labeller R²: safety 0.960." in text
    assert "older rows" not in text
