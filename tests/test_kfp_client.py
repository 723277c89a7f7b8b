"""`safealign pipeline submit|schedule` against a local HTTP server that speaks KFP's v2beta1 REST API.

The server is a real socket on 127.0.0.1 (a free port); kfp.Client talks to it exactly as it would to a
cluster, and the test asserts the request bodies: experiment, pipeline spec, parameters (params, data
version, tracking URI), cron, max concurrency 1 and no catch-up. In multi-user mode it behaves like the
KFP API server behind Kubeflow's auth: a request without a valid bearer token is answered 401, one for a
namespace the token may not use 403, both with the gRPC-gateway error body the real server sends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from safealign.cli import main
from safealign.config import load_settings
from safealign.errors import ConfigError, ServiceError
from safealign.kfp.client import normalize_cron, schedule_run, submit_run
from safealign.kfp.deploy import read_package, root_parameters

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipelines" / "align.yaml"
# What a cluster run needs: MLflow and the object store by the names the pods can resolve.
CLUSTER_MLFLOW = "http://safealign-mlflow.team.svc.cluster.local:5000"
CLUSTER_S3 = "http://safealign-minio.team.svc.cluster.local:9000"
# ...and an image the cluster can pull (a registry reference, not the local tag `make image` builds).
CLUSTER_IMAGE = "reg.test/team/safealign:0.1.0"
CLUSTER = [f"pipeline.tracking_uri={CLUSTER_MLFLOW}", "pipeline.dvc_remote_url=s3://dvc",
           f"pipeline.dvc_endpoint_url={CLUSTER_S3}", f"pipeline.image={CLUSTER_IMAGE}"]
IMAGE_ARG = ["--image", CLUSTER_IMAGE]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # kfp.Client reads ~/.config/kfp/context.json; MLFLOW_TRACKING_URI would change the tracking parameter.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    monkeypatch.delenv("SAFEALIGN_KFP_TOKEN", raising=False)
    # a cluster's MLflow and DVC remote, as the CronJob's ConfigMap gives them (the refusal tests drop them)
    monkeypatch.setenv("SAFEALIGN_PIPELINE_TRACKING_URI", CLUSTER_MLFLOW)
    monkeypatch.setenv("SAFEALIGN_DVC_REMOTE_URL", "s3://dvc")
    monkeypatch.setenv("SAFEALIGN_DVC_ENDPOINT_URL", CLUSTER_S3)


def _pipeline_spec_name(body: dict) -> str:
    return body["pipeline_spec"]["pipelineInfo"]["name"]


def test_submit_creates_experiment_and_run_with_parameters(kfp_server):
    settings = load_settings(ROOT / "params.yaml", ["grpo.steps=7", *CLUSTER])
    result = submit_run(settings, host=kfp_server.host, package=PACKAGE, data_version="md5-abc")
    assert result["run_id"] == "run-1"

    (exp,) = kfp_server.posts("/apis/v2beta1/experiments")
    assert exp["display_name"] == settings.pipeline.experiment == "align"
    (run,) = kfp_server.posts("/apis/v2beta1/runs")
    assert run["experiment_id"] == "exp-1"
    assert _pipeline_spec_name(run) == "align"
    assert run["pipeline_spec"] == yaml.safe_load(PACKAGE.read_text())
    args = run["runtime_config"]["parameters"]
    assert args["data_version"] == "md5-abc"
    assert args["tracking_uri"] == CLUSTER_MLFLOW
    assert (args["dvc_remote_url"], args["dvc_endpoint_url"]) == ("s3://dvc", CLUSTER_S3)
    assert args["data_dir"] == ""  # the steps pull data/ from the remote; this machine's folder is not there
    assert json.loads(args["params"])["grpo"]["steps"] == 7  # --set overrides travel with the run


def test_submit_reuses_existing_experiment(kfp_server):
    settings = load_settings(ROOT / "params.yaml", CLUSTER)
    submit_run(settings, host=kfp_server.host, package=PACKAGE, data_version="v1")
    submit_run(settings, host=kfp_server.host, package=PACKAGE, data_version="v2")
    assert len(kfp_server.posts("/apis/v2beta1/experiments")) == 1
    runs = kfp_server.posts("/apis/v2beta1/runs")
    assert [r["runtime_config"]["parameters"]["data_version"] for r in runs] == ["v1", "v2"]


def test_schedule_creates_recurring_run_max_concurrency_1_no_catchup(kfp_server):
    settings = load_settings(ROOT / "params.yaml", CLUSTER)
    result = schedule_run(settings, cron="0 3 * * *", host=kfp_server.host, package=PACKAGE)
    assert result["recurring_run_id"] == "rr-1"
    (rr,) = kfp_server.posts("/apis/v2beta1/recurringruns")
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert int(rr["max_concurrency"]) == 1
    assert rr["no_catchup"] is True
    assert rr["mode"] == "ENABLE"
    assert rr["experiment_id"] == "exp-1"
    assert _pipeline_spec_name(rr) == "align"
    params = rr["runtime_config"]["parameters"]
    # Frozen parameters: the data version is resolved per run, so changed data busts the cache.
    assert params["data_version"] == ""
    assert json.loads(params["params"])["pipeline"]["experiment"] == "align"


def test_cli_schedule_prints_ids(kfp_server, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    # the cluster's names from the environment (the CronJob's ConfigMap), not from params.yaml
    monkeypatch.setenv("MLFLOW_TRACKING_URI", CLUSTER_MLFLOW)
    monkeypatch.setenv("SAFEALIGN_DVC_REMOTE_URL", "s3://dvc")
    monkeypatch.setenv("SAFEALIGN_DVC_ENDPOINT_URL", CLUSTER_S3)
    code = main(["pipeline", "schedule", *IMAGE_ARG, "--host", kfp_server.host, "--cron", "0 0 4 * * 1"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cron"] == "0 0 4 * * 1" and out["recurring_run_id"] == "rr-1"
    (rr,) = kfp_server.posts("/apis/v2beta1/recurringruns")
    assert rr["runtime_config"]["parameters"]["tracking_uri"] == CLUSTER_MLFLOW


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "file:///tmp/mlruns", "mlruns", "http://127.0.0.1:15000",
                                 "http://localhost:5000"])
def test_submit_refuses_a_tracking_store_the_pods_cannot_share(kfp_server, uri, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("SAFEALIGN_PIPELINE_TRACKING_URI")
    settings = load_settings(
        ROOT / "params.yaml", [*CLUSTER, "pipeline.tracking_uri=", f"tracking.tracking_uri={uri}"]
    )
    with pytest.raises(ConfigError, match="pipeline.tracking_uri") as err:
        submit_run(settings, host=kfp_server.host, package=PACKAGE, data_version="v1")
    assert repr(uri) in str(err.value)
    code = main(["pipeline", "submit", *IMAGE_ARG, "--host", kfp_server.host,
                 "--set", f"tracking.tracking_uri={uri}", "--set", "pipeline.dvc_remote_url=s3://dvc"])
    assert code == 2 and "pipeline.tracking_uri" in capsys.readouterr().err
    assert kfp_server.requests == []  # refused before the KFP API was contacted


def test_submit_refuses_local_data_dir_without_a_dvc_remote(kfp_server, monkeypatch):
    monkeypatch.delenv("SAFEALIGN_DVC_REMOTE_URL")
    monkeypatch.delenv("SAFEALIGN_DVC_ENDPOINT_URL")
    settings = load_settings(ROOT / "params.yaml", [f"pipeline.tracking_uri={CLUSTER_MLFLOW}"])
    with pytest.raises(ConfigError, match="data_dir 'data' is a folder on this machine"):
        submit_run(settings, host=kfp_server.host, package=PACKAGE, data_version="v1")
    local_endpoint = [*CLUSTER, "pipeline.dvc_endpoint_url=http://127.0.0.1:18333"]
    with pytest.raises(ConfigError, match="names this machine"):
        submit_run(load_settings(ROOT / "params.yaml", local_endpoint), host=kfp_server.host, package=PACKAGE)
    assert kfp_server.requests == []


def test_submit_takes_the_cluster_uri_from_the_environment(kfp_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///laptop.db")  # this machine's own store
    settings = load_settings(ROOT / "params.yaml", CLUSTER[1:])
    submit_run(settings, host=kfp_server.host, package=PACKAGE, data_version="v1")
    (run,) = kfp_server.posts("/apis/v2beta1/runs")
    assert run["runtime_config"]["parameters"]["tracking_uri"] == CLUSTER_MLFLOW


def test_submit_data_rev_sends_data_dvc_md5_at_that_revision(kfp_server, tmp_path, monkeypatch):
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    for md5 in ("1" * 32 + ".dir", "2" * 32 + ".dir"):
        (repo / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": md5, "path": "data"}]}))
        subprocess.run([*git, "add", "data.dvc"], check=True)
        subprocess.run([*git, "commit", "-qm", md5], check=True)
    monkeypatch.chdir(repo)
    settings = load_settings(ROOT / "params.yaml", CLUSTER)
    assert submit_run(settings, host=kfp_server.host, package=PACKAGE, data_rev="HEAD~1")["data_version"] == (
        "1" * 32 + ".dir")
    assert submit_run(settings, host=kfp_server.host, package=PACKAGE)["data_version"] == "2" * 32 + ".dir"
    with pytest.raises(Exception, match="no-such-rev"):
        submit_run(settings, host=kfp_server.host, package=PACKAGE, data_rev="no-such-rev")


def test_unreachable_host_is_a_service_error(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_settings(ROOT / "params.yaml", CLUSTER)
    with pytest.raises(ServiceError, match=str(port)):
        submit_run(settings, host=f"http://127.0.0.1:{port}", package=PACKAGE, data_version="x")


def test_missing_package_and_bad_cron_are_config_errors(kfp_server, tmp_path):
    settings = load_settings(ROOT / "params.yaml")
    with pytest.raises(ConfigError, match="not found"):
        submit_run(settings, host=kfp_server.host, package=tmp_path / "nope.yaml")
    gpu = load_settings(ROOT / "params.yaml", ["pipeline.gpu=true"])
    with pytest.raises(ConfigError, match="align-gpu.yaml"):  # a CPU file with pipeline.gpu on
        submit_run(gpu, host=kfp_server.host, package=PACKAGE)
    with pytest.raises(ConfigError, match="5 or 6 fields"):
        normalize_cron("every day")
    assert kfp_server.requests == []


def _spec(body: dict) -> dict:
    """The run's PipelineSpec; kfp.Client nests it beside the platform spec when the file has one."""
    spec = body["pipeline_spec"]
    return spec.get("pipeline_spec", spec)


