"""Team mode against real services: PostgreSQL, a SeaweedFS S3 server, an MLflow server (helpers/stack.py).

A throw-away git + DVC project (tiny data built from the installed packages) runs every stage, validate to
promote, as separate processes against the stack, exactly as `dvc repro` would; then the registry is read
back through the MLflow client and the DVC remote through DVC, from a second clone that has nothing but
the exports. The fault tests break one service at a time on the same stack and check the next step's
behaviour. Tiny random models, relaxed gates: this tests the plumbing, not the alignment.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from safealign.config import load_settings
from safealign.kfp.stage import data_hash

from helpers.data import small_data
from helpers.tiny import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.stack

TINY = [
    *tiny_overrides(),
    # promotion is forced as well, so the aliases move
    "promote.min_safety_gain=-10", "promote.max_aspect_drop=10", "promote.max_benign_refusal=1",
    "promote.min_refusal_gain=-1",
    "tracking.experiment=team-stack-test",
]
STAGES = ["validate", "train-reward", "calibrate", "grpo", "evaluate", "promote"]


def _sh(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def _dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return _sh([str(Path(sys.executable).parent / "dvc"), *args], cwd, check)


def stage(name: str, repo: Path, check: bool = True) -> subprocess.CompletedProcess:
    """One stage as its own process, like a DVC stage (``safealign <stage> --set ...``)."""
    sets = [arg for o in TINY for arg in ("--set", o)]
    return _sh([sys.executable, "-m", "safealign.cli", name, *sets], repo, check)


@pytest.fixture(scope="module")
def project(tmp_path_factory, team_stack) -> Path:
    """A git + DVC project with tiny data, its data pushed to the stack's DVC remote."""
    from safealign.team.dvc_remote import Remote, configure, push

    repo = tmp_path_factory.mktemp("team") / "project"
    repo.mkdir()
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    _sh(["git", "init", "-q"], repo)
    _sh(["git", "config", "user.email", "test@example.invalid"], repo)
    _sh(["git", "config", "user.name", "test"], repo)
    _dvc("init", "-q", cwd=repo)
    small_data(repo)  # params.yaml there is this checkout's
    _dvc("add", "-q", "data", cwd=repo)
    (repo / ".gitignore").write_text("/data\n/artifacts\n/metrics\n/.cache\n", encoding="utf-8")
    _sh(["git", "add", "-A"], repo)
    _sh(["git", "commit", "-qm", "data"], repo)
    remote = Remote(url=team_stack.dvc_remote_url, endpoint=team_stack.s3_endpoint)
    env = team_stack.env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        configure(repo, remote)
        push(repo, remote)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return repo


def _md5(repo: Path) -> str:
    return yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]


def test_stack_answers_and_keeps_secrets_private(team_stack):
    status = team_stack.status()
    assert all(s["answers"] for s in status.values()), status
    creds = team_stack.state_dir / "credentials.json"
    assert creds.stat().st_mode & 0o777 == 0o600
    assert (team_stack.state_dir / "s3" / "identities.json").stat().st_mode & 0o777 == 0o600
    # up again is a no-op: the same processes, every service still answering
    pids = {p.name: p.read_text() for p in (team_stack.state_dir / "pids").iterdir()}
    again = team_stack.up()
    assert all(s["answers"] for s in again["status"].values())
    assert {p.name: p.read_text() for p in (team_stack.state_dir / "pids").iterdir()} == pids
    # the database password never appears in a process's command line
    secret = json.loads(creds.read_text())["pg_password"]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert secret not in cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue


def test_cli_status_prints_exports_and_exit_code(team_stack):
    cli = [sys.executable, "-m", "safealign.cli", "stack", "status", "--state-dir", str(team_stack.state_dir)]
    proc = _sh([*cli, "--exports"], ROOT)
    exports = dict(line.removeprefix("export ").split("=", 1) for line in proc.stdout.splitlines())
    assert exports == team_stack.env()
    # a state folder never started: every service reported down, exit 1, and nothing created
    empty = team_stack.state_dir.parent / "not-started"
    proc = _sh([sys.executable, "-m", "safealign.cli", "stack", "status", "--state-dir", str(empty)], ROOT,
               check=False)
    assert proc.returncode == 1 and proc.stdout.count("DOES NOT ANSWER") == 3, proc.stdout
    assert "export" not in proc.stdout and not empty.exists()


