"""The component image, from params.yaml (``pipeline.image`` and ``pipeline.image_tag``): one place only."""

from __future__ import annotations

from pathlib import Path

from safealign.config import load_settings

ROOT = Path(__file__).resolve().parents[1]


def project_image(params_file: str | Path = ROOT / "params.yaml") -> str:
    pipe = load_settings(params_file).pipeline
    return f"{pipe.image}:{pipe.image_tag}"


IMAGE = project_image()