def _images(body: dict) -> dict[str, str]:
    return {n: e["container"]["image"] for n, e in _spec(body)["deploymentSpec"]["executors"].items()}


def _required(body: dict) -> set[str]:
    """The root parameters the uploaded spec declares without a default: what every run must pass."""
    params = _spec(body)["root"]["inputDefinitions"]["parameters"]
    return {n for n, d in params.items() if "defaultValue" not in d}


def test_submit_resolves_images_at_submit_time(kfp_server, capsys, monkeypatch):
    """--image becomes the run's `image` parameter (the steps' image); with pipeline.gpu the GPU file also
    takes `cuda_image`, IMAGE-cuda by default. The package itself is uploaded as compiled."""
    monkeypatch.chdir(ROOT)
    code = main(["pipeline", "submit", "--host", kfp_server.host, "--data-version", "v1",
                 "--image", "reg.test/team/safealign:2.0"])
    assert code == 0, capsys.readouterr().err
    (run,) = kfp_server.posts("/apis/v2beta1/runs")
    assert set(_images(run).values()) == {"{{$.inputs.parameters['pipelinechannel--image']}}"}
    args = run["runtime_config"]["parameters"]
    assert args["image"] == "reg.test/team/safealign:2.0" and "cuda_image" not in args
    assert _required(run) <= set(args)  # every parameter without a default travels with the run
    assert json.loads(capsys.readouterr().out)["image"] == "reg.test/team/safealign:2.0"

    # GPU mode from params alone: the default package becomes align-gpu.yaml, the CUDA image follows.
    code = main(["pipeline", "submit", "--host", kfp_server.host, "--data-version", "v2",
                 "--set", "pipeline.gpu=true", "--set", "pipeline.image=reg.test/sa:3"])
    assert code == 0, capsys.readouterr().err
    gpu_run = kfp_server.posts("/apis/v2beta1/runs")[-1]
    images = _images(gpu_run)
    gpu_steps = ("exec-grpo-op", "exec-evaluate-op", "exec-generate-op")
    assert {images.pop(n) for n in gpu_steps} == {"{{$.inputs.parameters['pipelinechannel--cuda_image']}}"}
    assert set(images.values()) == {"{{$.inputs.parameters['pipelinechannel--image']}}"}
    args = gpu_run["runtime_config"]["parameters"]
    assert (args["image"], args["cuda_image"]) == ("reg.test/sa:3", "reg.test/sa:3-cuda")
    assert _required(gpu_run) <= set(args)
    accel = _spec(gpu_run)["deploymentSpec"]["executors"]["exec-grpo-op"]["container"]["resources"]
    assert accel["accelerator"]["resourceType"] == "nvidia.com/gpu"
    platform = gpu_run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]
    assert set(gpu_steps) == set(platform["executors"])


