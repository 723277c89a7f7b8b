"""Registration under faults and races, against a real `mlflow server` (killed with SIGKILL at each step of a
promotion, then restarted on the same store) and real concurrent `safealign promote` processes.

After every scenario the registry must be consistent: one version per content hash, no pending version,
no lock left, both models' aliases naming the same candidate, metrics/promotion.json agreeing with the
aliases, and no promote run left RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from safealign.common.layout import Layout
from safealign.errors import GateFailed, ServiceError
from safealign.registry import versions
from safealign.registry.promotion import current_rollback, promote, repair_registry, rollback_champion
from safealign.tracking import PARENT_ENV

from helpers.registry import (
    evaluation,
    free_port,
    kill_server,
    make_settings,
    start_server,
    stop_server,
    write_candidate,
)

STEPS = [
    "run_started",
    "locked",
    "repaired",
    "reward_model_logged",
    "reward_registered",
    "policy_logged",
    "policy_registered",
    "policy_committed",
    "committed",
    "challenger_policy_set",
    "challenger_set",
    "champion_policy_set",
    "champion_set",
    "written",
]


def assert_consistent(settings, champion_hash: str) -> None:
    client = mlflow.MlflowClient()
    p = settings.promote
    for name in (p.policy_model_name, p.reward_model_name):
        found = client.search_model_versions(f"name = '{name}'")
        hashes = [v.tags.get(versions.HASH_TAG) for v in found]
        assert len(hashes) == len(set(hashes)), (name, [(v.version, v.tags) for v in found])
        assert all(versions.state(v) == versions.COMPLETE for v in found), name
    names = [m.name for m in client.search_registered_models()]
    assert p.policy_model_name + versions.LOCK_SUFFIX not in names
    champion = client.get_model_version_by_alias(p.policy_model_name, "champion")
    assert champion.tags[versions.HASH_TAG] == champion_hash
    for alias in versions.ALIASES:
        pol = client.get_model_version_by_alias(p.policy_model_name, alias)
        rew = client.get_model_version_by_alias(p.reward_model_name, alias)
        assert pol.tags[versions.REWARD_VERSION_TAG] == str(rew.version), alias
    doc = json.loads(Layout.from_settings(settings).metrics_file("promotion").read_text())
    assert doc["champion"] == str(champion.version)
    exp = client.get_experiment_by_name(settings.tracking.experiment)
    running = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.`safealign.stage` = 'promote' and attributes.status = 'RUNNING'",
    )
    assert running == [], [r.info.run_id for r in running]


@pytest.fixture
def hooks():
    yield versions.STEP_HOOKS
    versions.STEP_HOOKS.clear()


class KillableServer:
    """One `mlflow server` on a fixed port and store, killed (SIGKILL, whole process group) and restarted
    by the tests; each test uses its own model names, so the cases share the store without meeting."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = start_server(root, self.port)

    def kill(self) -> None:
        kill_server(self.proc)
        self.proc.wait()

    def ensure_up(self) -> None:
        if self.proc.poll() is not None:
            self.proc = start_server(self.root, self.port)


@pytest.fixture(scope="module")
def killable(tmp_path_factory):
    srv = KillableServer(tmp_path_factory.mktemp("killable"))
    yield srv
    stop_server(srv.proc)


@pytest.mark.parametrize("step", STEPS)
def test_server_killed_at_each_step_fails_fast_and_the_next_promote_repairs(
    step, killable, tmp_path, monkeypatch, hooks
):
    from safealign.common.hashing import tree_hash as folder_hash

    killable.ensure_up()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", killable.uri)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    settings = make_settings(
        tmp_path,
        "sqlite:///unused.db",
        [f"promote.policy_model_name=policy-{step}", f"promote.reward_model_name=reward-{step}"],
    )
    write_candidate(settings, b"adapter-A", evaluation())
    promote(settings)
    # a new adapter AND a new reward model, so every step (both models' logging too) is reached
    layout = write_candidate(
        settings, b"adapter-B", evaluation(safety_aligned=0.85), reward_bytes=b"reward-v2"
    )
    reached = []

    def kill(name: str) -> None:
        if name == step:
            reached.append(name)
            killable.kill()

    hooks.append(kill)
    started = time.monotonic()
    with pytest.raises(ServiceError, match=killable.uri):
        promote(settings)
    elapsed = time.monotonic() - started
    print(f"server killed at {step}: promote failed after {elapsed:.1f} s")
    assert reached == [step], f"step {step} was never reached"
    assert elapsed < 90, f"a dead server must fail the promote in seconds, took {elapsed:.0f} s"
    hooks.clear()
    killable.ensure_up()
    result = promote(settings)
    assert result["passed"]
    assert_consistent(settings, folder_hash(layout.adapter_dir))


