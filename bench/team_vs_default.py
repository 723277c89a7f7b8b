"""Time the pipeline on tiny settings: the default profile vs the team profile against a local stack.

Prints the stack's start-up time (cold: first `up` with initdb and MLflow's schema migrations; warm: `up`
after `down`) and the wall time of `safealign run` (what `make run` runs) in two fresh clones of
this repository's HEAD, one with the embedded default (SQLite MLflow, no DVC remote) and one with `--team`
(MLflow server on PostgreSQL + S3, data/ pulled and outputs pushed). Tiny models keep it to minutes on a CPU:
the figure compares the overheads of the two storage paths, not training speed.

    .venv/bin/python bench/team_vs_default.py            (nice -n 10 on a shared machine)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from safealign.common.nested import overrides_of  # noqa: E402
from safealign.config import apply_overrides  # noqa: E402
from safealign.team.stack import Ports, Stack  # noqa: E402

# The tiny settings every test, bench and script shares (configs/tiny.yaml), as --set lines.
TINY = overrides_of(yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text(encoding="utf-8")))


def _clone(dest: Path) -> None:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    params = dest / "params.yaml"
    raw = yaml.safe_load(params.read_text(encoding="utf-8"))
    params.write_text(yaml.safe_dump(apply_overrides(raw, TINY), sort_keys=False), encoding="utf-8")


def _run(repo: Path, env: dict[str, str], team: bool) -> tuple[float, int]:
    start = time.monotonic()
    argv = [sys.executable, "-m", "safealign.cli", "run", *(["--team"] if team else [])]
    proc = subprocess.run(argv, cwd=repo,
                          env=env, capture_output=True, text=True)
    took = time.monotonic() - start
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
    return took, proc.returncode


def main() -> int:
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("MLFLOW_", "AWS_", "SAFEALIGN_DVC_", "SAFEALIGN_PARENT"))}
    base_env["PATH"] = f"{Path(sys.executable).parent}:{base_env['PATH']}"
    base_env["PYTHONPATH"] = str(ROOT / "src")
    with tempfile.TemporaryDirectory(prefix="safealign-bench-") as tmp:
        tmp_path = Path(tmp)
        stack = Stack(tmp_path / "stack", Ports.free())
        t = time.monotonic()
        stack.up(timeout_s=300)
        cold = time.monotonic() - t
        stack.down()
        t = time.monotonic()
        stack.up(timeout_s=300)
        warm = time.monotonic() - t
        try:
            results = {}
            for name, team in (("default", False), ("team", True)):
                repo = tmp_path / name
                _clone(repo)
                env = {**base_env, **(stack.env() if team else {})}
                results[name] = _run(repo, env, team)
        finally:
            stack.down()
            stack.purge()
    print(f"stack up: cold {cold:.1f} s (initdb + MLflow schema), warm {warm:.1f} s")
    for name, (took, rc) in results.items():
        print(f"{name:<8} safealign run on tiny settings: {took:.1f} s (exit {rc})")
    ratio = results["team"][0] / results["default"][0]
    print(f"team / default: {ratio:.2f}")
    return 0 if all(rc == 0 for _, rc in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