@pytest.mark.parametrize("command", [["submit"], ["schedule", "--cron", "0 3 * * *"]])
def test_an_image_no_cluster_can_pull_is_refused_with_exit_2(kfp_server, capsys, monkeypatch, command):
    """params.yaml's pipeline.image is the local tag `make image` builds: without --image, submit and
    schedule refuse it (exit 2, naming what to pass) instead of sending it to the cluster."""
    monkeypatch.chdir(ROOT)
    code = main(["pipeline", *command, "--host", kfp_server.host, "--data-version", "v1"])
    err = capsys.readouterr().err
    assert code == 2 and "pipeline.image 'safealign:0.1.0'" in err and "--image REGISTRY/safealign:TAG" in err
    for bad in ("safealign:0.1.0", "reg.test/safealign", "Reg.Test/SafeAlign:1"):
        code = main(["pipeline", *command, "--host", kfp_server.host, "--image", bad])
        assert code == 2 and repr(bad) in capsys.readouterr().err, bad
    assert kfp_server.requests == []  # refused before the KFP API was contacted


def test_cronjob_empty_data_version_travels_empty(kfp_server, capsys, monkeypatch):
    """The retraining CronJob passes `--data-version ""`: the run must get an empty version (the step then
    pulls what the image's data.dvc names and keys the cache on the pulled data), not the md5 that submit
    would otherwise read from the image's data.dvc."""
    monkeypatch.chdir(ROOT)
    code = main(["pipeline", "submit", *IMAGE_ARG, "--host", kfp_server.host, "--data-version", ""])
    assert code == 0, capsys.readouterr().err
    (run,) = kfp_server.posts("/apis/v2beta1/runs")
    assert run["runtime_config"]["parameters"]["data_version"] == ""
    assert run["display_name"] == "align-latest"