def test_validate_to_promote_on_the_stack(project, team_stack, stack_env):
    """Every stage against the server; the registry and the remote read back by their own clients."""
    import mlflow

    parent = _sh([sys.executable, "-m", "safealign.tracking", "--params", "params.yaml", "start", "--name",
                  "team"], project).stdout.strip()
    os.environ["SAFEALIGN_PARENT_RUN_ID"] = parent
    for name in STAGES:
        stage(name, project)
    os.environ.pop("SAFEALIGN_PARENT_RUN_ID")
    decision = json.loads((project / "metrics" / "promotion.json").read_text())
    assert decision["verdict"] == "promoted", decision

    mlflow.set_tracking_uri(team_stack.tracking_uri)
    client = mlflow.MlflowClient()
    settings = load_settings(project / "params.yaml", TINY)
    exp = client.get_experiment_by_name("team-stack-test")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server, not a local path
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert {r.data.tags["safealign.stage"] for r in children} == {s.replace("-", "_") for s in STAGES}
    assert all(r.data.tags["safealign.data_version"] == _md5(project) for r in children)
    for name in (settings.promote.policy_model_name, settings.promote.reward_model_name):
        versions = client.search_model_versions(f"name = '{name}'")
        assert len(versions) == 1
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.version == client.get_model_version_by_alias(name, "challenger").version
        assert champion.tags["safealign.data_version"] == _md5(project)
        assert "safealign.content_hash" in champion.tags
    # the champion's files come back through the server, and they are in the S3 bucket
    champion_uri = f"models:/{settings.promote.policy_model_name}@champion"
    local = Path(mlflow.artifacts.download_artifacts(champion_uri))
    # a registered policy is an MLflow model: its MLmodel at the root, the LoRA adapter among its artifacts
    assert (local / "MLmodel").exists()
    assert list((local / "artifacts").rglob("adapter_config.json"))
    keys = [o["Key"] for o in team_stack.s3_client().list_objects_v2(Bucket="mlflow")["Contents"]]
    assert any(k.endswith("adapter_config.json") for k in keys)

    # DVC: the remote holds every object of data/ and a fresh clone with only the exports pulls them
    status = _dvc("status", "--cloud", "--json", cwd=project)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    clone = project.parent / "clone"
    _sh(["git", "clone", "-q", str(project), str(clone)], project.parent)
    assert not (clone / "data").exists()
    from safealign.team.dvc_remote import Remote, configure, pull

    remote = Remote.from_env()
    configure(clone, remote)
    pull(clone, remote)
    assert data_hash(clone / "data") == data_hash(project / "data")
    assert json.loads(_dvc("data", "status", "--json", cwd=clone).stdout).get("uncommitted") in (None, {})


# ---------------------------------------------------------------------------------------------- faults


def test_postgres_restart_between_stages_and_mlflow_killed_mid_pipeline(project, team_stack, stack_env):
    """PostgreSQL restarted between two stages: the next succeeds. MLflow killed: exit 1 naming the URI;
    after a restart the same stage completes."""
    stage("validate", project)
    team_stack.restart_postgres()
    stage("train-reward", project)

    team_stack.kill("mlflow")
    failed = stage("calibrate", project, check=False)
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert team_stack.tracking_uri in failed.stderr and "Traceback" not in failed.stderr
    team_stack.start_mlflow(timeout_s=180)
    stage("calibrate", project)


@pytest.fixture
def small_repo(tmp_path, stack_env, team_stack) -> Path:
    from safealign.team.dvc_remote import Remote, configure

    repo = tmp_path / "small"
    repo.mkdir()
    _sh(["git", "init", "-q"], repo)
    _dvc("init", "-q", cwd=repo)
    (repo / "data").mkdir()
    (repo / "data" / "a.txt").write_text(f"{random.random()}\n")
    _dvc("add", "-q", "data", cwd=repo)
    configure(repo, Remote.from_env())
    return repo


