"""Compile, submit and schedule the KFP pipeline (``safealign pipeline compile|submit|schedule``).

Submit and schedule go through ``kfp.Client`` and the KFP v2beta1 REST API, like ``kfp run create``. Every
setting travels as pipeline parameters: ``params`` (the loaded settings, ``--set`` overrides applied, as
JSON), ``data_version`` and ``tracking_uri``, so a run on the cluster uses exactly the config it was
submitted with. A recurring run is created with max concurrency 1 (two retrainings never race for the
registry) and no catch-up (a scheduler that was down does not replay every missed slot).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

from safealign.config import Settings
from safealign.errors import ConfigError, ServiceError

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_SOURCE = ROOT / "pipelines" / "align.py"

log = logging.getLogger(__name__)


def _drop_none(value: Any) -> Any:
    """KFP parameters cannot hold null; a missing key loads as the same default (None)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def params_json(settings: Settings) -> str:
    """The settings as the pipeline's ``params`` parameter: JSON, sorted keys (a stable compiled file)."""
    return json.dumps(_drop_none(settings.model_dump(mode="json")), sort_keys=True)


def load_pipeline(source: str | Path = PIPELINE_SOURCE) -> Any:
    """Import pipelines/align.py by path and return its pipeline object."""
    spec = importlib.util.spec_from_file_location("safealign_align_pipeline", source)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import the pipeline from {source}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.align_pipeline


def compile_pipeline(output: str | Path = "pipelines/align.yaml") -> Path:
    """Compile the pipeline to ``output`` (the committed pipelines/align.yaml by default)."""
    from kfp import compiler

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(load_pipeline(), str(out))
    return out


def normalize_cron(cron: str) -> str:
    """KFP schedules take 6-field cron (seconds first); a classic 5-field expression gets second 0."""
    fields = cron.split()
    if len(fields) == 5:
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise ConfigError(f"cron {cron!r}: expected 5 or 6 fields (KFP uses 'sec min hour dom month dow')")


def run_arguments(settings: Settings, data_version: str) -> dict[str, Any]:
    """The pipeline parameters of one run: the settings, the data version and where MLflow is."""
    from safealign.tracking import tracking_uri

    return {
        "params": params_json(settings),
        "data_version": data_version,
        "data_dir": settings.paths.data_dir,
        "tracking_uri": tracking_uri(settings),
    }


def _client(settings: Settings, host: str | None) -> Any:
    import kfp

    url = host or settings.pipeline.host
    try:
        return kfp.Client(host=url)
    except Exception as exc:  # noqa: BLE001 - urllib3/kfp_server_api raise many types when unreachable
        raise ServiceError(f"KFP API at {url} is not reachable: {exc}") from exc


def _package(package: str | Path) -> str:
    path = Path(package)
    if not path.is_file():
        raise ConfigError(f"compiled pipeline not found: {path} (run `safealign pipeline compile`)")
    return str(path)


def submit_run(
    settings: Settings, host: str | None = None, package: str | Path = "pipelines/align.yaml",
    data_version: str | None = None,
) -> dict[str, Any]:
    """Create one run in the experiment ``pipeline.experiment`` (created if missing), like `kfp run create`.

    The data version defaults to the md5 in data.dvc; without data.dvc it is left empty and the pipeline
    hashes the data it reads.
    """
    from safealign.tracking import data_version as dvc_version

    pkg = _package(package)
    version = data_version if data_version is not None else dvc_version()
    if version == "unversioned":
        version = ""
    client = _client(settings, host)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # kfp prints UI links; stdout is the CLI's JSON
            result = client.create_run_from_pipeline_package(
                pkg,
                arguments=run_arguments(settings, version),
                run_name=f"align-{version[:12] or 'latest'}",
                experiment_name=settings.pipeline.experiment,
            )
    except Exception as exc:  # noqa: BLE001
        raise ServiceError(f"KFP API refused the run: {exc}") from exc
    return {"run_id": result.run_id, "experiment": settings.pipeline.experiment, "data_version": version}


def schedule_run(
    settings: Settings, cron: str, host: str | None = None, package: str | Path = "pipelines/align.yaml",
    data_version: str | None = None,
) -> dict[str, Any]:
    """Create a recurring run: ``cron``, max concurrency 1, no catch-up.

    A recurring run's parameters are frozen when it is created, so unless a version is given it passes
    an empty data version: every scheduled run then hashes the data it finds, and KFP's cache retrains
    only when that hash (or the params) changed.
    """
    pkg = _package(package)
    schedule = normalize_cron(cron)
    version = data_version or ""
    client = _client(settings, host)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # kfp prints UI links; stdout is the CLI's JSON
            experiment = client.create_experiment(settings.pipeline.experiment)
            recurring = client.create_recurring_run(
                experiment_id=experiment.experiment_id,
                job_name=f"align-scheduled-{version[:12] or 'latest'}",
                description="scheduled safealign retraining (safealign pipeline schedule)",
                cron_expression=schedule,
                max_concurrency=1,
                no_catchup=True,
                params=run_arguments(settings, version),
                pipeline_package_path=pkg,
                enabled=True,
            )
    except Exception as exc:  # noqa: BLE001
        raise ServiceError(f"KFP API refused the recurring run: {exc}") from exc
    return {
        "recurring_run_id": recurring.recurring_run_id,
        "experiment_id": experiment.experiment_id,
        "cron": schedule,
        "data_version": version,
    }
