"""The OpenMP wait policy: spin on an idle CPU, sleep on a shared one, never override the user's choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from safealign.common.openmp_wait import SPIN_COUNT, busy_cores, choose_wait_policy, cpu_times

STAT = "cpu  100 5 50 800 20 0 10 0 0 0\ncpu0 50 2 25 400 10 0 5 0 0 0\n"


def test_cpu_times_counts_idle_and_iowait_as_not_busy() -> None:
    busy, total = cpu_times(STAT)
    assert total == 100 + 5 + 50 + 800 + 20 + 0 + 10 + 0
    assert busy == total - 800 - 20


def test_cpu_times_rejects_other_files() -> None:
    with pytest.raises(ValueError, match="/proc/stat"):
        cpu_times("MemTotal: 1 kB\n")


def test_busy_cores_is_none_without_proc_stat(tmp_path: Path) -> None:
    assert busy_cores(0.0, tmp_path / "missing") is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux only")
def test_busy_cores_reads_this_machine() -> None:
    busy = busy_cores(0.05)
    assert busy is not None and 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6


def test_idle_machine_spins_briefly() -> None:
    env: dict[str, str] = {}
    said = choose_wait_policy(env, measure=lambda: 0.1)
    assert env == {"GOMP_SPINCOUNT": SPIN_COUNT}
    assert said.startswith("spin")


@pytest.mark.parametrize("load", [0.5, 1.7, None])
def test_shared_or_unknown_machine_sleeps(load: float | None) -> None:
    env: dict[str, str] = {}
    said = choose_wait_policy(env, measure=lambda: load)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert said.startswith("PASSIVE")


@pytest.mark.parametrize("given", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}])
def test_the_users_choice_wins(given: dict[str, str]) -> None:
    env = dict(given)

    def never() -> float:
        raise AssertionError("must not measure when the environment decides")

    said = choose_wait_policy(env, measure=never)
    assert env == given
    assert "environment" in said


def test_cli_sets_a_policy_before_torch_loads() -> None:
    """A torch command chooses a policy in a fresh process; a command without torch leaves the env alone."""
    code = (
        "import os, sys\n"
        "from safealign import cli\n"
        "rc = cli.main(sys.argv[1:])\n"
        "print(rc, os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def run(*args: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
        )
        return out.stdout.strip().splitlines()[-1].split()

    # `grpo` with an unknown override fails as bad input (2) after the policy was chosen, before any work
    rc, policy, spin = run("grpo", "--set", "grpo.no_such_key=1")
    assert rc == "2"
    assert (policy, spin) in (("None", SPIN_COUNT), ("PASSIVE", "None"))
    rc, policy, spin = run("promote", "--set", "grpo.no_such_key=1")
    assert (rc, policy, spin) == ("2", "None", "None")


@pytest.mark.parametrize("bench", ["grpo_step.py", "grpo_vs_trl.py"])
def test_benches_choose_the_policy_before_torch_loads(bench: str) -> None:
    """Loading a GRPO bench module chooses a policy in a fresh process, not "torch was already imported".

    The choice only applies when it is made before torch loads; grpo_vs_trl.py once imported torch first
    (its import block sorted torch above the module that chooses) and so ran under libgomp's default.
    """
    root = Path(__file__).resolve().parents[1]
    code = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(root / 'bench')!r})\n"
        f"spec = importlib.util.spec_from_file_location('bench_module', {str(root / 'bench' / bench)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(module.WAIT_POLICY)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    said = out.stdout.strip().splitlines()[-1]
    assert said.startswith(("spin", "PASSIVE")), said
