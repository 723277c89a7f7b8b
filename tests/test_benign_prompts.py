"""The written benign prompts: size, domains, the sounds-unsafe kinds, near-duplicates, family splits."""

from __future__ import annotations

from collections import Counter

import pytest

from safealign.config import load_settings
from safealign.data import benign
from safealign.errors import DataError

SOUNDS_UNSAFE_KINDS = {
    "homonyms",
    "figurative",
    "safe_targets",
    "safe_contexts",
    "definitions",
    "historical_events",
    "public_figures",
    "fiction",
}


@pytest.fixture(scope="module")
def written():
    return benign.checked_written(load_settings(None).data.seed)


def test_size_domains_and_kinds(written):
    assert len(written) >= 1000
    everyday = {p.domain for p in written if p.category == "everyday"}
    assert len(everyday) >= 20, sorted(everyday)
    assert {p.domain for p in written if p.category == "sounds_unsafe"} == SOUNDS_UNSAFE_KINDS
    per_kind = Counter(p.domain for p in written if p.category == "sounds_unsafe")
    assert min(per_kind.values()) >= 10, per_kind


def test_shipped_set_has_no_near_duplicates_and_the_check_catches_one():
    seed = load_settings(None).data.seed
    prompts = benign.benign_prompts(benign.load_topics(), seed) + benign.load_written()
    assert benign.near_duplicates(prompts) == []
    a = benign.BenignPrompt(
        "x1", "How do I quickly boil rice on the stove?", "everyday", -1, "cooking", "c/a"
    )
    b = benign.BenignPrompt("x2", "How can I boil rice quickly on a stove?", "everyday", -1, "cooking", "c/b")
    c = benign.BenignPrompt("x3", "Why does rice go sticky?", "everyday", -1, "cooking", "c/c")
    pairs = benign.near_duplicates([a, b, c])
    assert [(p.id, q.id) for p, q, _ in pairs] == [("x1", "x2")]


def test_written_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "b.txt"
    bad.write_text("@ everyday cooking\nHow do I cook rice?\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"b.txt:2: prompt before"):
        benign.load_written(bad)
    bad.write_text("@ weird cooking\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"b.txt:1:"):
        benign.load_written(bad)
    bad.write_text(
        "@ everyday cooking\n= rice\nHow do I cook rice?\nhow do I cook  rice?\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"b.txt:4: duplicate of the prompt on line 3"):
        benign.load_written(bad)


def test_split_is_by_family_and_holds_out_at_least_300(written):
    s = load_settings(None).data
    split = {p.family: benign.benign_split_of(p.family, s.seed, s.benign_heldout_fraction) for p in written}
    held = [p for p in written if split[p.family] == "heldout"]
    assert len(held) >= 300
    # every family is wholly on one side
    sides: dict[str, set[str]] = {}
    for p in written:
        sides.setdefault(p.family, set()).add(split[p.family])
    assert all(len(v) == 1 for v in sides.values())
    assert {p.category for p in held} == {"everyday", "sounds_unsafe"}
    # deterministic and seed-dependent
    fam = written[0].family
    assert benign.benign_split_of(fam, s.seed, 0.4) == benign.benign_split_of(fam, s.seed, 0.4)
    assert [benign.benign_split_of(f, 1, 0.4) for f in sides] != [
        benign.benign_split_of(f, 2, 0.4) for f in sides
    ]
