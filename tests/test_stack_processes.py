"""The team stack's processes on the real services (tests/helpers/stack.py): a killed MLflow leader leaves no
orphans behind `stack down` or `stack up`, and MLflow telemetry is off in the server it starts.

`kill -9` of the pid in ``pids/mlflow.pid`` kills only `mlflow server`; its uvicorn and the job workers
(huey consumers) keep the process group and keep answering on the port. Before the fix `stack up` then
exited 2 ("port ... taken by another program") and `stack down` said "not running" and left them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safealign.team.processes import pid_alive, port_open

ROOT = Path(__file__).resolve().parents[1]


def _leader(stack) -> int:
    return int((stack.state_dir / "pids" / "mlflow.pid").read_text().split()[0])


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, read from /proc (independent of the code
    under test)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(stat.parent.name))
    return sorted(found)


def _kill_leader(stack) -> tuple[int, list[int]]:
    """SIGKILL the recorded MLflow pid only, like `kill -9 $(cat .stack/pids/mlflow.pid)`; the workers it
    leaves, which still answer on the port."""
    leader = _leader(stack)
    os.kill(leader, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(leader) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(leader)
    survivors = _group(leader)  # the leader was the group's leader: pgid == its pid
    assert leader not in survivors and len(survivors) >= 2, survivors  # uvicorn + job workers
    assert port_open(stack.ports.mlflow)
    return leader, survivors


def _cleanup(pids: list[int]) -> None:
    """Whatever a failed assertion left of the processes this test's stack started: SIGKILL by pid."""
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _cli(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "safealign.cli", "stack", *args, "--state-dir", str(stack.state_dir)],
        capture_output=True, text=True, cwd=ROOT, timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def test_kill_9_of_the_mlflow_pid_is_recovered_by_up_and_stopped_by_down(team_stack):
    team_stack.up(timeout_s=180)
    leader, survivors = _kill_leader(team_stack)
    try:
        # `stack up` finds the orphaned group (pgid + command line), stops it and starts MLflow again
        up = _cli(team_stack, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert not any(pid_alive(p) for p in survivors)
        assert team_stack.status()["mlflow"]["answers"]
        assert _leader(team_stack) != leader
    finally:
        _cleanup(survivors)

    # `stack down` stops what a second kill -9 leaves; the port is free after
    leader, survivors = _kill_leader(team_stack)
    try:
        assert team_stack.stop_mlflow() == "stopped orphans"
        assert not any(pid_alive(p) for p in survivors)
        assert _group(leader) == [] and not port_open(team_stack.ports.mlflow)
        assert team_stack.stop_mlflow() == "not running"
    finally:
        _cleanup(survivors)
    team_stack.up(timeout_s=180)  # leave the session's stack as it was
    assert team_stack.healthy()


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_mlflow_server_runs_with_telemetry_off(team_stack):
    """Telemetry on made a team run fail once in two (`runs/log-batch failed with exception
    '_MLFLOW_TELEMETRY_SESSION_ID'`) and tries outbound connections; the server and every worker it
    started run with MLFLOW_DISABLE_TELEMETRY=true."""
    team_stack.up(timeout_s=180)
    group = _group(_leader(team_stack))
    assert len(group) >= 2  # the server and the workers it started
    for pid in group:
        assert _environ(pid).get("MLFLOW_DISABLE_TELEMETRY") == "true", pid


# Environment variables by which mlflow decides it runs under CI or pytest, where telemetry is off anyway:
# a child without them sees what a stage sees on a laptop, a cluster or in `safealign run`.
CI_MARKERS = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
              "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
              "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID",
              "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
PROBE = (
    "import os, sys, safealign.cli, mlflow\n"  # what `safealign <stage>` imports first
    "from mlflow.telemetry import get_telemetry_client\n"
    "from mlflow.telemetry.utils import is_telemetry_disabled\n"
    "print(os.environ.get('MLFLOW_DISABLE_TELEMETRY'), is_telemetry_disabled(),\n"
    "      get_telemetry_client() is None)\n"
)


def test_a_stage_process_runs_with_telemetry_off():
    from safealign.run import subprocess_env

    clean = {k: v for k, v in os.environ.items() if k not in CI_MARKERS}
    clean["PYTHONPATH"] = str(ROOT / "src")
    out = subprocess.run([sys.executable, "-c", PROBE], env=clean, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["true", "True", "True"]  # no telemetry client was even created
    # `safealign run` hands the stages (dvc repro -> safealign STAGE) an environment that says so too
    saved = os.environ.pop("MLFLOW_DISABLE_TELEMETRY", None)
    try:
        assert subprocess_env()["MLFLOW_DISABLE_TELEMETRY"] == "true"
    finally:
        if saved is not None:
            os.environ["MLFLOW_DISABLE_TELEMETRY"] = saved
    # an explicit opt-in is respected
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, "MLFLOW_DISABLE_TELEMETRY": "false"},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[:2] == ["false", "False"]
