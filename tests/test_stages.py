"""The stage registry agrees with the library it names, and stays cheap to import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from safealign import stages

from helpers.imports import closure, module_file


def test_names_follow_the_spelling_policy():
    assert stages.NAMES == ("validate", "train_reward", "calibrate", "grpo", "evaluate", "promote")
    for s in stages.STAGES:
        assert s.name.isidentifier() and s.name == s.dvc
        assert s.cli == s.name.replace("_", "-")
        assert stages.get(s.cli) is s and stages.get(s.name) is s
    with pytest.raises(KeyError, match="unknown stage 'reward'"):
        stages.get("reward")
    assert stages.metrics_name("train_reward") == "train_reward"
    assert stages.metrics_name("calibrate") == "calibration"
    assert stages.metrics_name("data") == "data"


@pytest.mark.parametrize("stage", stages.STAGES, ids=stages.NAMES)
def test_function_writes_the_registered_metrics_file_under_the_registered_run_name(stage):
    func = stage.load()
    params = list(inspect.signature(func).parameters)
    assert params[0] == "settings"
    for flag in stage.flags:
        assert flag.kwarg in params
    # somewhere in the code the stage runs (its module and the safealign modules it imports)
    source = "\n".join(module_file(m).read_text(encoding="utf-8") for m in closure(func.__module__))
    assert f'metrics_file("{stage.metrics}")' in source
    assert f'stage_run(settings, "{stage.name}"' in source


def test_registry_and_cli_parser_do_not_import_torch():
    code = "import sys; from safealign.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
