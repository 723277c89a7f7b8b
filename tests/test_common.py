"""safealign.common's helpers: one tree hash, one dict flattener (and its --set lines), one prompt reader."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from safealign.common.hashing import tree_hash
from safealign.common.jsonl import read_prompt_rows, read_prompts
from safealign.common.nested import flatten, numeric_leaves, overrides_of
from safealign.config import apply_overrides
from safealign.errors import DataError
from safealign.kfp.stage import data_hash


def test_tree_hash_is_pinned_because_registry_versions_are_keyed_on_it(tmp_path):
    """Registered versions carry this hash (safealign.content_hash): the same folder must keep its value."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "adapter_config.json").write_bytes(b'{"r": 16}')
    (tmp_path / "sub" / "w.bin").write_bytes(b"weights\x00\x01")
    expected = "66f00ce1cda2fe148bd962de32d159b7d0c3897c86945ece659e88c94dff69a6"
    assert tree_hash(tmp_path) == expected
    assert data_hash(tmp_path) == f"sha256:{expected}"


def test_flatten_keeps_every_leaf_and_numeric_leaves_only_numbers():
    nested = {"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": True, "g": {}, "h": None, "i": math.inf}
    assert flatten(nested) == {"a.b": 1, "a.c.d": "x", "e": [1, 2], "f": True, "h": None, "i": math.inf}
    assert flatten({"x": 1}, "validation") == {"validation.x": 1}
    # NaN and infinity are no number KFP metadata or MLflow metrics can carry
    assert numeric_leaves({**nested, "j": math.nan}) == {"a.b": 1.0, "f": 1.0}


def test_read_prompts_names_file_and_row(tmp_path):
    split = tmp_path / "split.jsonl"
    split.write_text('{"id": "a", "prompt": "hi"}\n\n{"id": "b", "prompt": "there"}\n')
    assert read_prompts(split) == ["hi", "there"]
    assert [r["id"] for r in read_prompt_rows(split)] == ["a", "b"]
    split.write_text('{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": " "}\n')
    with pytest.raises(DataError, match=r"split\.jsonl:2: field 'prompt' missing or empty"):
        read_prompts(split)
    split.write_text("\n")
    with pytest.raises(DataError, match="no prompts"):
        read_prompts(split)
    with pytest.raises(DataError, match="prompt split not found"):
        read_prompts(tmp_path / "missing.jsonl")


def test_overrides_of_round_trips_through_apply_overrides():
    """configs/tiny.yaml reaches tests and bench/ as --set lines: each must parse back to the same value."""
    nested = {"policy": {"model": "tiny:smollm2-135m-instruct"}, "calibrate": {"r2_threshold": -1000.0},
              "grpo": {"selection": {"start": 1}, "lora": {"target_modules": ["q_proj", "v_proj"]}},
              "tracking": {"experiment": "two words", "enabled": True}, "x": {"none": None}}
    lines = overrides_of(nested)
    assert "policy.model=tiny:smollm2-135m-instruct" in lines and "grpo.selection.start=1" in lines
    assert apply_overrides({}, lines) == nested
    tiny = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text())
    assert apply_overrides({}, overrides_of(tiny)) == tiny
