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
from safealign.run import experiments_line, is_refused_promotion

from helpers.dvc_project import REPO, VENV_BIN, dvc, make_project, run, sh
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
    # the summary names the store the run used (MLFLOW_TRACKING_URI here), not a fixed ./mlflow.db
    assert f"ui --backend-store-uri sqlite:///{(project / 'mlflow.db').resolve()}" in out.stdout

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


def test_rollback_leaves_the_promote_stage_up_to_date(project):
    """`promote --rollback` after a pipeline run must not touch promote's DVC output (issue 31): it used to
    rewrite metrics/promotion.json, so `dvc status` reported the promote stage changed and the next
    `dvc repro` re-ran promote. Its record goes to metrics/rollback.json, which no stage declares."""
    from safealign.registry.promotion import current_rollback

    layout = _candidate(project, b"adapter-1", evaluation(safety_aligned=0.80))
    assert "PROMOTED to champion" in run(project).stdout
    first = json.loads(layout.metrics_file("promotion").read_text())["champion"]
    _candidate(project, b"adapter-2", evaluation(safety_aligned=0.85))
    assert "PROMOTED to champion" in run(project).stdout
    assert json.loads(dvc(project, "status", "--json", "promote").stdout or "{}") == {}
    before = layout.metrics_file("promotion").read_bytes()

    sh(project, str(VENV_BIN / "safealign"), "promote", "--rollback", "--reason", "benign refusals up")
    assert json.loads(dvc(project, "status", "--json", "promote").stdout or "{}") == {}
    assert layout.metrics_file("promotion").read_bytes() == before
    assert current_rollback(layout)["champion"] == first
    repair = sh(project, str(VENV_BIN / "safealign"), "promote", "--repair").stdout
    assert '"promotion_json_agrees": true' in repair, repair
    assert "every stage is up to date" in run(project).stdout


def test_summary_of_a_run_on_a_server_names_the_server_not_a_sqlite_file():
    """A team run tracks to the MLflow server: its summary used to suggest `mlflow ui --backend-store-uri
    sqlite:///mlflow.db` anyway, which opens an empty local store (issue 31)."""
    line = experiments_line("http://127.0.0.1:15000")
    assert "http://127.0.0.1:15000" in line and "sqlite" not in line and "mlflow ui" not in line
    assert experiments_line("sqlite:////w/mlflow.db").endswith(
        "ui --backend-store-uri sqlite:////w/mlflow.db   (then open http://127.0.0.1:5000)")