def test_object_store_down_during_push_then_retry(small_repo, team_stack):
    from safealign.errors import ServiceError
    from safealign.team.dvc_remote import Remote, push

    remote = Remote.from_env()
    team_stack.stop_s3()
    try:
        with pytest.raises(ServiceError) as err:
            push(small_repo, remote)
        message = str(err.value)
        assert "DVC remote 'team'" in message and team_stack.s3_endpoint in message
        assert "not reachable" in message and "local DVC cache is untouched" in message
        # the cache still has every object that was to be pushed
        assert _dvc("status", "--json", cwd=small_repo).stdout.strip() in ("{}", "")
        files = [p for p in (small_repo / ".dvc" / "cache").rglob("*") if p.is_file()]
        assert len(files) == 2  # the file and the directory listing
    finally:
        team_stack.start_s3()
    push(small_repo, remote)
    assert json.loads(_dvc("status", "--cloud", "--json", cwd=small_repo).stdout or "{}") == {}


def test_wrong_s3_credentials_name_the_remote_and_hide_the_secret(small_repo, team_stack, monkeypatch):
    wrong = "wrong-secret-Zq81xYv0Lm"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    proc = _sh([sys.executable, "-m", "safealign.team.dvc_remote", "push"], small_repo, check=False)
    assert proc.returncode == 1
    assert "DVC remote 'team' (s3://dvc at " in proc.stderr and "refused the credentials" in proc.stderr
    real = team_stack.credentials().s3_secret_key
    assert wrong not in proc.stderr + proc.stdout and real not in proc.stderr + proc.stdout


# ------------------------------------------------------------------------------------- KFP data version


def _kfp_run(tmp: Path, stack, data_version: str, overrides: list[str], raise_on_error: bool = True):
    from kfp import local

    from safealign.kfp.client import load_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp / "root"),
               enable_caching=True, cache_root=str(tmp / "kfp-cache"), raise_on_error=raise_on_error)
    return load_pipeline()(
        data_version=data_version, data_dir="", overrides=[*TINY, *overrides],
        tracking_uri=stack.tracking_uri, dvc_remote_url=stack.dvc_remote_url,
        dvc_endpoint_url=stack.s3_endpoint, cache_dir=str(tmp / "model-cache"),
    )


def _step_output(tmp: Path, task: str) -> Path:
    run = max((tmp / "root").glob("align-*"), key=lambda p: p.stat().st_mtime)
    return run / task


