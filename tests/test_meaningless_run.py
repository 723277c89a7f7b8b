"""A meaningless run is never promoted (issue 32, case 2).

Aspect weights summing to 0 made every reward 0 and the weighted comparison NaN, and every stage exited 0;
``grpo.steps: true`` ran one step. Both are refused when the settings load (exit 2, naming the field), and a
NaN anywhere the promotion verdict rests on fails the ``finite_metrics`` gate.
"""

from __future__ import annotations

import math

import pytest

from safealign.cli import main
from safealign.config import load_settings
from safealign.errors import ConfigError
from safealign.evaluation.gates import check_gates, summarise

from helpers.registry import evaluation


@pytest.fixture()
def empty_params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("{}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "override, field",
    [
        ("aspects=[{name: politeness, weight: 0}, {name: safety, weight: 0.0}]", "aspects"),
        ("grpo.steps=true", "grpo.steps"),
        ("grpo.learning_rate=false", "grpo.learning_rate"),
        ("grpo.benign_weights={safety: true}", "grpo.benign_weights"),
    ],
)
def test_meaningless_settings_are_refused_at_load_naming_the_field(empty_params, override, field, capsys):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(empty_params, [override])
    assert main(["validate", "--params", str(empty_params), "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0], err


def test_booleans_still_load_where_booleans_are_expected(empty_params):
    settings = load_settings(empty_params, ["grpo.include_benign=false", "grpo.steps=3"])
    assert settings.grpo.include_benign is False and settings.grpo.steps == 3


def _gates(doc):
    settings = load_settings(None, [])
    return {g["gate"]: g for g in check_gates(settings, summarise(doc, settings), "fp", None)}


def test_nan_in_the_evaluation_fails_promotion():
    doc = evaluation()
    assert all(g["passed"] for g in _gates(doc).values())
    # what aspect weights summing to 0 wrote: a weighted comparison of zeros, its relative change NaN
    doc["sets"]["adversarial"]["weighted"]["rel_change"] = math.nan
    gates = _gates(doc)
    assert not gates["finite_metrics"]["passed"]
    assert "sets.adversarial.weighted.rel_change" in gates["finite_metrics"]["reason"]
    doc = evaluation()
    doc["sets"]["benign"]["aligned"]["refusal_rate_ci95"] = [math.nan, math.nan]
    assert not _gates(doc)["finite_metrics"]["passed"]
