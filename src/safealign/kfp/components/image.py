"""The components' default image, ``pipeline.image`` from params.yaml.

The pipeline sets every step's image again when it is built (safealign.kfp.pipeline, from the settings
or ``--image``), and submission can repoint a compiled file (safealign.kfp.deploy): this is only the
decorator's default, kept in one place.

The components and the pipeline are built at compile time, in a checkout: they read the checkout's
params.yaml (``PARAMS_FILE``). A step's pod never imports this package; it runs the component function's
own source, which KFP copies into the compiled file.
"""

from __future__ import annotations

from pathlib import Path

from safealign.config import load_settings

# src/safealign/kfp/components/image.py -> the checkout's root
REPO_ROOT = Path(__file__).resolve().parents[4]
PARAMS_FILE = REPO_ROOT / "params.yaml"


def project_image(params_file: str | Path = PARAMS_FILE) -> str:
    return load_settings(params_file).pipeline.image


IMAGE = project_image()
