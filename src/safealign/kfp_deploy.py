"""Where a compiled pipeline's steps run: the image of every step, resolved when a run is submitted.

A compiled KFP file names an image per executor. If that name were fixed at compile time, pointing the
pipeline at a team's registry would need a params edit, a recompile and a new image (the image carries
``pipelines/align.yaml``). Instead ``safealign pipeline submit|schedule --image REGISTRY/safealign:TAG``
rewrites the executors' images in the package it uploads, so the same compiled file runs from any registry.

The GPU steps are recognised by what the compiled file asks for, not by a list of names kept here: an
executor that requests an accelerator (``pipeline.gpu`` puts one on GRPO and evaluation) gets the CUDA
image, every other executor the CPU image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from safealign.config import PipelineSettings
from safealign.errors import ConfigError

PIPELINE_FILE = "pipelines/align.yaml"
GPU_PIPELINE_FILE = "pipelines/align-gpu.yaml"


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


def gpu_executors(docs: list[dict[str, Any]]) -> list[str]:
    """Executors that request an accelerator."""
    return sorted(
        name for name, ex in executors(docs).items()
        if "accelerator" in ex.get("container", {}).get("resources", {})
    )


def set_images(docs: list[dict[str, Any]], cpu_image: str, cuda_image: str) -> list[dict[str, Any]]:
    """Point every executor at ``cpu_image``, or ``cuda_image`` when it requests an accelerator."""
    for image in (cpu_image, cuda_image):
        if not image or any(c.isspace() for c in image):
            raise ConfigError(f"image {image!r}: expected REGISTRY/NAME:TAG")
    gpu = set(gpu_executors(docs))
    for name, ex in executors(docs).items():
        ex["container"]["image"] = cuda_image if name in gpu else cpu_image
    return docs


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


def write_package(docs: list[dict[str, Any]], out: str | Path) -> Path:
    """Write the documents back as one multi-document YAML file (KFP's own layout)."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = "---\n".join(yaml.safe_dump(d, sort_keys=True) for d in docs)
    target.write_text(text, encoding="utf-8")
    return target
