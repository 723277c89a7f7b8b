"""`safealign run` on a project whose pipeline is the real promote stage with its inputs given.

The project copy holds dvc.yaml's own `promote` stage (verbatim), a small data/ tracked by data.dvc, and the
candidate's inputs as promotion reads them (adapter and reward model folders, metrics/evaluation.json), so
`dvc repro` runs the real `safealign promote` against a real MLflow SQLite store in seconds. Data checks
and `--until` run against the full dvc.yaml in tests/test_dvc.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml

from safealign.common.layout import Layout
from safealign.config import load_settings
from safealign.run import is_refused_promotion

from helpers.dvc_project import REPO, make_project, run
from helpers.registry import evaluation, write_candidate


@pytest.fixture
def project(tmp_path) -> Path:
    promote = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["promote"]
    return make_project(tmp_path, yaml.safe_dump({"stages": {"promote": promote}}, sort_keys=False))


def _candidate(root: Path, adapter: bytes, doc: dict) -> Layout:
    paths = [f"paths.artifacts_dir={root / 'artifacts'}", f"paths.metrics_dir={root / 'metrics'}"]
    settings = load_settings(root / "params.yaml", paths)
    layout = write_candidate(settings, adapter, doc)
    (layout.metrics_dir / "calibration.json").write_text("{}")
    return layout


def _parent_status(root: Path, stdout: str) -> str:
    parent = stdout.split("== MLflow parent run ")[1].split()[0]
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_run(parent).info.status


def test_refused_promotion_exits_0_with_the_verdict_and_a_stage_error_keeps_its_code(project):
    _candidate(project, b"adapter-1", evaluation(safety_aligned=0.60))  # no safety gain: refused
    out = run(project, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "REFUSED (champion untouched)" in out.stdout and "FAIL  safety_gain" in out.stdout
    assert "(promote exited 3: a gate said no" in out.stdout and "== done in" in out.stdout
    assert json.loads((project / "metrics" / "promotion.json").read_text())["verdict"] == "refused"
    assert _parent_status(project, out.stdout) == "FINISHED"

    _candidate(project, b"adapter-2", evaluation(safety_aligned=0.80))  # every gate passes
    out = run(project, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PROMOTED to champion" in out.stdout and "promote exited 3" not in out.stdout

    layout = _candidate(project, b"adapter-3", evaluation())
    layout.metrics_file("evaluation").write_text("{not json")  # bad input: promote exits 2, DVC 255
    out = run(project, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "FAILED (exit 2)" in out.stdout and "not valid JSON" in out.stdout
    assert _parent_status(project, out.stdout) == "FAILED"


def test_only_promote_saying_no_counts_as_a_refusal(tmp_path):
    layout = Layout(tmp_path / "data", tmp_path / "artifacts", tmp_path / "metrics", tmp_path / "cache")
    layout.metrics_dir.mkdir()
    layout.metrics_file("promotion").write_text(json.dumps({"verdict": "refused"}))
    assert is_refused_promotion(layout, 3, {"command": "promote", "exit_code": 3})
    assert not is_refused_promotion(layout, 3, {"command": "calibrate", "exit_code": 3})
    assert not is_refused_promotion(layout, 2, {"command": "promote", "exit_code": 2})
    assert not is_refused_promotion(layout, 3, None)
    layout.metrics_file("promotion").write_text(json.dumps({"verdict": "promoted"}))
    assert not is_refused_promotion(layout, 3, {"command": "promote", "exit_code": 3})
