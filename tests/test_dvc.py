"""dvc.yaml and `safealign run`, checked with the real DVC in a temporary copy of the project.

The copy holds the files DVC reads (dvc.yaml, params.yaml, .dvc/config, src/ for the code deps) and a
small valid data/ tracked by its own data.dvc; the project's .venv is linked in, so stage commands run the
installed `safealign`. Only the validate stage runs for real; the rest is `--dry`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from safealign import stages
from safealign.cli import build_parser
from safealign.common.layout import Layout
from safealign.config import load_settings

from helpers.dvc_project import REPO, dvc, make_project, run, sh

STAGES = list(stages.NAMES)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"), (REPO / "dvc.yaml").read_text())


# ---------------------------------------------------------------- static agreement with the code


def test_dvc_yaml_agrees_with_layout_params_and_cli():
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert list(doc["stages"]) == STAGES
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    layout = Layout.from_settings(load_settings(REPO / "params.yaml"))
    known = {
        str(p)
        for p in [
            layout.splits_dir,
            layout.validation_dir,
            layout.reward_model_dir,
            layout.calibration_dir,
            layout.policy_dir,
            layout.checkpoints_dir,
            layout.evaluation_dir,
            layout.grpo_steps_csv,
            layout.metrics_file("rounds"),  # grpo's second metrics file: the reward refresh rounds
            *(
                layout.metrics_file(s.metrics) for s in stages.STAGES
            ),
        ]
    }
    for s in stages.STAGES:  # the registry's spellings: DVC name, CLI command, metrics file
        assert doc["stages"][s.dvc]["cmd"] == f"safealign {s.cli}"
        declared = [next(iter(m)) for m in doc["stages"][s.dvc]["metrics"]]
        assert declared[0] == str(layout.metrics_file(s.metrics)), s.name  # its own first, then any extra
    for name, stage in doc["stages"].items():
        cmd = stage["cmd"].split()
        assert cmd[0] == "safealign"
        build_parser().parse_args(cmd[1:])  # a real subcommand
        for key in stage.get("params", []):
            assert key in params, f"{name}: params key {key!r} not in params.yaml"
        for dep in stage["deps"]:
            assert (REPO / dep).exists() or dep.startswith(("artifacts/", "metrics/", "data")), (
                f"{name}: {dep}"
            )
        for section in ("outs", "metrics", "plots"):
            for entry in stage.get(section, []):
                path = entry if isinstance(entry, str) else next(iter(entry))
                assert path in known, f"{name}: {section} {path} is not a Layout path"
        # everything a stage declares is cached, so `dvc push` carries it to a teammate's clone (issue 31)
        for section in ("outs", "metrics", "plots"):
            for entry in stage.get(section, []):
                assert isinstance(entry, str) or next(iter(entry.values())).get("cache", True) is True, entry
    # grpo's checkpoints are no output: a teammate without them would see grpo changed (they stay on disk
    # for a resume; DVC never deletes an undeclared folder)
    grpo_outs = [o if isinstance(o, str) else next(iter(o)) for o in doc["stages"]["grpo"]["outs"]]
    assert str(layout.checkpoints_dir) not in grpo_outs
    validate = doc["stages"]["validate"]
    assert all(next(iter(o.values()))["persist"] is True for o in validate["outs"] + validate["metrics"])
    assert {"x": "step", "y": "reward_mean"}.items() <= doc["stages"]["grpo"]["plots"][0][
        str(layout.grpo_steps_csv)
    ].items()


# ---------------------------------------------------------------- DVC itself


def test_dvc_sees_every_stage_in_order(project):
    listed = [line.split()[0] for line in dvc(project, "stage", "list").stdout.splitlines() if line.strip()]
    assert listed == STAGES
    dot = dvc(project, "dag", "--dot").stdout
    edges = {
        tuple(part.strip().strip('";') for part in line.split("->"))
        for line in dot.splitlines()
        if "->" in line
    }
    chain = ["data.dvc", *STAGES]
    assert {(a, b) for a, b in zip(chain, chain[1:], strict=False)} <= edges, dot
    assert ("calibrate", "grpo") in edges  # grpo waits for the calibration gate
    status = json.loads(dvc(project, "status", "--json").stdout)
    assert set(status) == set(STAGES)  # nothing has run yet; data.dvc itself is in sync
    # --dry plans only what it can (dvc#9021: it stops where an upstream output does not exist yet)
    dry = dvc(project, "repro", "--dry", "validate").stdout
    assert "Running stage 'validate'" in dry and "> safealign validate" in dry
    assert not (project / "artifacts").exists()


def test_pipeline_runs_validate_under_a_parent_run_skips_it_unchanged_and_detects_a_data_change(project):
    out = run(project, "--until", "validate")
    parent = out.stdout.split("== MLflow parent run ")[1].split()[0]
    assert "Running stage 'validate'" in out.stdout
    assert "artifacts/validation/report.html" in out.stdout and "mlflow ui" in out.stdout
    assert (project / "artifacts" / "splits" / "labelled_train.jsonl").is_file()
    assert json.loads((project / "metrics" / "validation.json").read_text())["success"] is True
    assert "validate" in yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert json.loads(dvc(project, "status", "--json", "validate").stdout) == {}

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert client.get_run(parent).info.status == "FINISHED"
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert [(r.data.tags["safealign.stage"], r.info.status) for r in children] == [("validate", "FINISHED")]

    again = run(project, "--until", "validate")
    assert "every stage is up to date" in again.stdout and "MLflow parent run" not in again.stdout

    labelled = project / "data" / "labelled.jsonl"
    original = labelled.read_bytes()
    try:
        labelled.write_bytes(original.replace(b"Response number 1.", b"Response number one.", 1))
        data_status = json.loads(dvc(project, "status", "--json", "data.dvc").stdout)
        assert data_status == {"data.dvc": [{"changed outs": {"data": "modified"}}]}
        stage_status = json.loads(dvc(project, "status", "--json", "validate").stdout)
        assert stage_status["validate"][0]["changed deps"]["data"] == "modified"
        # the pipeline refuses to run on data that DVC does not confirm, and leaves it alone
        out = run(project, "--until", "validate", check=False)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "data/ does not match data.dvc" in out.stderr and "Running stage" not in out.stdout
        assert labelled.read_bytes() != original
    finally:
        labelled.write_bytes(original)
    assert json.loads(dvc(project, "status", "--json", "data.dvc").stdout) == {}

    # a failing stage: the run exits with the stage's own code (DVC itself exits 255), the parent run FAILED
    params_path = project / "params.yaml"
    params_text = params_path.read_text()
    params = yaml.safe_load(params_text)
    params["data"]["min_rows"] = 1_000_000
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    def outputs() -> dict[str, bytes]:
        files = [
            *(project / "artifacts" / "splits").rglob("*"),
            *(project / "artifacts" / "validation").rglob("*"),
        ]
        files.append(project / "metrics" / "validation.json")
        return {str(f.relative_to(project)): f.read_bytes() for f in files if f.is_file()}

    before = outputs()
    try:
        out = run(project, "--until", "validate", check=False)
    finally:
        params_path.write_text(params_text)
    assert out.returncode == 2, out.stdout + out.stderr
    assert outputs() == before  # DVC did not delete them first (persist), validate did not replace them
    assert "1000000" in out.stdout and "FAILED (exit 2)" in out.stdout
    failed_parent = out.stdout.split("== MLflow parent run ")[1].split()[0]
    assert client.get_run(failed_parent).info.status == "FAILED"


def test_outputs_missing_only_from_the_cache_are_committed_not_rerun(project):
    """A workspace that ran validate when metrics were `cache: false` has metrics/validation.json equal to
    dvc.lock but not in the cache; DVC calls that a changed stage. `safealign run` commits such outputs
    instead of rerunning the stage (else the switch to cached metrics, issue 31, reran every stage once)."""
    run(project, "--until", "validate")
    lock_text = (project / "dvc.lock").read_text()
    outs = yaml.safe_load(lock_text)["stages"]["validate"]["outs"]
    md5 = next(o["md5"] for o in outs if o["path"] == "metrics/validation.json")
    (project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).unlink()
    assert json.loads(dvc(project, "status", "--json", "validate").stdout) == {
        "validate": [{"changed outs": {"metrics/validation.json": "not in cache"}}]}
    out = run(project, "--until", "validate").stdout
    assert "put into the DVC cache (not rerun): validate" in out and "every stage is up to date" in out, out
    assert "Running stage" not in out
    assert json.loads(dvc(project, "status", "--json", "validate").stdout) == {}
    assert (project / "dvc.lock").read_text() == lock_text


def test_run_restores_missing_data_from_the_dvc_cache(project):
    before = {p.name: p.read_bytes() for p in (project / "data").iterdir()}
    shutil.rmtree(project / "data")
    out = run(project, "--data-only")
    assert "restored from the DVC cache" in out.stdout
    assert "data/ matches data.dvc" in out.stdout
    assert {p.name: p.read_bytes() for p in (project / "data").iterdir()} == before


def test_run_refuses_without_data_dvc(project, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    out = run(bare, "--data-only", check=False)
    assert out.returncode == 2
    assert "data.dvc is missing" in out.stderr


def test_data_check_does_not_depend_on_the_dvc_cache(project):
    """On a fresh clone the cache is empty: `dvc status` says 'not in cache' for good and bad data alike."""
    labelled = project / "data" / "labelled.jsonl"
    original = labelled.read_bytes()
    shutil.rmtree(project / ".dvc" / "cache", ignore_errors=True)
    out = run(project, "--data-only")
    assert "data/ matches data.dvc" in out.stdout
    assert json.loads(dvc(project, "status", "--json", "data.dvc").stdout) == {}  # now cached
    shutil.rmtree(project / ".dvc" / "cache")
    try:
        labelled.write_bytes(original.replace(b"Response number 3.", b"Response number three.", 1))
        out = run(project, "--data-only", check=False)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "does not match data.dvc" in out.stderr and "modified" in out.stderr
    finally:
        labelled.write_bytes(original)
    run(project, "--data-only")


def test_fresh_clone_rebuilds_data_that_dvc_confirms(tmp_path):
    """The committed data.dvc must match what `safealign data build` produces (no cache, no network)."""
    if not (REPO / ".git").exists() or sh(REPO, "git", "ls-files", "data.dvc").stdout.strip() != "data.dvc":
        pytest.skip("data.dvc is not committed in this checkout")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(REPO), str(clone))
    (clone / ".venv").symlink_to(REPO / ".venv")
    out = run(clone, "--data-only")
    assert "rebuilding it deterministically" in out.stdout
    assert "data/ matches data.dvc" in out.stdout


def test_run_until_an_unknown_stage_exits_2_naming_the_stages(project):
    out = run(project, "--until", "reward", check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--until: unknown stage 'reward' (stages: validate, train_reward," in out.stderr
