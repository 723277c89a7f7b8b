"""MLflow tracking: one run per stage, nested under one parent run per pipeline run.

The parent run id travels between stage processes (DVC and KFP run each stage as its own process) in the
environment variable SAFEALIGN_PARENT_RUN_ID. Every run records the git commit, the data version (the
md5 in data.dvc) and all params, so any number in MLflow can be traced back to code, data and config.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from safealign.common.nested import flatten
from safealign.config import Settings, settings_to_flat_dict
from safealign.errors import ServiceError

PARENT_ENV = "SAFEALIGN_PARENT_RUN_ID"

log = logging.getLogger(__name__)


def tracking_uri(settings: Settings) -> str:
    """MLFLOW_TRACKING_URI wins over params, so a team points every stage at its server with one variable."""
    return os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking.tracking_uri


def set_mlflow_uri(uri: str) -> None:
    """``mlflow.set_tracking_uri`` without its side effect of exporting MLFLOW_TRACKING_URI.

    MLflow writes the URI into the environment for subprocesses; safealign reads that variable as the
    user's choice, so leaving MLflow's copy there would pin every later stage in the process to it.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def resolved_tracking_uri(settings: Settings) -> str:
    """The tracking URI with a relative SQLite path made absolute.

    MLflow caches one store per URI string for the life of the process, so ``sqlite:///mlflow.db`` would keep
    pointing at the file in whatever directory was current when it was first used.
    """
    uri = tracking_uri(settings)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


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


HTTP_ENV = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
)


def bound_http_retries(settings: Settings) -> None:
    """Short timeouts and few retries for the MLflow client, unless the environment already sets them.

    MLflow's defaults (120 s timeout, 7 retries with exponential backoff) keep a client retrying for minutes
    when a server dies mid-stage; a promotion must fail in seconds and leave its clean-up to the next run.
    """
    defaults = (settings.tracking.http_timeout_s, settings.tracking.http_max_retries, 1)
    for key, value in zip(HTTP_ENV, defaults, strict=True):
        os.environ.setdefault(key, str(value))