def test_multi_user_namespace_and_token(kfp_server, tmp_path, capsys, monkeypatch):
    kfp_server.tokens = {"s3cret": {"team-a"}}
    monkeypatch.chdir(ROOT)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    code = main(["pipeline", "submit", *IMAGE_ARG, "--host", kfp_server.host, "--data-version", "v1",
                 "--namespace", "team-a", "--token-file", str(token_file)])
    assert code == 0, capsys.readouterr().err
    (exp,) = kfp_server.posts("/apis/v2beta1/experiments")
    assert exp["namespace"] == "team-a"
    (run,) = kfp_server.posts("/apis/v2beta1/runs")
    assert run["experiment_id"] == kfp_server.experiments["align"]["experiment_id"]
    lookups = [u for m, u, _ in kfp_server.requests if m == "GET" and "/experiments" in u]
    assert lookups and all(parse_qs(urlparse(u).query)["namespace"] == ["team-a"] for u in lookups)
    api_calls = [h for (m, u, _), h in zip(kfp_server.requests, kfp_server.headers, strict=True)
                 if "healthz" not in u]
    assert api_calls and all(h.get("authorization") == "Bearer s3cret" for h in api_calls)
    capsys.readouterr()

    # The same from the environment, for a recurring run; namespace from params.
    monkeypatch.setenv("SAFEALIGN_KFP_TOKEN", "s3cret")
    code = main(["pipeline", "schedule", *IMAGE_ARG, "--host", kfp_server.host, "--cron", "0 3 * * *",
                 "--set", "pipeline.namespace=team-a"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["namespace"] == "team-a"
    assert len(kfp_server.posts("/apis/v2beta1/recurringruns")) == 1


def test_401_without_token_is_a_clear_exit_1(kfp_server, capsys, monkeypatch):
    kfp_server.tokens = {"s3cret": {"team-a"}}
    monkeypatch.chdir(ROOT)
    code = main(["pipeline", "submit", *IMAGE_ARG, "--host", kfp_server.host, "--data-version", "v1",
                 "--namespace", "team-a"])
    err = capsys.readouterr().err
    assert code == 1
    assert "401 Unauthorized" in err and "--token-file" in err and kfp_server.host in err
    assert kfp_server.posts("/apis/v2beta1/runs") == []


def test_403_for_a_namespace_the_token_may_not_use_is_a_clear_exit_1(
    kfp_server, tmp_path, capsys, monkeypatch
):
    kfp_server.tokens = {"s3cret": {"team-a"}}
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SAFEALIGN_KFP_TOKEN", "s3cret")
    code = main(["pipeline", "schedule", *IMAGE_ARG, "--host", kfp_server.host, "--cron", "0 3 * * *",
                 "--namespace", "team-b"])
    err = capsys.readouterr().err
    assert code == 1
    assert "403 Forbidden" in err and "'team-b'" in err and "--namespace" in err
    assert kfp_server.posts("/apis/v2beta1/recurringruns") == []
    empty = tmp_path / "empty"
    empty.write_text("")
    code = main(["pipeline", "submit", *IMAGE_ARG, "--host", kfp_server.host, "--token-file", str(empty)])
    assert code == 2 and "token file is empty" in capsys.readouterr().err


def _kfp(host: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The pinned kfp CLI, exactly as a user types it (the command lines docs/kfp.md shows)."""
    kfp_cli = Path(sys.executable).parent / "kfp"
    return subprocess.run([str(kfp_cli), "--endpoint", host, *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


# What docs/kfp.md tells a kfp CLI user to pass: every parameter the compiled file has no default for.
DOCUMENTED_ARGS = [f"image={CLUSTER_IMAGE}", f"tracking_uri={CLUSTER_MLFLOW}", "dvc_remote_url=s3://dvc",
                   f"dvc_endpoint_url={CLUSTER_S3}"]


def test_documented_kfp_cli_commands_work(kfp_server, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    # `kfp run submit FILE` (the card's form) fails; the file goes with -f and an experiment with -e.
    bare = _kfp(kfp_server.host, "run", "submit", "pipelines/align.yaml", env=env)
    assert bare.returncode != 0 and "--experiment-name" in bare.stderr
    created = _kfp(kfp_server.host, "run", "create", "-e", "align", "-r", "align-manual", "-f",
                   "pipelines/align.yaml", *DOCUMENTED_ARGS, "data_version=v1", env=env)
    assert created.returncode == 0, created.stderr
    submitted = _kfp(kfp_server.host, "run", "submit", "-e", "align", "-f", "pipelines/align.yaml",
                     *DOCUMENTED_ARGS, env=env)
    assert submitted.returncode == 0, submitted.stderr  # the deprecated alias of `run create`
    runs = kfp_server.posts("/apis/v2beta1/runs")
    assert [r["display_name"] for r in runs] == ["align-manual", "align"]
    args = runs[0]["runtime_config"]["parameters"]
    assert args == {**dict(a.split("=", 1) for a in DOCUMENTED_ARGS), "data_version": "v1"}
    assert _spec(runs[0]) == yaml.safe_load(PACKAGE.read_text())
    # The compiled file has no default for these: a run that omits one has nothing to fall back on
    # (before, it fell back on safealign:0.1.0, sqlite:///mlflow.db, data/ and no DVC remote).
    assert _required(runs[0]) == {"image", "tracking_uri", "dvc_remote_url"}
    assert all(_required(r) <= set(r["runtime_config"]["parameters"]) for r in runs)
    scheduled = _kfp(kfp_server.host, "recurring-run", "create", "--experiment-name", "align",
                     "--job-name", "align-weekly",
                     "--cron-expression", "0 0 3 * * 1", "--max-concurrency", "1", "--no-catchup",
                     "--pipeline-package-path", "pipelines/align.yaml", *DOCUMENTED_ARGS, env=env)
    assert scheduled.returncode == 0, scheduled.stderr
    (rr,) = kfp_server.posts("/apis/v2beta1/recurringruns")
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1" and rr["no_catchup"] is True
    assert int(rr["max_concurrency"]) == 1
    assert _required(rr) <= set(rr["runtime_config"]["parameters"])


def test_docs_kfp_commands_pass_every_required_parameter():
    """Each kfp CLI command in docs/kfp.md names every parameter the committed files require."""
    doc = (ROOT / "docs" / "kfp.md").read_text(encoding="utf-8")
    commands = [line for line in doc.splitlines() if "kfp --endpoint" in line and (
        "run create" in line or "recurring-run create" in line)]
    assert commands
    for package in ("align.yaml", "align-gpu.yaml"):
        params = root_parameters(read_package(ROOT / "pipelines" / package))
        required = {n for n, d in params.items() if "defaultValue" not in d}
        for line in commands:
            if package in line:
                missing = {n for n in required if f"{n}=" not in line}
                assert not missing, (package, line, missing)


def test_documented_kfp_cli_multi_user_form(kfp_server, tmp_path):
    kfp_server.tokens = {"s3cret": {"team-a"}}
    env = {**os.environ, "HOME": str(tmp_path)}
    denied = _kfp(kfp_server.host, "run", "create", "-e", "align", "-f", "pipelines/align.yaml", env=env)
    assert denied.returncode != 0 and "401" in denied.stderr + denied.stdout
    wrong = _kfp(kfp_server.host, "--namespace", "team-b", "--existing-token", "s3cret", "run", "create",
                 "-e", "align", "-f", "pipelines/align.yaml", env=env)
    assert wrong.returncode != 0 and "403" in wrong.stderr + wrong.stdout
    created = _kfp(kfp_server.host, "--namespace", "team-a", "--existing-token", "s3cret", "run", "create",
                   "-e", "align", "-f", "pipelines/align.yaml", *DOCUMENTED_ARGS, env=env)
    assert created.returncode == 0, created.stderr
    (exp,) = kfp_server.posts("/apis/v2beta1/experiments")
    assert exp["namespace"] == "team-a"
