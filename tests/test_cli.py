"""The CLI's help, overrides and exit codes."""

import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from safealign import stages
from safealign.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
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
    """The `safealign` command users type: pyproject's entry, the installed metadata, the script itself."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["safealign"] == "safealign.cli:main"
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "safealign"]
    assert entry.value == "safealign.cli:main" and entry.load() is main
    script = Path(sys.executable).parent / "safealign"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "train-reward" in out
