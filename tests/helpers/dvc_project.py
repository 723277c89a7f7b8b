"""A throw-away git + DVC copy of this project (dvc.yaml, params, src/, a small data/) and the commands run in
it: `sh`, `dvc`, and `safealign run` through the installed console script (what `make run` calls)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers.data import make_data

REPO = Path(__file__).resolve().parents[2]


VENV_BIN = Path(sys.executable).parent


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SAFEALIGN_PARENT_RUN_ID", "MLFLOW_TRACKING_URI")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    return env


def sh(root: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(list(cmd), cwd=root, env=_env(root), capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} exited {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}")
    return out


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(root, str(VENV_BIN / "dvc"), *args, check=check)


def run(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`safealign run ARGS` in ``root``, through the installed console script (what `make run` calls)."""
    return sh(root, str(VENV_BIN / "safealign"), "run", *args, check=check)


def make_project(root: Path, dvc_yaml: str) -> Path:
    """A git + DVC project in ``root`` with ``dvc_yaml``, the repository's params and code, a small data/."""
    (root / "dvc.yaml").write_text(dvc_yaml)
    for name in ("params.yaml", ".dvcignore", ".dvc/config"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / ".venv").symlink_to(REPO / ".venv")
    (root / ".gitignore").write_text("/.venv\n/artifacts/\n/metrics/\n/mlflow.db\n/mlartifacts/\n")
    make_data(root / "data")
    sh(root, "git", "init", "-q")
    dvc(root, "add", "data", "--quiet")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "fixture project")
    return root