def configure(settings: Settings) -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; returns its id.

    Raises ServiceError with the URI when the store cannot be reached, instead of a long stack trace.
    """
    import mlflow

    uri = resolved_tracking_uri(settings)
    bound_http_retries(settings)
    check_reachable(uri)
    set_mlflow_uri(uri)
    try:
        experiment_id = _ensure_experiment(settings)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for an unreachable store
        raise ServiceError(f"MLflow tracking store {uri} is not reachable: {exc}") from exc
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with the URI when an HTTP tracking server is down.

    MLflow's own client retries with exponential backoff for minutes before giving up; a pipeline (and a
    promotion that must not register half its models) should learn in seconds that the server is gone.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - the configured URI
            if resp.status != 200:
                raise ServiceError(f"MLflow tracking server {uri} is unhealthy: GET /health -> {resp.status}")
    except urllib.error.HTTPError as exc:
        raise ServiceError(f"MLflow tracking server {uri} is unhealthy: GET /health -> {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceError(f"MLflow tracking server {uri} is not reachable: {exc}") from exc


def common_tags(settings: Settings) -> dict[str, str]:
    return {
        "safealign.git_commit": git_commit(),
        "safealign.data_version": data_version(),
        "safealign.aspects": ",".join(settings.aspect_names),
    }


STAGE_OWNER_TAG = "safealign.stage_owner"


@contextlib.contextmanager
def stage_run(settings: Settings, stage: str, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """Start the MLflow run of one stage, a child of the pipeline's parent run when there is one.

    A stage that fails closes its run as FAILED; when that is impossible too (the tracking server died
    mid-stage) the failure to close is logged in one line and the stage's own error is what is raised,
    not a second traceback. The run carries ``safealign.stage_owner`` (host:pid), so ``promote --repair``
    closes as FAILED a stage run whose process is gone from this host.
    """
    import mlflow

    configure(settings)
    parent = os.environ.get(PARENT_ENV)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    tags = {**common_tags(settings), "safealign.stage": stage, STAGE_OWNER_TAG: owner, **(tags or {})}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = mlflow.start_run(run_name=stage, tags=tags)
    try:
        flat = settings_to_flat_dict(settings)
        # MLflow params are strings of at most 6000 characters; log in batches of 100.
        items = [(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]))
        yield run
    except BaseException:
        try:
            mlflow.end_run(status="FAILED")
        except Exception as exc:  # noqa: BLE001 - the stage's own error is the one to report
            log.warning("could not close MLflow run %s as FAILED: %s", run.info.run_id, str(exc)[:200])
            _forget_active_run()
        raise
    mlflow.end_run(status="FINISHED")


def _forget_active_run() -> None:
    """Drop the run MLflow still holds as active after ending it failed (the server was gone)."""
    import mlflow

    try:
        while mlflow.active_run() is not None:
            mlflow.tracking.fluent._active_run_stack.get().pop()
    except Exception:  # noqa: BLE001 - private API: at worst the next start_run nests under it
        pass


def fail_dead_stage_runs(client: Any, experiment_id: str) -> list[str]:
    """Close as FAILED the stage runs left RUNNING by a process that is gone from this host.

    A stage killed (SIGKILL, OOM, a dead database under it) never ends its run. Only runs whose owner ran
    on this host are judged (its pid no longer exists); another host's runs are left alone.
    """
    failed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        owner = run.data.tags.get(STAGE_OWNER_TAG, "")
        host, _, pid = owner.rpartition(":")
        if not owner or host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        client.set_terminated(run.info.run_id, status="FAILED")
        failed.append(run.info.run_id)
    return failed


def _log_params(client: Any, run_id: str, settings: Settings) -> None:
    from mlflow.entities import Param

    flat = settings_to_flat_dict(settings)
    params = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])


def start_parent_run(settings: Settings, name: str = "pipeline") -> str:
    """Create the parent run of a pipeline run and return its id (left open for the stages to nest in).

    The caller exports the id as SAFEALIGN_PARENT_RUN_ID so every stage process nests its run under it,
    and closes it with :func:`end_parent_run` when the pipeline ends (FINISHED or FAILED). The run carries
    ``safealign.stage_owner`` (host:pid) like a stage's: a pipeline process that died (SIGKILL, OOM, a
    closed terminal) or could not reach the server to close its run left it RUNNING forever (issue 31);
    :func:`close_dead_runs` (the next ``safealign run`` on this host, ``promote --repair``) closes it.
    """
    import mlflow

    experiment_id = configure(settings)
    client = mlflow.MlflowClient()
    owner = f"{socket.gethostname()}:{os.getpid()}"
    tags = {**common_tags(settings), "safealign.stage": "pipeline", STAGE_OWNER_TAG: owner}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    try:
        _log_params(client, run.info.run_id, settings)
    except BaseException:
        with contextlib.suppress(Exception):  # the parameters' error is the one to report
            client.set_terminated(run.info.run_id, status="FAILED")
        raise
    return run.info.run_id


def close_dead_runs(settings: Settings) -> list[str]:
    """Close as FAILED the runs (pipeline parents and stages) of this experiment that a process now gone
    from this host left RUNNING; returns their ids. A pipeline run calls it before opening its own."""
    import mlflow

    experiment_id = configure(settings)
    return fail_dead_stage_runs(mlflow.MlflowClient(), experiment_id)


def end_parent_run(settings: Settings, run_id: str | None = None, status: str = "FINISHED") -> str:
    """Close the pipeline's parent run (default: the one in SAFEALIGN_PARENT_RUN_ID) with ``status``.

    ``status`` is an MLflow run status: FINISHED, FAILED or KILLED. Returns the run id.
    """
    import mlflow

    run_id = run_id or os.environ.get(PARENT_ENV)
    if not run_id:
        raise ServiceError(f"no parent run to end: pass a run id or set {PARENT_ENV}")
    status = status.upper()
    if status not in {"FINISHED", "FAILED", "KILLED"}:
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
    configure(settings)
    mlflow.MlflowClient().set_terminated(run_id, status=status)
    return run_id


def child_runs(settings: Settings, parent_run_id: str) -> list[Any]:
    """The stage runs nested under one pipeline run, oldest first (for reports and tests)."""
    import mlflow

    experiment_id = configure(settings)
    return list(
        mlflow.MlflowClient().search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            order_by=["attributes.start_time ASC"],
        )
    )


def log_flat_metrics(metrics: dict[str, Any], prefix: str = "", step: int | None = None) -> dict[str, float]:
    """Log every finite number in a nested dict as an MLflow metric named by its dotted path.

    Lists of two numbers (intervals) become ``<key>.lo`` / ``<key>.hi``. Returns what was logged.
    """
    import math

    import mlflow

    leaves: dict[str, Any] = {}
    for key, value in flatten(metrics, prefix).items():
        if isinstance(value, list | tuple) and len(value) == 2:
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
                leaves.update({f"{key}.lo": value[0], f"{key}.hi": value[1]})
        else:
            leaves[key] = value
    flat = {
        k: float(v)
        for k, v in leaves.items()
        if isinstance(v, bool) or (isinstance(v, int | float) and math.isfinite(float(v)))
    }
    # MLflow metric names allow letters, digits, _ - . / and spaces.
    clean = {"".join(c if c.isalnum() or c in "_-./ " else "_" for c in k): v for k, v in flat.items()}
    items = list(clean.items())
    for i in range(0, len(items), 500):
        mlflow.log_metrics(dict(items[i : i + 500]), step=step)
    return clean


def _main(argv: list[str] | None = None) -> int:
    """``python -m safealign.tracking start|end`` for shell scripts and CI jobs (prints the parent run id)."""
    import argparse
    import sys

    from safealign.config import load_settings
    from safealign.errors import SafealignError

    parser = argparse.ArgumentParser(prog="python -m safealign.tracking")
    parser.add_argument("--params", default=None)
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="create the pipeline's parent run and print its id")
    start.add_argument("--name", default="pipeline")
    end = sub.add_parser("end", help=f"end the parent run (default: ${PARENT_ENV})")
    end.add_argument("--run-id", default=None)
    end.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED"])
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.params)
        if args.action == "start":
            print(start_parent_run(settings, args.name))
        else:
            print(end_parent_run(settings, args.run_id, args.status))
        return 0
    except SafealignError as exc:
        print(f"safealign.tracking: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(_main())
