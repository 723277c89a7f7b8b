"""Compile, submit and schedule the KFP pipeline (``safealign pipeline compile|submit|schedule``).

Submit and schedule go through ``kfp.Client`` and the KFP v2beta1 REST API, like ``kfp run create``. Every
setting travels as pipeline parameters: ``params`` (the loaded settings, ``--set`` overrides applied, as
JSON), ``data_version`` and ``tracking_uri``, so a run on the cluster uses exactly the config it was
submitted with. A recurring run is created with max concurrency 1 (two retrainings never race for the
registry) and no catch-up (a scheduler that was down does not replay every missed slot).

Images are resolved here, at submit time (safealign.kfp.deploy): the steps' images are the ``image``
and ``cuda_image`` pipeline parameters, given ``--image`` or ``pipeline.image``; a reference a cluster
cannot pull (a bare ``safealign:0.1.0``) is refused, like a local tracking store or a missing DVC remote.
Multi-user Kubeflow: ``namespace`` is the profile namespace the experiment and run belong to, and the
token (a bearer token, e.g. a ServiceAccount token) authenticates the caller; a 401 or 403 from the API
becomes a ServiceError that says which.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from safealign.config import Settings
from safealign.errors import ConfigError, ServiceError
from safealign.kfp.deploy import (
    LOOPBACK,
    check_gpu_mode,
    check_image,
    default_package,
    images_for,
    params_json,
    read_package,
    root_parameters,
)

# The bearer token for a multi-user Kubeflow (read from the environment when --token-file is not given).
TOKEN_ENV = "SAFEALIGN_KFP_TOKEN"

log = logging.getLogger(__name__)


def load_pipeline(
    settings: Settings | None = None, image: str | None = None, cuda_image: str | None = None,
    cluster: bool = False,
) -> Any:
    """The pipeline of safealign.kfp.pipeline: its one-machine build for kfp.local (the module's own, from
    params.yaml, unless settings or images are given), or with ``cluster`` the build ``compile`` writes.

    Imported here, not at the top: the module builds both pipelines from params.yaml when imported, and
    ``safealign --help`` or a submit of a compiled file needs neither."""
    from safealign.kfp import pipeline as module

    if settings is None and image is None and cuda_image is None and not cluster:
        return module.local_pipeline
    return module.build_pipeline(
        settings or module.SETTINGS, image=image, cuda_image=cuda_image, cluster=cluster
    )


def compile_pipeline(
    output: str | Path = "pipelines/align.yaml", settings: Settings | None = None, image: str | None = None,
    cuda_image: str | None = None,
) -> Path:
    """Compile the cluster build of the pipeline to ``output`` (the committed pipelines/align.yaml by
    default): images as parameters, no parameter defaulting to this machine (safealign.kfp.pipeline)."""
    from kfp import compiler

    from safealign.common.atomic import atomic_path

    out = Path(output)
    if out.suffix not in (".yaml", ".yml", ".json"):  # KFP's own check, naming this path, not the temporary
        raise ValueError(f'The output path {out} should end with ".yaml".')
    pipeline = load_pipeline(settings, image, cuda_image, cluster=True)
    # KFP opens the path and streams into it: a failure or a kill part way would leave half a pipeline
    # where the previous one was (issue 32); a temporary file renamed at the end never does
    with atomic_path(out) as tmp:
        compiler.Compiler().compile(pipeline, str(tmp))
    return out


def normalize_cron(cron: str) -> str:
    """KFP schedules take 6-field cron (seconds first); a classic 5-field expression gets second 0."""
    fields = cron.split()
    if len(fields) == 5:
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise ConfigError(f"cron {cron!r}: expected 5 or 6 fields (KFP uses 'sec min hour dom month dow')")


PIPELINE_TRACKING_ENV = "SAFEALIGN_PIPELINE_TRACKING_URI"
_LOOPBACK = LOOPBACK


def cluster_tracking_uri(settings: Settings) -> str:
    """MLflow as the cluster's pods see it: pipeline.tracking_uri, else $SAFEALIGN_PIPELINE_TRACKING_URI,
    else the URI this machine uses ($MLFLOW_TRACKING_URI or tracking.tracking_uri).

    Refused (ConfigError) when it cannot be shared: every KFP step runs in its own pod, so a SQLite or file
    store becomes one throw-away database per pod (the promotion is lost), and 127.0.0.1 inside a pod is
    the pod itself.
    """
    from safealign.tracking import tracking_uri

    uri = settings.pipeline.tracking_uri or os.environ.get(PIPELINE_TRACKING_ENV) or tracking_uri(settings)
    parsed = urlparse(uri)
    fix = (
        f"set pipeline.tracking_uri (or ${PIPELINE_TRACKING_ENV}) to the cluster's MLflow server, e.g. "
        "http://safealign-mlflow.<namespace>.svc.cluster.local:5000 (docs/team.md)"
    )
    if parsed.scheme not in ("http", "https"):
        raise ConfigError(
            f"tracking URI {uri!r} is a local store: every pipeline step runs in its own pod and would write "
            f"a throw-away database, so runs and promotions would be lost; {fix}"
        )
    if (parsed.hostname or "") in _LOOPBACK:
        raise ConfigError(
            f"tracking URI {uri!r} names this machine: inside a pod {parsed.hostname} is the pod itself; "
            f"{fix}"
        )
    return uri


def cluster_dvc_remote(settings: Settings) -> tuple[str, str]:
    """The DVC remote (URL, S3 endpoint) the data-version step pulls from; refused when there is none.

    Without a remote the steps would look for ``paths.data_dir`` inside the image, which is a folder of the
    machine that submitted the run, not of the cluster.
    """
    from safealign.team.dvc_remote import ENDPOINT_ENV, URL_ENV

    url = settings.pipeline.dvc_remote_url or os.environ.get(URL_ENV, "")
    endpoint = settings.pipeline.dvc_endpoint_url or os.environ.get(ENDPOINT_ENV, "")
    if not url:
        raise ConfigError(
            f"data_dir {settings.paths.data_dir!r} is a folder on this machine, which the cluster's pods "
            f"cannot read: set pipeline.dvc_remote_url (or ${URL_ENV}) to the DVC remote holding data/, and "
            "push to it "
            "(`dvc push`; docs/team.md)"
        )
    if endpoint and (urlparse(endpoint).hostname or "") in _LOOPBACK:
        raise ConfigError(
            f"DVC endpoint {endpoint!r} names this machine, not one the pods can reach: set "
            f"pipeline.dvc_endpoint_url (or ${ENDPOINT_ENV}) to the object store's in-cluster name"
        )
    return url, endpoint


def resolve_data_version(data_version: str | None, data_rev: str | None) -> str:
    """The DVC md5 of data/ to train on: given (even empty), else data.dvc at git revision ``data_rev``, else
    data.dvc."""
    from safealign.team.dvc_remote import data_dvc_at, dvc_md5
    from safealign.tracking import data_version as dvc_version

    if data_version or (data_version == "" and not data_rev):
        # "" is a choice (the retraining CronJob's): the step pulls what the image's data.dvc names and
        # the cache keys on the pulled data, instead of freezing this machine's data.dvc into the run.
        return data_version
    if data_rev:
        return dvc_md5(data_dvc_at(data_rev), f"data.dvc@{data_rev}")
    version = dvc_version()
    return "" if version == "unversioned" else version


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


def cluster_run(
    settings: Settings, version: str, package: str | Path | None, image: str | None, cuda_image: str | None
) -> tuple[str, dict[str, Any]]:
    """(package, every run parameter) for a cluster run, or one ConfigError naming everything missing.

    The checks are independent (image, MLflow, DVC remote, the package itself), so a user fixes them all
    in one go instead of one per attempt; nothing reaches the KFP API until all pass.
    """
    problems: list[str] = []

    def attempt(check: Any) -> Any:
        try:
            return check()
        except ConfigError as exc:
            problems.append(str(exc))
            return None

    packaged = attempt(lambda: image_arguments(settings, package, image, cuda_image))
    tracking = attempt(lambda: cluster_tracking_uri(settings))
    remote = attempt(lambda: cluster_dvc_remote(settings))
    if problems or packaged is None or remote is None:
        raise ConfigError("cannot submit a run a cluster can use:\n- " + "\n- ".join(problems))
    pkg, images = packaged
    return pkg, {
        "params": params_json(settings),
        "data_version": version,
        "data_dir": "",  # the steps pull data/ from the DVC remote into their own scratch space
        "tracking_uri": tracking,
        "dvc_remote_url": remote[0],
        "dvc_endpoint_url": remote[1],
        **images,
    }


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


def image_arguments(
    settings: Settings, package: str | Path | None, image: str | None, cuda_image: str | None
) -> tuple[str, dict[str, str]]:
    """(package path, the ``image``/``cuda_image`` run parameters it takes), images checked pullable.

    The package is uploaded as compiled; its steps read their image from these parameters. A package
    without an ``image`` parameter was compiled before images were parameters: it would run whatever
    image it names, so it is refused until recompiled.
    """
    source = Path(package or default_package(settings.pipeline))
    docs = read_package(source)
    check_gpu_mode(docs, settings.pipeline, source)
    declared = root_parameters(docs)
    if "image" not in declared:
        raise ConfigError(
            f"{source} takes no 'image' parameter (compiled by an older safealign): recompile it with "
            "`safealign pipeline compile`"
        )
    cpu, cuda = images_for(settings.pipeline, image, cuda_image)
    images = {"image": check_image(cpu, "image" if image else "pipeline.image")}
    if "cuda_image" in declared:
        images["cuda_image"] = check_image(cuda, "cuda image")
    return str(source), images


def submit_run(
    settings: Settings, host: str | None = None, package: str | Path | None = None,
    data_version: str | None = None, image: str | None = None, cuda_image: str | None = None,
    namespace: str | None = None, token: str | None = None, data_rev: str | None = None,
) -> dict[str, Any]:
    """Create one run in the experiment ``pipeline.experiment`` (created if missing), like `kfp run create`.

    The data version is the DVC md5 of data/: ``data_version`` when given, else data.dvc at git revision
    ``data_rev``, else the working copy's data.dvc. The data-version step pulls exactly that from the DVC
    remote. A local tracking store or no DVC remote is refused before the KFP API is contacted. The
    package defaults to the committed file matching ``pipeline.gpu``.
    """
    namespace = namespace or settings.pipeline.namespace
    url = host or settings.pipeline.host
    version = resolve_data_version(data_version, data_rev)
    pkg, arguments = cluster_run(settings, version, package, image, cuda_image)
    client = _client(settings, host, namespace, token)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # kfp prints UI links; stdout is the CLI's JSON
            result = client.create_run_from_pipeline_package(
                pkg,
                arguments=arguments,
                run_name=f"align-{version[:12] or 'latest'}",
                experiment_name=settings.pipeline.experiment,
                namespace=namespace,
            )
    except Exception as exc:  # noqa: BLE001
        raise _service_error(exc, url, namespace, "create runs") from exc
    return {
        "run_id": result.run_id, "experiment": settings.pipeline.experiment, "data_version": version,
        "namespace": namespace, "image": arguments["image"],
    }


def schedule_run(
    settings: Settings, cron: str, host: str | None = None, package: str | Path | None = None,
    data_version: str | None = None, image: str | None = None, cuda_image: str | None = None,
    namespace: str | None = None, token: str | None = None, data_rev: str | None = None,
) -> dict[str, Any]:
    """Create a recurring run: ``cron``, max concurrency 1, no catch-up.

    A recurring run's parameters are frozen when it is created, so unless a version is given it passes
    an empty data version: every scheduled run's data-version step then pulls what the image's data.dvc
    names and keys the cache on the pulled data's hash, so KFP retrains only when that (or the params)
    changed.
    """
    schedule = normalize_cron(cron)
    version = resolve_data_version(data_version, data_rev) if (data_version or data_rev) else ""
    pkg, arguments = cluster_run(settings, version, package, image, cuda_image)
    namespace = namespace or settings.pipeline.namespace
    url = host or settings.pipeline.host
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
                params=arguments,
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
