"""Settings load, validate and override; bad keys and types are named."""

from pathlib import Path

import pytest

from safealign.config import Settings, load_settings, settings_to_flat_dict
from safealign.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_matches_defaults():
    loaded = load_settings(ROOT / "params.yaml")
    assert loaded == Settings(), "params.yaml drifted from the documented defaults in config.py"


def test_dotted_override_sets_typed_value():
    s = load_settings(ROOT / "params.yaml", ["grpo.learning_rate=3e-4", "grpo.steps=5", "grpo.lora.r=8"])
    assert s.grpo.learning_rate == pytest.approx(3e-4)
    assert s.grpo.steps == 5
    assert s.grpo.lora.r == 8


def test_override_nested_optional_section():
    s = load_settings(ROOT / "params.yaml", ["grpo.safety_constraint.threshold=0.8"])
    assert s.grpo.safety_constraint is not None
    assert s.grpo.safety_constraint.threshold == pytest.approx(0.8)


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("grpo:\n  learnig_rate: 1e-4\n")
    with pytest.raises(ConfigError, match=r"grpo\.learnig_rate: unknown key"):
        load_settings(bad)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"grpo\.steps"):
        load_settings(ROOT / "params.yaml", ["grpo.steps=many"])


def test_duplicate_aspects_rejected(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("aspects:\n  - {name: safety, weight: 1}\n  - {name: safety, weight: 1}\n")
    with pytest.raises(ConfigError, match="unique"):
        load_settings(bad)


def test_benign_weights_must_name_aspects_and_weigh_something():
    s = load_settings(ROOT / "params.yaml", ["grpo.benign_weights={actionability: 0.5, meaningfulness: 0.5}"])
    assert s.grpo.benign_weights == {"actionability": 0.5, "meaningfulness": 0.5}
    with pytest.raises(ConfigError, match=r"not aspects.*'helpfulnes'"):
        load_settings(ROOT / "params.yaml", ["grpo.benign_weights={helpfulnes: 1.0}"])
    with pytest.raises(ConfigError, match="positive sum"):
        load_settings(ROOT / "params.yaml", ["grpo.benign_weights={safety: 0.0}"])


def test_missing_params_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_flat_dict_has_dotted_keys():
    flat = settings_to_flat_dict(Settings())
    assert flat["grpo.learning_rate"] == pytest.approx(3e-4)
    assert flat["grpo.lora.r"] == 16
