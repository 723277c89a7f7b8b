"""The components' default image, ``pipeline.image`` from params.yaml.

The pipeline sets every step's image again when it is built (pipelines/align.py, from the settings or
``--image``), and submission can repoint a compiled file (safealign.kfp_deploy): this is only the
decorator's default, kept in one place.
"""

from __future__ import annotations

from pathlib import Path

from safealign.config import load_settings

ROOT = Path(__file__).resolve().parents[1]


def project_image(params_file: str | Path = ROOT / "params.yaml") -> str:
    return load_settings(params_file).pipeline.image


IMAGE = project_image()
