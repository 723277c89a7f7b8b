"""Where a compiled pipeline's steps run and what a cluster run needs: images, MLflow, the DVC remote.

A compiled KFP file used to name a fixed image per executor, and its parameters defaulted to this
machine's values (``safealign:0.1.0``, ``sqlite:///mlflow.db``, ``data``, no DVC remote): a plain
``kfp run create -f pipelines/align.yaml`` then started pods that could pull nothing and wrote promotions
into throw-away databases. Now the steps' images are the ``image``/``cuda_image`` pipeline parameters and
the compiled file holds a default only where the settings give a value a cluster can use
(``cluster_defaults``): everything else must be passed with the run, by ``safealign pipeline submit``
(which refuses, exit 2, what a cluster cannot use) or on the kfp command line (docs/kfp.md).

The GPU steps are recognised by what the compiled file asks for, not by a list of names kept here: an
executor that requests an accelerator (``pipeline.gpu`` puts one on GRPO and evaluation) runs the CUDA
image, every other executor the CPU image.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from safealign.config import PipelineSettings, Settings
from safealign.errors import ConfigError

PIPELINE_FILE = "pipelines/align.yaml"
GPU_PIPELINE_FILE = "pipelines/align-gpu.yaml"


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


# Hosts that inside a pod are the pod itself, not the machine that submitted the run.
LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
# REGISTRY_OR_NAMESPACE/.../NAME with :TAG and/or @sha256:DIGEST; lowercase path components as Docker
# requires. A bare ``name:tag`` is refused: a cluster resolves it against Docker Hub's library/, which is
# never the image this project built.
_IMAGE_REF = re.compile(
    r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
)


def pullable_image(ref: str) -> bool:
    """Whether ``ref`` is an image a cluster can pull: REGISTRY/NAME:TAG or a digest (not a local tag)."""
    match = _IMAGE_REF.match(ref or "")
    return bool(match) and bool(match.group(5) or match.group(6))


def check_image(ref: str, what: str = "image") -> str:
    """``ref`` when pullable, else a ConfigError that says what to pass (exit 2 at the CLI)."""
    if not pullable_image(ref):
        raise ConfigError(
            f"{what} {ref!r} is not an image a cluster can pull: push it to your registry and pass "
            "--image REGISTRY/safealign:TAG (or @sha256:DIGEST), or set pipeline.image "
            "(a bare name:tag exists only on the machine that built it)"
        )
    return ref


def cluster_uri(uri: str) -> bool:
    """Whether pods can share ``uri``: http(s) and not a loopback host (a SQLite or file store, or
    127.0.0.1, is a different, throw-away place in every pod)."""
    parsed = urlparse(uri or "")
    return parsed.scheme in ("http", "https") and (parsed.hostname or "") not in LOOPBACK


def cluster_defaults(
    settings: Settings, image: str | None = None, cuda_image: str | None = None
) -> dict[str, str | None]:
    """The defaults a cluster build of the pipeline may carry; None = none, the run must pass it.

    Only values a cluster can use survive: a pullable image (``--image`` or ``pipeline.image``), an http(s)
    MLflow that is not this machine (``pipeline.tracking_uri``), a DVC remote (``pipeline.dvc_remote_url``).
    The environment is not read: a compiled file must not depend on the shell that compiled it.
    """
    cpu, cuda = images_for(settings.pipeline, image, cuda_image)
    for ref, what in ((image, "--image"), (cuda_image, "--cuda-image")):
        if ref:
            check_image(ref, what)  # an explicit image for a cluster file must be pullable
    tracking = settings.pipeline.tracking_uri
    return {
        "image": cpu if pullable_image(cpu) else None,
        "cuda_image": cuda if pullable_image(cuda) else None,
        "tracking_uri": tracking if cluster_uri(tracking) else None,
        "dvc_remote_url": settings.pipeline.dvc_remote_url or None,
    }


def default_package(pipe: PipelineSettings) -> str:
    """The committed compiled file that matches ``pipeline.gpu``."""
    return GPU_PIPELINE_FILE if pipe.gpu else PIPELINE_FILE


def read_package(path: str | Path) -> list[dict[str, Any]]:
    """A compiled pipeline: the PipelineSpec document, then the platform (Kubernetes) document if any."""
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"compiled pipeline not found: {source} (run `safealign pipeline compile`)")
    try:
        docs = [d for d in yaml.safe_load_all(source.read_text(encoding="utf-8")) if d]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not a compiled pipeline (YAML error: {exc})") from exc
    if not docs or "deploymentSpec" not in docs[0]:
        raise ConfigError(f"{source}: not a compiled KFP pipeline (no deploymentSpec)")
    return docs


def executors(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return docs[0]["deploymentSpec"]["executors"]


def root_parameters(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pipeline's input parameters (name -> definition, with ``defaultValue`` when it has one)."""
    return docs[0].get("root", {}).get("inputDefinitions", {}).get("parameters", {})


def gpu_executors(docs: list[dict[str, Any]]) -> list[str]:
    """Executors that request an accelerator."""
    return sorted(
        name for name, ex in executors(docs).items()
        if "accelerator" in ex.get("container", {}).get("resources", {})
    )


def images_for(
    pipe: PipelineSettings, image: str | None = None, cuda_image: str | None = None
) -> tuple[str, str]:
    """(cpu, cuda) images: the flags win over params; the CUDA image defaults to the CPU one + '-cuda'."""
    cpu = image or pipe.image
    cuda = cuda_image or (f"{image}-cuda" if image and not pipe.cuda_image else pipe.resolved_cuda_image)
    return cpu, cuda


def check_gpu_mode(docs: list[dict[str, Any]], pipe: PipelineSettings, source: str | Path) -> None:
    """Refuse to submit a CPU package with ``pipeline.gpu`` on (or the reverse): the run would silently
    train on the wrong hardware."""
    has_gpu = bool(gpu_executors(docs))
    if has_gpu != pipe.gpu:
        want = GPU_PIPELINE_FILE if pipe.gpu else PIPELINE_FILE
        raise ConfigError(
            f"{source} {'requests' if has_gpu else 'does not request'} GPUs but pipeline.gpu is {pipe.gpu}: "
            f"submit {want}, or compile one with "
            f"`safealign pipeline compile --set pipeline.gpu={str(pipe.gpu).lower()}`"
        )
