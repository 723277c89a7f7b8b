"""Real replies train the reward model (tune part) and judge it (held-out part), never both."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from safealign.config import load_settings
from safealign.data import onpolicy
from safealign.data import refusal_set as rs
from safealign.data.build import build_rows
from safealign.data.schema import REAL_REPLY_KIND, normalize_prompt
from safealign.errors import DataError
from safealign.reward.onpolicy import onpolicy_r2_bar, r2_gates
from safealign.reward.train import LabelledSplit, epoch_rows

ASPECTS = ["politeness", "meaningfulness", "actionability", "safety"]


def _row(prompt: str, kind: str, reply: str = "Sure, here you go.") -> dict:
    return {
        "id": rs.row_id(prompt, reply), "prompt": prompt, "reply": reply, "prompt_kind": kind,
        "source": "policy:test", "category": "compliance", "refusal": False, "labeller": "pass1",
        "aspects": dict.fromkeys(ASPECTS, 0.5),
    }  # fmt: skip


def test_parts_follow_the_evaluation_split_of_the_prompt():
    rows = [_row("held adv", "adversarial"), _row("train adv", "adversarial"),
            _row("held benign", "benign"), _row("train benign", "benign")]  # fmt: skip
    split = {"held adv": "heldout", "train adv": "train", "held benign": "train", "train benign": "val"}
    parts = onpolicy.assign_parts(rows, split.__getitem__, {normalize_prompt("held benign")})
    assert [r["part"] for r in parts] == ["heldout", "tune", "heldout", "tune"]


def test_onpolicy_file_round_trips_part_and_refuses_a_row_without_it(tmp_path):
    rows = onpolicy.assign_parts([_row("a", "adversarial"), _row("b", "benign")], lambda p: "train", set())
    path = tmp_path / "onpolicy_set.jsonl"
    onpolicy.write(path, rows)
    assert [r["part"] for r in onpolicy.load(path)] == ["tune", "tune"]
    lines = path.read_text().splitlines()
    broken = json.loads(lines[1])
    broken.pop("part")
    path.write_text(lines[0] + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(DataError, match=r"onpolicy_set.jsonl:2: field 'part'"):
        onpolicy.load(path)


@pytest.fixture(scope="module")
def built():
    return build_rows(load_settings(None))


def test_tune_replies_are_labelled_rows_and_heldout_replies_never_are(built):
    onp = built["onpolicy_set"]
    tune = {r["id"] for r in onp if r["part"] == "tune"}
    held = [r for r in onp if r["part"] == "heldout"]
    assert len(tune) >= 100 and len(held) >= 100
    real = {r["id"].removeprefix("onpolicy-"): r for r in built["labelled"]
            if r["response_kind"] == REAL_REPLY_KIND}  # fmt: skip
    assert set(real) == tune
    for r in onp:
        if r["id"] in real:
            row = real[r["id"]]
            assert row["response"] == r["reply"]
            assert all(row[f"score_{a}"] == pytest.approx(r["aspects"][a]) for a in ASPECTS)
            assert all(row[f"label_source_{a}"] == "human" for a in ASPECTS)
    # no tune reply answers an evaluation prompt: adversarial by the prompt split, benign by template family
    benign_held = {normalize_prompt(p["prompt"]) for p in built["benign"]
                   if built["benign_split"](p["family"]) == "heldout"}  # fmt: skip
    for r in onp:
        evaluated = built["split"](r["prompt"]) == "heldout" or (
            r["prompt_kind"] == "benign" and normalize_prompt(r["prompt"]) in benign_held
        )
        assert (r["part"] == "heldout") == evaluated, r["id"]


def test_real_replies_are_visited_repeatedly_per_epoch():
    rows = [{"response_kind": "collected"}, {"response_kind": REAL_REPLY_KIND}, {"response_kind": "empty"}]
    split = LabelledSplit(None, ["a", "b", "c"], ["p"] * 3, ["r"] * 3, np.zeros((3, 1)), [], rows)
    assert epoch_rows(split, 1) == [0, 1, 2]
    assert epoch_rows(split, 4) == [0, 1, 1, 1, 1, 2]


def test_r2_gate_on_real_replies_uses_the_card_bar_in_strict_mode():
    cfg = SimpleNamespace(r2_threshold=0.75, onpolicy_r2_threshold=0.5, strict=False)
    assert onpolicy_r2_bar(cfg) == 0.5
    assert onpolicy_r2_bar(SimpleNamespace(**{**vars(cfg), "strict": True})) == 0.75
    stats = {"politeness": {"r2": 0.6, "n": 10}, "safety": {"r2": float("nan"), "n": 10},
             "novelty": {"r2": float("nan"), "n": 0}}  # fmt: skip
    gates = r2_gates(stats, 0.5)
    assert set(gates) == {"r2_politeness", "r2_safety"}  # an unlabelled aspect has no gate
    assert gates["r2_politeness"]["passed"] and not gates["r2_safety"]["passed"]
    assert not r2_gates(stats, 0.75)["r2_politeness"]["passed"]