def _params(tmp_path: Path, uri: str | None, sub: str) -> Path:
    from helpers import tiny_models
    from helpers.registry import CACHE

    doc = {
        "paths": {
            "artifacts_dir": str(tmp_path / sub / "artifacts"),
            "metrics_dir": str(tmp_path / sub / "metrics"),
            "cache_dir": str(CACHE),
        },
        "policy": {"model": tiny_models.TINY_POLICY},
        "reward": {"encoder": tiny_models.TINY_ENCODER, "max_length": 32},
        "evaluate": {"max_new_tokens": 6},
        "tracking": {"experiment": "test-promote", "artifact_location": str(tmp_path / "mlartifacts")},
    }
    if uri:
        doc["tracking"]["tracking_uri"] = uri
    path = tmp_path / f"params-{sub}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _spawn(params: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "safealign.cli", "promote", "--params", str(params), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env or dict(os.environ),
        text=True,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("race-server")
    port = free_port()
    proc = start_server(root, port)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("backend", ["sqlite", "server"])
def test_concurrent_promotes_of_one_candidate_register_it_once(n, backend, tmp_path, monkeypatch, request):
    from safealign.common.hashing import tree_hash as folder_hash
    from safealign.config import load_settings

    monkeypatch.delenv(PARENT_ENV, raising=False)
    if backend == "server":
        uri = request.getfixturevalue("server")
        experiment = f"race-{n}"
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        experiment = "test-promote"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = _params(tmp_path, None, "cand")
    doc = yaml.safe_load(params.read_text())
    doc["tracking"]["experiment"] = experiment
    doc["promote"] = {"policy_model_name": f"race-policy-{n}", "reward_model_name": f"race-reward-{n}"}
    params.write_text(yaml.safe_dump(doc))
    settings = load_settings(params)
    layout = write_candidate(settings, b"adapter-race", evaluation())
    # the experiment exists before the race (creating it concurrently is MLflow's own race, not promotion's)
    from safealign.tracking import configure

    configure(settings)
    procs = [_spawn(params) for _ in range(n)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, "\n".join(o[-3000:] for o in outputs)
    client = mlflow.MlflowClient()
    for name in (settings.promote.policy_model_name, settings.promote.reward_model_name):
        assert len(client.search_model_versions(f"name = '{name}'")) == 1, name
    assert_consistent(settings, folder_hash(layout.adapter_dir))


def test_promote_killed_mid_registration_is_repaired_by_promote_repair(tmp_path, monkeypatch):
    """A real process SIGKILLed between creating its versions and committing them (SQLite store)."""
    from safealign.config import load_settings

    monkeypatch.delenv(PARENT_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _params(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "cand")
    settings = load_settings(params)
    write_candidate(settings, b"adapter-A", evaluation())
    promote(settings)
    write_candidate(settings, b"adapter-B", evaluation(safety_aligned=0.85))
    code = (
        "import os, signal, sys\n"
        "from safealign.registry import versions\n"
        "versions.STEP_HOOKS.append(lambda s: os.kill(os.getpid(), signal.SIGKILL) "
        "if s == 'policy_registered' "
        "else None)\n"
        "from safealign.cli import main\n"
        f"sys.exit(main(['promote', '--params', {str(params)!r}]))\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    client = mlflow.MlflowClient()
    name = settings.promote.policy_model_name
    pending = [
        v for v in client.search_model_versions(f"name = '{name}'") if versions.state(v) == versions.PENDING
    ]
    assert len(pending) == 1  # the orphan the issue describes: registered, never committed
    assert name + versions.LOCK_SUFFIX in [m.name for m in client.search_registered_models()]
    report = repair_registry(settings)
    assert report["deleted"] and report["lock_broken"] and report["runs_failed"]
    assert report["promotion_json_agrees"] is True
    assert_consistent(settings, client.get_model_version_by_alias(name, "champion").tags[versions.HASH_TAG])
    # and the candidate registers cleanly afterwards
    result = promote(settings)
    assert result["policy_new_version"] is True


def test_rollback_moves_champion_back_and_refuses_without_a_previous_one(tmp_path, monkeypatch, capsys):
    from safealign.cli import main as cli_main
    from safealign.config import load_settings

    monkeypatch.delenv(PARENT_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _params(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "cand")
    settings = load_settings(params)
    name, reward_name = settings.promote.policy_model_name, settings.promote.reward_model_name
    write_candidate(settings, b"adapter-A", evaluation())
    first = promote(settings)
    # only one champion ever: refused, exit 3, champion untouched
    with pytest.raises(GateFailed, match="nothing to roll back"):
        rollback_champion(settings, "bad answers in production")
    assert cli_main(["promote", "--params", str(params), "--rollback", "--reason", "x"]) == 3
    assert "nothing to roll back" in capsys.readouterr().err
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == first["policy_version"]
    # a second candidate (different reward model too) becomes champion; rollback returns to the first
    write_candidate(settings, b"adapter-B", evaluation(safety_aligned=0.85), reward_bytes=b"reward-v2")
    second = promote(settings)
    assert second["policy_version"] != first["policy_version"]
    assert cli_main(["promote", "--params", str(params), "--rollback"]) == 2  # a reason is required
    assert cli_main(["promote", "--params", str(params), "--rollback", "--reason", "benign refusals up"]) == 0
    assert str(client.get_model_version_by_alias(name, "champion").version) == first["policy_version"]
    assert (
        str(client.get_model_version_by_alias(reward_name, "champion").version)
        == first["reward_model_version"]
    )
    stamp = json.loads(client.get_model_version(name, second["policy_version"]).tags[versions.ROLLBACK_TAG])
    assert stamp["reason"] == "benign refusals up" and stamp["to"] == first["policy_version"]
    # the record is metrics/rollback.json; promotion.json (promote's DVC output) still says the promotion
    layout = Layout.from_settings(settings)
    assert json.loads(layout.metrics_file("promotion").read_text())["champion"] == second["policy_version"]
    assert current_rollback(layout)["champion"] == first["policy_version"]
    assert repair_registry(settings)["promotion_json_agrees"] is True
    # the first champion had none before it: a second rollback is refused and changes nothing
    assert cli_main(["promote", "--params", str(params), "--rollback", "--reason", "again"]) == 3
    assert str(client.get_model_version_by_alias(name, "champion").version) == first["policy_version"]
    # the rolled-back candidate does not come back on the next pipeline run
    write_candidate(settings, b"adapter-B", evaluation(safety_aligned=0.85), reward_bytes=b"reward-v2")
    with pytest.raises(GateFailed, match="not_rolled_back"):
        promote(settings)
    assert str(client.get_model_version_by_alias(name, "champion").version) == first["policy_version"]


def test_rollback_never_recrowns_a_rolled_back_version(tmp_path, monkeypatch, capsys):
    """Issue 32 case 4: promote A, then B, then A again, then roll back three times. The previous-champion
    chain loops (A -> B -> A); following it swung the champion v1 <-> v2 and crowned v1, which carried
    `safealign.rolled_back`. Now: the first rollback goes to B, and the next ones refuse (exit 3)."""
    from safealign.cli import main as cli_main
    from safealign.config import load_settings

    monkeypatch.delenv(PARENT_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _params(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "cand")
    settings = load_settings(params)
    name = settings.promote.policy_model_name

    def champion():  # a client made after promote set the tracking URI
        return mlflow.MlflowClient().get_model_version_by_alias(name, "champion")

    write_candidate(settings, b"adapter-A", evaluation(safety_aligned=0.80))
    a = promote(settings)["policy_version"]
    write_candidate(settings, b"adapter-B", evaluation(safety_aligned=0.85), reward_bytes=b"reward-v2")
    b = promote(settings)["policy_version"]
    write_candidate(settings, b"adapter-A", evaluation(safety_aligned=0.90))
    assert promote(settings)["policy_version"] == a and str(champion().version) == a
    rollback = ["promote", "--params", str(params), "--rollback", "--reason", "r"]
    assert cli_main(rollback) == 0
    assert str(champion().version) == b and versions.ROLLBACK_TAG not in champion().tags
    capsys.readouterr()
    for _ in range(2):  # nothing earlier that was not rolled back: refused, champion stays B
        assert cli_main(rollback) == 3
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "nothing to roll back" in err[0] and f"passed over v{a}" in err[0], err
        assert str(champion().version) == b and versions.ROLLBACK_TAG not in champion().tags
    assert repair_registry(settings)["promotion_json_agrees"] is True


def test_rollback_walks_back_past_rolled_back_versions(tmp_path, monkeypatch):
    """A, B, C promoted in turn; roll back C (to B), then B: the champion is A, never a rolled-back one."""
    from safealign.config import load_settings

    monkeypatch.delenv(PARENT_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _params(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "cand")
    settings = load_settings(params)
    name = settings.promote.policy_model_name
    versions = []
    for label, safety in ((b"adapter-A", 0.80), (b"adapter-B", 0.85), (b"adapter-C", 0.90)):
        write_candidate(settings, label, evaluation(safety_aligned=safety))
        versions.append(promote(settings)["policy_version"])
    assert rollback_champion(settings, "c bad")["champion"] == versions[1]
    assert rollback_champion(settings, "b bad")["champion"] == versions[0]
    with pytest.raises(GateFailed, match="nothing to roll back"):
        rollback_champion(settings, "a bad")
    assert str(mlflow.MlflowClient().get_model_version_by_alias(name, "champion").version) == versions[0]
