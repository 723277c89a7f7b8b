"""The CLI's help, overrides and exit codes."""

import subprocess
import sys

import pytest

from safealign import stages
from safealign.cli import build_parser, main

STAGES = [s.cli for s in stages.STAGES]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help_with_params_and_set(stage, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([stage, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--params" in out and "--set" in out and "exit codes" in out


def test_bad_override_exits_2(capsys):
    code = main(["validate", "--set", "grpo.steps=many"])
    assert code == 2
    assert "grpo.steps" in capsys.readouterr().err


def test_console_script_installed():
    out = subprocess.run(
        [sys.executable, "-m", "safealign.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "train-reward" in out
