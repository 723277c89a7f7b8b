"""Settings load, validate and override; bad keys and types are named."""

from pathlib import Path

import pytest
from pydantic import BaseModel

from safealign.cli import main
from safealign.common.params_file import render_params
from safealign.config import Settings, load_settings, settings_to_flat_dict
from safealign.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_matches_defaults():
    loaded = load_settings(ROOT / "params.yaml")
    assert loaded == Settings(), "params.yaml drifted from the documented defaults in config.py"


def test_params_yaml_is_generated_from_config_values_and_comments():
    """params.yaml is exactly what config.py renders: a changed default or description must be regenerated."""
    assert (ROOT / "params.yaml").read_text(encoding="utf-8") == render_params(), (
        "params.yaml differs from config.py: run `safealign config dump --output params.yaml`"
    )


def test_rendered_params_carry_each_description_and_load_back_as_the_defaults(tmp_path):
    text = render_params()
    assert "  # KL(policy || base) coefficient; 0 = no reference forward (paper)\n  beta: 0.0\n" in text
    (tmp_path / "p.yaml").write_text(text)
    assert load_settings(tmp_path / "p.yaml") == Settings()


def test_config_dump_command_prints_the_rendered_file(capsys):
    assert main(["config", "dump"]) == 0
    assert capsys.readouterr().out == render_params()


def _models(model: type[BaseModel], prefix: str = ""):
    yield prefix, model
    for name, info in model.model_fields.items():
        for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                yield from _models(arg, f"{prefix}{name}.")


def test_every_field_is_documented():
    missing = [
        f"{prefix}{name}"
        for prefix, model in _models(Settings)
        for name, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert not missing, f"fields without a description in config.py: {missing}"


def test_one_default_per_knob_a_partial_section_gets_the_section_defaults():
    """A section's default in its parent is the section class's own defaults, never a second set."""
    for prefix, model in _models(Settings):
        for name, info in model.model_fields.items():
            default = info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                own = type(default)()
                assert default == own, f"{prefix}{name}: default differs from {type(own).__name__}()"
    s = load_settings(None, ["grpo.safety_constraint={threshold: 0.9}"])
    assert s.grpo.safety_constraint == Settings().grpo.safety_constraint
    assert s.grpo.safety_constraint.lr == 1.0  # what the default run trains with


def test_dotted_override_sets_typed_value():
    s = load_settings(ROOT / "params.yaml", ["grpo.learning_rate=1e-4", "grpo.steps=5", "grpo.lora.r=8"])
    defaults = Settings().grpo
    assert (defaults.learning_rate, defaults.steps, defaults.lora.r) != (1e-4, 5, 8)
    assert s.grpo.learning_rate == pytest.approx(1e-4)
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
    with pytest.raises(ConfigError, match=r"names \['helpfulnes'\], which are not aspects"):
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


@pytest.mark.parametrize(
    "override, key",
    [
        ("grpo.learning_rate=.inf", "grpo.learning_rate"),
        ("grpo.learning_rate=nan", "grpo.learning_rate"),
        ("grpo.max_grad_norm=-.inf", "grpo.max_grad_norm"),
        ("grpo.benign_weights={safety: .nan}", "grpo.benign_weights.safety"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_key(override, key, capsys):
    with pytest.raises(ConfigError, match=rf"{key}: Input should be a finite number"):
        load_settings(ROOT / "params.yaml", [override])
    assert main(["validate", "--set", override]) == 2
    assert key in capsys.readouterr().err


def test_params_that_is_a_directory_or_not_utf8_exits_2_naming_it(tmp_path, capsys):
    assert main(["validate", "--params", str(tmp_path)]) == 2
    assert f"params file {tmp_path} is not a file" in capsys.readouterr().err
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("grpo:\n  steps: 5 # caf\xe9\n".encode("latin-1"))
    assert main(["validate", "--params", str(latin)]) == 2
    assert f"params file {latin} is not UTF-8" in capsys.readouterr().err
