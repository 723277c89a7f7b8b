"""Compile, submit and schedule the KFP pipeline (``safealign pipeline compile|submit|schedule``).

Submit and schedule go through ``kfp.Client`` and the KFP v2beta1 REST API, like ``kfp run create``. Every
setting travels as pipeline parameters: ``params`` (the loaded settings, ``--set`` overrides applied, as
JSON), ``data_version`` and ``tracking_uri``, so a run on the cluster uses exactly the config it was
submitted with. A recurring run is created with max concurrency 1 (two retrainings never race for the
registry) and no catch-up (a scheduler that was down does not replay every missed slot).

Images are resolved here, at submit time (safealign.kfp_deploy): the package's steps are pointed at
``--image`` or ``pipeline.image`` before it is uploaded. Multi-user Kubeflow: ``namespace`` is the profile
namespace the experiment and run belong to, and the token (a bearer token, e.g. a ServiceAccount token)
authenticates the caller; a 401 or 403 from the API becomes a ServiceError that says which.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safealign.config import Settings
from safealign.errors import ConfigError, ServiceError
from safealign.kfp_deploy import (
    check_gpu_mode,
    default_package,
    images_for,
    read_package,
    set_images,
    write_package,
)

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_SOURCE = ROOT / "pipelines" / "align.py"
# The bearer token for a multi-user Kubeflow (read from the environment when --token-file is not given).
TOKEN_ENV = "SAFEALIGN_KFP_TOKEN"

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


def load_pipeline(
    source: str | Path = PIPELINE_SOURCE, settings: Settings | None = None, image: str | None = None,
    cuda_image: str | None = None,
) -> Any:
    """Import pipelines/align.py by path and return its pipeline, built for ``settings`` when given
    (the module's own is built from params.yaml)."""
    spec = importlib.util.spec_from_file_location("safealign_align_pipeline", source)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import the pipeline from {source}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if settings is None and image is None and cuda_image is None:
        return module.align_pipeline
    return module.build_pipeline(settings or module.SETTINGS, image=image, cuda_image=cuda_image)


def compile_pipeline(
    output: str | Path = "pipelines/align.yaml", settings: Settings | None = None, image: str | None = None,
    cuda_image: str | None = None,
) -> Path:
    """Compile the pipeline to ``output`` (the committed pipelines/align.yaml by default)."""
    from kfp import compiler

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(load_pipeline(PIPELINE_SOURCE, settings, image, cuda_image), str(out))
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


def read_token(token_file: str | Path | None = None) -> str | None:
    """The bearer token: the file's content when given, else $SAFEALIGN_KFP_TOKEN, else none."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise ConfigError(f"token file not found: {path}")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ConfigError(f"token file is empty: {path}")
        return token
    return os.environ.get(TOKEN_ENV) or None


def _client(settings: Settings, host: str | None, namespace: str | None, token: str | None) -> Any:
    import kfp

    url = host or settings.pipeline.host
    try:
        return kfp.Client(host=url, namespace=namespace or "kubeflow", existing_token=token)
    except Exception as exc:  # noqa: BLE001 - urllib3/kfp_server_api raise many types when unreachable
        raise _service_error(exc, url, namespace, "reach") from exc


def _service_error(exc: Exception, url: str, namespace: str | None, action: str) -> ServiceError:
    """A clear message for the answers a platform user gets: no or bad credentials, no access, down."""
    status = getattr(exc, "status", None)
    where = f"namespace {namespace!r}" if namespace else "the default namespace"
    if status == 401:
        return ServiceError(
            f"KFP API at {url} answered 401 Unauthorized: no valid credentials. Pass a bearer token with "
            f"--token-file FILE or ${TOKEN_ENV} (e.g. `kubectl create token SERVICEACCOUNT -n NAMESPACE`)."
        )
    if status == 403:
        return ServiceError(
            f"KFP API at {url} answered 403 Forbidden: the token is valid but may not {action} in {where}. "
            "Check --namespace (your Kubeflow profile) and the token's RoleBinding in that namespace."
        )
    if status is not None:
        return ServiceError(f"KFP API at {url} refused to {action} ({status}): {getattr(exc, 'body', exc)}")
    return ServiceError(f"KFP API at {url} is not reachable: {exc}")


@contextlib.contextmanager
def resolved_package(
    settings: Settings, package: str | Path | None, image: str | None, cuda_image: str | None
) -> Iterator[str]:
    """The package to upload, its steps pointed at the images resolved now (a temporary copy)."""
    source = Path(package or default_package(settings.pipeline))
    docs = read_package(source)
    check_gpu_mode(docs, settings.pipeline, source)
    set_images(docs, *images_for(settings.pipeline, image, cuda_image))
    with tempfile.TemporaryDirectory(prefix="safealign-kfp-") as tmp:
        yield str(write_package(docs, Path(tmp) / source.name))


def submit_run(
    settings: Settings, host: str | None = None, package: str | Path | None = None,
    data_version: str | None = None, image: str | None = None, cuda_image: str | None = None,
    namespace: str | None = None, token: str | None = None,
) -> dict[str, Any]:
    """Create one run in the experiment ``pipeline.experiment`` (created if missing), like `kfp run create`.

    The data version defaults to the md5 in data.dvc; without data.dvc it is left empty and the pipeline
    hashes the data it reads. The package defaults to the committed file matching ``pipeline.gpu``.
    """
    from safealign.tracking import data_version as dvc_version

    namespace = namespace or settings.pipeline.namespace
    url = host or settings.pipeline.host
    with resolved_package(settings, package, image, cuda_image) as pkg:
        version = data_version if data_version is not None else dvc_version()
        if version == "unversioned":
            version = ""
        client = _client(settings, host, namespace, token)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # kfp prints UI links; stdout is the CLI's JSON
                result = client.create_run_from_pipeline_package(
                    pkg,
                    arguments=run_arguments(settings, version),
                    run_name=f"align-{version[:12] or 'latest'}",
                    experiment_name=settings.pipeline.experiment,
                    namespace=namespace,
                )
        except Exception as exc:  # noqa: BLE001
            raise _service_error(exc, url, namespace, "create runs") from exc
    return {
        "run_id": result.run_id, "experiment": settings.pipeline.experiment, "data_version": version,
        "namespace": namespace, "image": images_for(settings.pipeline, image, cuda_image)[0],
    }


def schedule_run(
    settings: Settings, cron: str, host: str | None = None, package: str | Path | None = None,
    data_version: str | None = None, image: str | None = None, cuda_image: str | None = None,
    namespace: str | None = None, token: str | None = None,
) -> dict[str, Any]:
    """Create a recurring run: ``cron``, max concurrency 1, no catch-up.

    A recurring run's parameters are frozen when it is created, so unless a version is given it passes
    an empty data version: every scheduled run then hashes the data it finds, and KFP's cache retrains
    only when that hash (or the params) changed.
    """
    schedule = normalize_cron(cron)
    version = data_version or ""
    namespace = namespace or settings.pipeline.namespace
    url = host or settings.pipeline.host
    with resolved_package(settings, package, image, cuda_image) as pkg:
        client = _client(settings, host, namespace, token)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # kfp prints UI links; stdout is the CLI's JSON
                experiment = client.create_experiment(settings.pipeline.experiment, namespace=namespace)
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
            raise _service_error(exc, url, namespace, "create recurring runs") from exc
    return {
        "recurring_run_id": recurring.recurring_run_id,
        "experiment_id": experiment.experiment_id,
        "cron": schedule,
        "data_version": version,
        "namespace": namespace,
    }
