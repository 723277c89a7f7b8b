"""The whole KFP pipeline run locally with kfp.local.SubprocessRunner on tiny models.

Each step runs as its own process, exactly the component code that runs in the cluster (minus the
container), against a real SQLite MLflow store. The data is built from the installed packages and
sub-sampled so a run takes about a minute on this 2-core machine. Calibration thresholds are relaxed
ONLY here (a 2-layer random encoder cannot clear the real bar) or raised to make the gate fail.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from safealign.config import load_settings

from helpers.data import small_data
from helpers.tiny import MODELS, RELAXED_GATES, SMALL_RUN, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]

TINY = tiny_overrides(*MODELS)
# A 2-layer random encoder cannot clear the real calibration bar: relaxed for the full runs only.
RELAXED_FOR_TINY_MODEL_ONLY = tiny_overrides(*RELAXED_GATES)
SMALL = tiny_overrides(*SMALL_RUN)

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return small_data(tmp_path_factory.mktemp("data"))


def _run(
    tmp: Path,
    data_dir: Path,
    overrides: list[str],
    data_version: str = "",
    caching: bool = False,
    raise_on_error: bool = True,
):
    from kfp import local

    from safealign.kfp.client import load_pipeline

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp / "root"),
        enable_caching=caching,
        cache_root=str(tmp / "kfp-cache"),
        raise_on_error=raise_on_error,
    )
    pipeline = load_pipeline()
    return pipeline(
        data_version=data_version,
        data_dir=str(data_dir),
        overrides=[*TINY, f"tracking.artifact_location={tmp / 'mlartifacts'}", *overrides],
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        cache_dir=str(tmp / "model-cache"),
    )


def _latest_run(tmp: Path) -> Path:
    return max((tmp / "root").glob("align-*"), key=lambda p: p.stat().st_mtime)


def _executor_output(run: Path, task: str) -> dict:
    return json.loads((run / task / "executor_output.json").read_text())


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    # The steps run `python3` from PATH: make it this interpreter; keep them on few threads, offline.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SAFEALIGN_PARENT_RUN_ID", raising=False)


def test_failing_gate_skips_grpo_and_promote_and_cache_follows_data(tmp_path, data_dir, caplog):
    caplog.set_level(logging.INFO)
    # R² can never be strictly above 1: the gate must say no, and the pipeline must still succeed.
    gate_fails = ["calibrate.r2_threshold=1.0"]
    result = _run(tmp_path, data_dir, gate_fails, caching=True)
    assert result.output is False

    run = _latest_run(tmp_path)
    assert sorted(p.name for p in run.iterdir()) == [
        "calibrate-op",
        "data-version-op",
        "train-reward-op",
        "validate-op",
    ]
    assert _executor_output(run, "calibrate-op")["parameterValues"]["Output"] is False
    report = (run / "calibrate-op" / "report").read_text()
    assert "Calibration gate: FAILED" in report and "refused by the calibration gate" in report
    assert "data:image/png;base64," in report  # the reliability plots, inline
    metrics = json.loads((run / "calibrate-op" / "metrics").read_text())
    assert metrics["gate_passed"] == 0.0 and "aspects.safety.r2" in metrics
    assert (run / "train-reward-op" / "reward_model" / "reward_config.json").exists()
    assert (run / "validate-op" / "dataset" / "splits" / "labelled_heldout.jsonl").exists()
    version = _executor_output(run, "data-version-op")["parameterValues"]["Output"]
    assert version.startswith("sha256:")  # resolved from the data: nothing was passed

    # MLflow: one parent run, closed by the refusing gate, with the three stage runs nested in it.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    (parent,) = [r for r in runs if "safealign.pipeline_key" in r.data.tags]
    assert parent.info.status == "FINISHED"
    stages = {
        r.data.tags.get("safealign.stage")
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert stages == {"validate", "train_reward", "calibrate"}

    # The same data again: every cached step is served from the cache, nothing retrains.
    caplog.clear()
    _run(tmp_path, data_dir, gate_fails, caching=True)
    hits = {
        t for t in ("validate-op", "train-reward-op", "calibrate-op") if f"Task {t} cache hit" in caplog.text
    }
    assert hits == {"validate-op", "train-reward-op", "calibrate-op"}, caplog.text[-3000:]

    # Changed data: a new version, so validate runs again instead of hitting the cache. (The changed row
    # is invalid, so the run stops at validate: that is enough to show the cache miss, and is quick.)
    caplog.clear()
    with (data_dir / "labelled.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"id": "broken"}\n')
    try:
        _run(tmp_path, data_dir, gate_fails, caching=True, raise_on_error=False)
    finally:
        lines = (data_dir / "labelled.jsonl").read_text(encoding="utf-8").splitlines()
        (data_dir / "labelled.jsonl").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    assert "Task validate-op cache hit" not in caplog.text
    assert "validate-op" in caplog.text  # it ran (and failed on the broken row) instead
    new_version = _executor_output(_latest_run(tmp_path), "data-version-op")["parameterValues"]["Output"]
    assert new_version != version


def test_full_pipeline_on_tiny_models(tmp_path, data_dir):
    pytest.importorskip("safealign.evaluation.evaluate", reason="evaluate stage not written yet")
    pytest.importorskip("safealign.registry.promotion", reason="promote stage not written yet")
    import mlflow

    result = _run(tmp_path, data_dir, [*RELAXED_FOR_TINY_MODEL_ONLY, *SMALL], data_version="test-v1")
    assert result.output is True

    run = _latest_run(tmp_path)
    assert {"grpo-op", "evaluate-op", "promote-op"} <= {p.name for p in run.iterdir()}
    adapter = run / "grpo-op" / "adapter"
    assert (adapter / "adapter_config.json").exists()
    assert json.loads((run / "grpo-op" / "stage_metrics" / "grpo.json").read_text())
    rounds = json.loads((run / "grpo-op" / "refresh" / "rounds.json").read_text())  # rounds 1: no refresh
    assert rounds["rounds"] == 1 and not (run / "grpo-op" / "refresh" / "refresh").exists()
    evaluation = json.loads((run / "evaluate-op" / "stage_metrics" / "evaluation.json").read_text())
    assert evaluation["detector"]["heldout"]["n"] > 150 and len(evaluation["robustness"]["attacks"]) == 10
    assert (run / "evaluate-op" / "report").read_text().strip()
    decision = (run / "promote-op" / "decision").read_text()
    assert decision.startswith("# Promotion: ") and "test-v1" in decision
    promoted = _executor_output(run, "promote-op")["parameterValues"]["promoted"]

    # One parent MLflow run with a child per stage, and the candidate in the registry.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if "safealign.pipeline_key" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {
        r.data.tags.get("safealign.stage")
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    assert {"validate", "train_reward", "calibrate", "grpo", "promote"} <= children
    client = mlflow.MlflowClient()
    settings = load_settings(ROOT / "params.yaml")
    challenger = client.get_model_version_by_alias(settings.promote.policy_model_name, "challenger")
    assert challenger.version
    if promoted:
        assert client.get_model_version_by_alias(settings.promote.policy_model_name, "champion")