def test_data_version_step_pulls_from_the_remote_and_keys_the_cache(project, team_stack, stack_env, tmp_path,
                                                                     monkeypatch, caplog):
    """The steps get data/ from the DVC remote (no data_dir); the pulled md5 is the cache key."""
    import logging

    caplog.set_level(logging.INFO)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    gate_fails = ["calibrate.r2_threshold=1.0"]  # stop after calibrate: the data path is what is tested
    v1 = _md5(project)
    assert _kfp_run(tmp_path, team_stack, v1, gate_fails).output is False
    version = json.loads((_step_output(tmp_path, "data-version-op") / "executor_output.json").read_text())
    assert version["parameterValues"]["Output"] == v1
    pulled = _step_output(tmp_path, "validate-op") / "dataset" / "data"
    assert data_hash(pulled) == data_hash(project / "data")  # validate ran on exactly the pushed data

    caplog.clear()
    _kfp_run(tmp_path, team_stack, v1, gate_fails)
    cached = ("validate-op", "train-reward-op", "calibrate-op")
    assert all(f"Task {t} cache hit" in caplog.text for t in cached)

    # new data: a new data.dvc pushed; an empty version (a scheduled run) resolves it from data.dvc and
    # misses the cache (the new row is invalid, so the run stops at validate: enough to see the miss)
    with (project / "data" / "labelled.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"id": "broken"}\n')
    _dvc("add", "-q", "data", cwd=project)
    from safealign.team.dvc_remote import Remote, push

    push(project, Remote.from_env())
    v2 = _md5(project)
    assert v2 != v1
    monkeypatch.chdir(project)
    caplog.clear()
    _kfp_run(tmp_path, team_stack, "", gate_fails, raise_on_error=False)
    assert "Task validate-op cache hit" not in caplog.text and "validate-op" in caplog.text
    version = json.loads((_step_output(tmp_path, "data-version-op") / "executor_output.json").read_text())
    assert version["parameterValues"]["Output"] == v2


# ------------------------------------------------------------------------------------------ team profile


RUN_TEAM = [sys.executable, "-m", "safealign.cli", "run", "--team", "--until", "validate"]


def _clone(source: Path, dest: Path) -> Path:
    _sh(["git", "clone", "-q", str(source), str(dest)], dest.parent)
    return dest


def test_team_profile_pushes_what_a_fresh_clone_needs_to_rerun_nothing(team_stack, stack_env, tmp_path,
                                                                       monkeypatch):
    """`make run PROFILE=team` (safealign run --team), up to validate to stay quick. The first clone pushes
    data/ and every output of the stage, metrics included; a second clone given only the exports gets them
    with a plain `dvc pull` (the committed default remote; the S3 endpoint from AWS_ENDPOINT_URL_S3), and
    then DVC finds nothing to rerun. Issue 31: metrics were `cache: false`, never pushed, so the teammate's
    `dvc status` showed validate changed and `dvc repro` reran it; plain `dvc pull` said "no remote"."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.delenv("SAFEALIGN_PARENT_RUN_ID", raising=False)
    first = _clone(ROOT, tmp_path / "first")
    out = _sh(RUN_TEAM, first).stdout
    assert f"team: MLflow {team_stack.tracking_uri}" in out
    # the summary points at the team server, never at a local SQLite file (issue 31)
    assert f"experiments: {team_stack.tracking_uri}" in out and "sqlite" not in out, out[-1500:]
    _sh(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qam", "validated",
         "--allow-empty"], first)

    second = _clone(first, tmp_path / "second")
    assert not (second / "data").exists() and not (second / ".dvc" / "config.local").exists()
    # plain DVC (no -r, no config.local): the stages this run pushed (dvc.lock also names the outputs of
    # the default run's later stages, which this remote never had)
    pulled = _dvc("pull", "data.dvc", "validate", cwd=second)
    assert "ERROR" not in pulled.stdout + pulled.stderr
    assert data_hash(second / "data") == data_hash(first / "data")
    assert json.loads(_dvc("status", "--json", "validate", cwd=second).stdout or "{}") == {}
    assert (second / "metrics" / "validation.json").read_bytes() == (
        first / "metrics" / "validation.json").read_bytes()
    out = _sh(RUN_TEAM, second).stdout
    assert "every stage is up to date, nothing to run" in out and "dvc repro" not in out, out[-1500:]
    assert data_hash(second / "artifacts" / "splits") == data_hash(first / "artifacts" / "splits")

    # without the exports the profile refuses to fall back to a local store
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    refused = _sh(RUN_TEAM, second, check=False)
    assert refused.returncode == 2 and "MLFLOW_TRACKING_URI" in refused.stderr


def test_a_killed_team_run_does_not_leave_its_parent_run_running(team_stack, stack_env, tmp_path,
                                                                monkeypatch):
    """A team run killed mid-stage (SIGKILL of its process group: OOM, a closed terminal) cannot close its
    MLflow parent run; the next `safealign run` closes it as FAILED (issue 31: it stayed RUNNING forever,
    and `promote --repair` did not see it either, as it carried no owner)."""
    import signal

    import mlflow

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.delenv("SAFEALIGN_PARENT_RUN_ID", raising=False)
    repo = _clone(ROOT, tmp_path / "killed")
    (repo / "params.yaml").write_text(  # its own experiment: other tests' runs never count here
        (repo / "params.yaml").read_text().replace("experiment: safealign", "experiment: team-killed-run", 1))
    proc = subprocess.Popen(RUN_TEAM, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    parent, seen = "", []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("== dvc repro"):
                break
            if line.startswith("== MLflow parent run "):
                parent = line.split()[-1]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert parent, "".join(seen)
    client = mlflow.MlflowClient(tracking_uri=team_stack.tracking_uri)
    assert client.get_run(parent).info.status == "RUNNING"

    out = _sh(RUN_TEAM, repo).stdout
    assert "closed as FAILED" in out and parent in out, out[-1500:]
    assert client.get_run(parent).info.status == "FAILED"
    # and this run's own parent is closed FINISHED
    current = out.split("== MLflow parent run ")[1].split()[0]
    assert client.get_run(current).info.status == "FINISHED"
