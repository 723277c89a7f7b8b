"""MLflow tracking: one run per stage, nested under one parent run per pipeline run.

The parent run id travels between stage processes (DVC and KFP run each stage as its own process) in the
environment variable SAFEALIGN_PARENT_RUN_ID. Every run records the git commit, the data version (the
md5 in data.dvc) and all params, so any number in MLflow can be traced back to code, data and config.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from safealign.config import Settings, settings_to_flat_dict
from safealign.errors import ServiceError

PARENT_ENV = "SAFEALIGN_PARENT_RUN_ID"


def tracking_uri(settings: Settings) -> str:
    """MLFLOW_TRACKING_URI wins over params, so a team points every stage at its server with one variable."""
    return os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking.tracking_uri


def git_commit(cwd: str | Path = ".") -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_version(dvc_file: str | Path = "data.dvc") -> str:
    """The md5 DVC recorded for data/; 'unversioned' when there is no data.dvc."""
    path = Path(dvc_file)
    if not path.exists():
        return "unversioned"
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    outs = doc.get("outs") or [{}]
    return str(outs[0].get("md5", "unversioned"))


def _ensure_experiment(settings: Settings) -> str:
    import mlflow

    name = settings.tracking.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = settings.tracking.artifact_location
    uri = tracking_uri(settings)
    artifact_location = None
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        artifact_location = Path(location).resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=artifact_location)


def configure(settings: Settings) -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; returns its id.

    Raises ServiceError with the URI when the store cannot be reached, instead of a long stack trace.
    """
    import mlflow

    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = _ensure_experiment(settings)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for an unreachable store
        raise ServiceError(f"MLflow tracking store {uri} is not reachable: {exc}") from exc
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def common_tags(settings: Settings) -> dict[str, str]:
    return {
        "safealign.git_commit": git_commit(),
        "safealign.data_version": data_version(),
        "safealign.aspects": ",".join(settings.aspect_names),
    }


@contextlib.contextmanager
def stage_run(settings: Settings, stage: str) -> Iterator[Any]:
    """Start the MLflow run of one stage, a child of the pipeline's parent run when there is one."""
    import mlflow

    configure(settings)
    parent = os.environ.get(PARENT_ENV)
    tags = {**common_tags(settings), "safealign.stage": stage}
    if parent:
        tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        flat = settings_to_flat_dict(settings)
        # MLflow params are strings of at most 6000 characters; log in batches of 100.
        items = [(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]))
        yield run


def start_parent_run(settings: Settings, name: str = "pipeline") -> str:
    """Create the parent run of a pipeline run and return its id (left open for the stages to nest in)."""
    import mlflow

    configure(settings)
    client = mlflow.MlflowClient()
    experiment_id = configure(settings)
    run = client.create_run(
        experiment_id, run_name=name, tags={**common_tags(settings), "safealign.stage": "pipeline"}
    )
    return run.info.run_id
