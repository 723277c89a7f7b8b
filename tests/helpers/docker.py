"""Docker for the tests that need it: a reachable daemon (started here if needed) that has the project image.

Skipped without Docker or the image, a failure under SAFEALIGN_E2E_REQUIRED=1 (CI), so CI never passes by
skipping the containerised tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from safealign.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
IMAGE = load_settings(ROOT / "params.yaml").pipeline.image


def _unavailable(reason: str) -> None:
    if os.environ.get("SAFEALIGN_E2E_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def docker_image():
    """A reachable Docker daemon (started here if needed, and then stopped after) that has the project
    image. A daemon that was already running (CI's, a developer's) is left running."""
    if not (shutil.which("docker") and shutil.which("dockerd")):
        _unavailable("Docker is not installed (apt-get install -y docker.io)")
    start = subprocess.run([str(ROOT / "scripts" / "dockerd.sh"), "start"], capture_output=True, text=True)
    if start.returncode != 0:
        _unavailable(f"no Docker daemon: {start.stderr.strip()}")
    try:
        found = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, text=True)
        if found.returncode != 0:
            _unavailable(f"image {IMAGE} is not built: run `make image`")
        yield IMAGE
    finally:
        if start.stdout.startswith("dockerd: started"):
            subprocess.run([str(ROOT / "scripts" / "dockerd.sh"), "stop"], capture_output=True, text=True)
