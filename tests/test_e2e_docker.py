"""The whole pipeline in containers: kfp.local.DockerRunner runs every step in the project image.

The same pipeline file as tests/test_pipeline_local.py, but each step is a `docker run` of
``pipeline.image`` (built by `make image`) with host networking, as its non-root user, reading and
writing only the mounted pipeline root: the data, the model cache and the SQLite MLflow store live there.
When the team stack (``safealign stack up``) is healthy, the steps track to its MLflow server on
127.0.0.1 instead. Two runs on tiny models: the calibration gate refuses (GRPO, evaluation and promotion
skipped), then passes (all seven steps, a registered candidate).

Docker: the daemon is started here when none runs (scripts/dockerd.sh: no bridge network, no iptables)
and stopped afterwards if this test started it. Without Docker or the image the test is skipped, unless
SAFEALIGN_E2E_REQUIRED=1 (CI sets it: .ci/run), where that is a failure.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from safealign.config import load_settings

from helpers.data import small_data
from helpers.tiny import MODELS, RELAXED_GATES, SMALL_RUN, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = load_settings(ROOT / "params.yaml")
IMAGE_UID = 10001  # the Dockerfile's USER
# Its own MLflow experiment, so a shared team server's earlier runs never count here.
EXPERIMENT = f"e2e-{uuid.uuid4().hex[:8]}"

pytestmark = [pytest.mark.pipeline, pytest.mark.e2e]


def _tracking(work: Path) -> tuple[str, dict[str, str], list[str]]:
    """(tracking URI, container environment, overrides): the team stack when it is up, else SQLite in
    the mounted pipeline root."""
    try:
        from safealign.team.stack import Stack
    except ImportError:
        Stack = None  # noqa: N806 - the team stack is optional
    if Stack is not None:
        stack = Stack(ROOT / ".stack")
        if stack.healthy():
            uri, env = stack.tracking_uri, stack.env  # properties (or methods, in older versions)
            return (uri() if callable(uri) else uri), dict(env() if callable(env) else env), []
    return f"sqlite:///{work / 'mlflow.db'}", {}, [f"tracking.artifact_location={work / 'mlartifacts'}"]


@pytest.fixture(scope="module")
def work(docker_image, tmp_path_factory) -> Path:
    """The pipeline root the containers mount (same path inside): data built here, writable by the
    image's user."""
    root = tmp_path_factory.mktemp("e2e")
    small_data(root)
    root.chmod(0o777)
    return root


def _run(work: Path, overrides: list[str], data_version: str = ""):
    from kfp import local

    from safealign.kfp.client import load_pipeline

    uri, env, tracking_overrides = _tracking(work)
    local.init(
        runner=local.DockerRunner(network_mode="host", environment={"OMP_NUM_THREADS": "2", **env}),
        pipeline_root=str(work),
        enable_caching=False,
        raise_on_error=True,
    )
    pipeline = load_pipeline()
    started = time.monotonic()
    result = pipeline(
        data_version=data_version,
        data_dir=str(work / "data"),
        overrides=[
            *tiny_overrides(*MODELS), *tracking_overrides, f"tracking.experiment={EXPERIMENT}", *overrides
        ],
        tracking_uri=uri,
        cache_dir=str(work / "model-cache"),
    )
    print(f"e2e run ({'gate fails' if 'calibrate.r2_threshold=1.0' in overrides else 'full'}): "
          f"{time.monotonic() - started:.0f} s, tracking {uri}")
    return result, uri


def _latest_run(work: Path) -> Path:
    return max(work.glob("align-*"), key=lambda p: p.stat().st_mtime)


def _mlflow_runs(uri: str) -> list:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")


def test_pipeline_in_containers_gate_skip_then_full(work):
    import mlflow

    # 1. The gate refuses (R² can never be strictly above 1): the run succeeds with output False.
    result, uri = _run(work, ["calibrate.r2_threshold=1.0"])
    assert result.output is False
    run = _latest_run(work)
    assert sorted(p.name for p in run.iterdir()) == ["calibrate-op", "data-version-op", "train-reward-op",
                                                     "validate-op"]
    # Written inside the containers, as the image's non-root user (SubprocessRunner would write as us).
    assert (run / "train-reward-op" / "reward_model").stat().st_uid == IMAGE_UID
    assert (run / "train-reward-op" / "reward_model" / "reward_config.json").exists()
    assert "Calibration gate: FAILED" in (run / "calibrate-op" / "report").read_text()
    executor = json.loads((run / "data-version-op" / "executor_output.json").read_text())
    assert executor["parameterValues"]["Output"].startswith("sha256:")  # hashed the mounted data
    gate_key = {r.data.tags["safealign.pipeline_key"] for r in _mlflow_runs(uri)
                if "safealign.pipeline_key" in r.data.tags}
    assert len(gate_key) >= 1

    # 2. The gate passes: GRPO, evaluation and promotion run in their containers too.
    result, uri = _run(work, tiny_overrides(*RELAXED_GATES, *SMALL_RUN), data_version="e2e-v1")
    assert result.output is True
    run = _latest_run(work)
    assert {"grpo-op", "evaluate-op", "promote-op"} <= {p.name for p in run.iterdir()}
    adapter = run / "grpo-op" / "adapter"
    assert (adapter / "adapter_config.json").exists() and adapter.stat().st_uid == IMAGE_UID
    assert json.loads((run / "evaluate-op" / "stage_metrics" / "evaluation.json").read_text())
    assert (run / "promote-op" / "decision").read_text().startswith("# Promotion: ")

    # MLflow (SQLite in the mount, or the team server): the full run's parent, a child per stage, and
    # the candidate registered with alias 'challenger'.
    runs = _mlflow_runs(uri)
    parents = [r for r in runs if "safealign.pipeline_key" in r.data.tags
               and r.data.tags["safealign.pipeline_key"] not in gate_key]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.data.tags.get("safealign.stage") for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert {"validate", "train_reward", "calibrate", "grpo", "evaluate", "promote"} <= children
    client = mlflow.MlflowClient()
    challenger = client.get_model_version_by_alias(SETTINGS.promote.policy_model_name, "challenger")
    # (on a shared server an identical adapter from an earlier run is reused: content-hash dedup)
    assert challenger.version and challenger.run_id
