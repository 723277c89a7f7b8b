"""MLflow tracking against a real SQLite store: parent/child runs, provenance tags, params, metrics."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from safealign.config import load_settings
from safealign.errors import ServiceError
from safealign.tracking import (
    PARENT_ENV,
    check_reachable,
    child_runs,
    data_version,
    end_parent_run,
    log_flat_metrics,
    stage_run,
    start_parent_run,
    tracking_uri,
)


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    empty = tmp_path / "defaults.yaml"
    empty.write_text("{}\n")
    return load_settings(
        empty,
        [
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
            "tracking.experiment=test-tracking",
        ],
    )


def test_env_var_switches_the_uri(settings, monkeypatch):
    assert tracking_uri(settings).startswith("sqlite:///")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(settings) == "http://127.0.0.1:5999"


def test_parent_run_with_one_child_per_stage(settings, monkeypatch, tmp_path):
    parent = start_parent_run(settings)
    monkeypatch.setenv(PARENT_ENV, parent)
    for stage, value in (("evaluate", 0.5), ("promote", 1.0)):
        with stage_run(settings, stage):
            log_flat_metrics({"sets": {"adv": {"score": value, "ci": [0.1, 0.9], "label": "x"}}})
    end_parent_run(settings, status="FINISHED")

    client = mlflow.MlflowClient()
    assert client.get_run(parent).info.status == "FINISHED"
    children = child_runs(settings, parent)
    assert [c.data.tags["safealign.stage"] for c in children] == ["evaluate", "promote"]
    for child in children:
        tags, params = child.data.tags, child.data.params
        assert tags["mlflow.parentRunId"] == parent
        assert tags["safealign.git_commit"] and tags["safealign.data_version"] == data_version()
        assert params["grpo.learning_rate"] == str(settings.grpo.learning_rate)
        assert params["promote.max_aspect_drop"] == str(settings.promote.max_aspect_drop)
        assert child.info.status == "FINISHED"
    metrics = children[0].data.metrics
    assert (
        metrics["sets.adv.score"] == 0.5
        and metrics["sets.adv.ci.lo"] == 0.1
        and metrics["sets.adv.ci.hi"] == 0.9
    )
    # artifacts go to the local folder configured in params, not next to the process
    assert children[0].info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_failed_stage_marks_its_run_failed(settings):
    with pytest.raises(RuntimeError), stage_run(settings, "grpo"):
        raise RuntimeError("boom")
    run = mlflow.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("test-tracking").experiment_id], "tags.`safealign.stage` = 'grpo'"
    )[0]
    assert run.info.status == "FAILED"


def test_data_version_reads_the_md5_in_data_dvc(tmp_path):
    dvc = tmp_path / "data.dvc"
    dvc.write_text(yaml.safe_dump({"outs": [{"md5": "abc123.dir", "path": "data"}]}))
    assert data_version(dvc) == "abc123.dir"
    assert data_version(tmp_path / "missing.dvc") == "unversioned"


def test_unreachable_server_fails_fast_with_the_uri():
    with pytest.raises(ServiceError, match=r"http://127\.0\.0\.1:9/"):
        check_reachable("http://127.0.0.1:9/", timeout_s=2)


def test_runner_script_entry_point_starts_and_ends_the_parent(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "tracking": {
                    "tracking_uri": f"sqlite:///{tmp_path / 'm.db'}",
                    "artifact_location": str(tmp_path / "art"),
                    "experiment": "runner",
                }
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", PARENT_ENV)}
    cmd = [sys.executable, "-m", "safealign.tracking", "--params", str(params)]
    run_id = subprocess.run(
        cmd + ["start"], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    assert len(run_id) == 32
    subprocess.run(
        cmd + ["end", "--status", "FAILED"], check=True, env={**env, PARENT_ENV: run_id}, capture_output=True
    )
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FAILED"
    assert Path(tmp_path / "m.db").exists()


def test_relative_sqlite_uri_follows_the_working_directory(tmp_path, monkeypatch):
    """MLflow caches stores per URI string; a relative sqlite URI must not stick to the first directory."""
    from safealign.config import Settings
    from safealign.tracking import stage_run

    for name in ("a", "b"):
        work = tmp_path / name
        work.mkdir()
        monkeypatch.chdir(work)
        with stage_run(Settings(), "validate"):
            pass
        assert (work / "mlflow.db").exists(), f"run of {name} went elsewhere"
