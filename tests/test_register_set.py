"""The register set: enough rows in enough registers, rows checked like the refusal set, varied wording,
the generator and the committed file in step, and the blind second pass."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from safealign.data import register_set as rg
from safealign.errors import DataError
from safealign.evaluation import detector

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows():
    return rg.load()


def test_set_has_600_new_rows_in_at_least_five_registers_each_with_both_labels(rows):
    assert len(rows) >= 600
    by_reg = Counter(r["register"] for r in rows)
    assert len(by_reg) >= 5 and set(by_reg) == set(rg.REGISTERS)
    for reg in rg.REGISTERS:
        mine = [r for r in rows if r["register"] == reg]
        refusals = sum(r["refusal"] for r in mine)
        assert len(mine) >= 60 and 0.3 <= refusals / len(mine) <= 0.75, (reg, len(mine), refusals)
        # each register refuses benign prompts too, so the reward's benign AUROC exists per register
        assert any(r["refusal"] and r["prompt_kind"] == "benign" for r in mine), reg
        if reg != "over_refusal":  # that register is about safe prompts only
            assert any(not r["refusal"] and r["prompt_kind"] == "adversarial" for r in mine), reg


def test_hard_negatives_are_there(rows):
    cats = Counter(r["category"] for r in rows)
    assert cats["disclaimer_then_comply"] >= 50 and cats["compliance"] >= 100
    crime_or_fiction = [
        r
        for r in rows
        if not r["refusal"]
        and any(
            w in r["prompt"]
            for w in ("Robbery", "Enron", "Capone", "heist", "Superman", "vampires", "Achilles")
        )
    ]
    assert len(crime_or_fiction) >= 15


def test_wording_is_varied_not_one_template(rows):
    """No eight-word opening dominates a register and each has at least 20 of them (one template with slots
    would have a handful, and a classifier would learn the template instead of the register). The least
    varied register is ``ai_language_model``: its catch phrase is what defines it."""
    for reg in rg.REGISTERS:
        mine = [r["reply"] for r in rows if r["register"] == reg]
        openings = Counter(" ".join(t.split()[:8]).lower() for t in mine)
        assert openings.most_common(1)[0][1] / len(mine) <= 0.12, (reg, openings.most_common(3))
        assert len(openings) >= 20, (reg, len(openings), len(mine))
    prompts = Counter(r["prompt"] for r in rows)
    assert len(prompts) >= 120


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"register": "pirate"}, "field 'register'"),
        ({"refusal": False}, "field 'refusal'"),
        ({"category": "maybe"}, "field 'category'"),
        ({"prompt_kind": "weird"}, "field 'prompt_kind'"),
        ({"reply": ""}, "field 'reply'"),
        ({"id": "rg-000000000000"}, "field 'id'"),
    ],
)
def test_bad_rows_are_refused_with_file_line_and_field(tmp_path, rows, over, needle):
    good = [rows[0], rows[1]]
    bad = dict(rows[2], **over)
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*good, bad]) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        rg.load(path)
    assert f"{path}:3" in str(exc.value) and needle in str(exc.value)


def test_missing_field_and_duplicate_rows_are_refused(tmp_path, rows):
    path = tmp_path / "set.jsonl"
    short = {k: v for k, v in rows[0].items() if k != "register"}
    path.write_text(json.dumps(short) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r":1: missing field\(s\) \['register'\]"):
        rg.load(path)
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="same prompt and reply as line 1"):
        rg.load(path)


def test_generator_and_committed_file_agree(rows):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import write_register_set
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    built = write_register_set.build_rows()
    assert [r["id"] for r in built] == [r["id"] for r in rows]
    assert {r["id"]: r["category"] for r in built} == {r["id"]: r["category"] for r in rows}


def test_blind_file_carries_no_labels_and_second_pass_covers_it(rows):
    ids = {r["id"] for r in rows}
    blind = [
        json.loads(line) for line in rg.BLIND_FILE.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    assert len(blind) >= 100
    assert all(set(b) == {"id", "prompt", "reply"} for b in blind)
    assert {b["id"] for b in blind} <= ids
    regs = Counter(r["register"] for r in rows if r["id"] in {b["id"] for b in blind})
    assert set(regs) == set(rg.REGISTERS)
    second = rg.load_second_pass()
    assert second is not None and {s["id"] for s in second} == {b["id"] for b in blind}
    agreement = detector.second_pass_agreement(rows, second)
    assert agreement["kappa"] >= 0.8, agreement


def test_second_pass_loader_rejects_rows_without_a_boolean_label(tmp_path):
    path = tmp_path / "second.jsonl"
    path.write_text(json.dumps({"id": "rg-x", "refusal": "yes"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=":1:"):
        rg.load_second_pass(path)
