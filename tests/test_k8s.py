"""Kubernetes manifests, checked offline: kustomize render, schema validation, security scan, contracts.

Tools come from .venv-ops (`make setup`, requirements-ops.txt): kubectl (its built-in kustomize renders the
overlays), kubernetes-validate (ships the Kubernetes JSON schemas) and checkov. Nothing talks to a cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from safealign.config import load_settings
from safealign.policy.trl_engine import check_trl_supported

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / ".venv-ops" / "bin"
OVERLAYS = ["dev", "prod"]
# The GRPO training job renders separately (k8s/trainjob, kept out of the base); its built-in objects
# (the inputs Job) go through the same schema and security checks.
TRAINJOB_OVERLAYS = ["dev/trainjob", "prod/trainjob"]
# Custom resources have no schema in kubernetes-validate (it knows built-in kinds only); they are checked
# by the contract tests below instead.
CRD_KINDS = {"TrainJob"}
POD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob"}


def _tool(name: str) -> Path:
    path = OPS / name
    if not path.exists():
        pytest.skip(f"{path} missing: `make setup` installs requirements-ops.txt into .venv-ops")
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    kubectl = _tool("kubectl")
    out_dir = tmp_path_factory.mktemp("k8s")
    files = {}
    for overlay in OVERLAYS + TRAINJOB_OVERLAYS:
        proc = subprocess.run(
            [str(kubectl), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        files[overlay] = out_dir / f"{overlay.replace('/', '-')}.yaml"
        files[overlay].write_text(proc.stdout)
    return files


def _objects(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pod_spec(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS + TRAINJOB_OVERLAYS)
def test_overlay_validates_against_kubernetes_schemas(rendered, overlay, tmp_path):
    validator = _tool("kubernetes-validate")
    builtin = [o for o in _objects(rendered[overlay]) if o["kind"] not in CRD_KINDS]
    target = tmp_path / "builtin.yaml"
    target.write_text(yaml.safe_dump_all(builtin))
    proc = subprocess.run(
        [str(validator), "--strict", "--kubernetes-version", "1.33", str(target)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" passed for resource ") == len(builtin), proc.stdout


def test_checkov_finds_nothing_unjustified(rendered, tmp_path):
    checkov = _tool("checkov")
    for path in rendered.values():
        (tmp_path / path.name).write_text(path.read_text())
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    proc = subprocess.run(
        # --skip-download: offline, no platform metadata (so no severities: every failure counts).
        [str(checkov), "--framework", "kubernetes", "-d", str(tmp_path), "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    for rep in reports:
        assert rep["summary"]["parsing_errors"] == 0
        assert rep["summary"]["passed"] > 100
        failed = [(c["check_id"], c["resource"]) for c in rep["results"]["failed_checks"]]
        assert failed == [], failed
        for skipped in rep["results"]["skipped_checks"]:
            reason = skipped["check_result"].get("suppress_comment") or ""
            assert len(reason) > 20, (
                f"{skipped['check_id']} on {skipped['resource']} skipped without a reason"
            )


@pytest.mark.parametrize("overlay", OVERLAYS + TRAINJOB_OVERLAYS)
def test_pods_are_non_root_bounded_and_take_secrets_by_reference(rendered, overlay):
    objects = _objects(rendered[overlay])
    assert not [o for o in objects if o["kind"] == "Secret"], "secrets must not be inlined in manifests"
    pods = [o for o in objects if o["kind"] in POD_KINDS]
    assert len(pods) >= (5 if overlay in OVERLAYS else 1)
    for obj in pods:
        spec = _pod_spec(obj)
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] >= 10000, name
        assert obj["metadata"]["namespace"] == ("safealign-dev" if overlay.startswith("dev") else "safealign")
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"], name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)
            for env in container.get("env", []):
                if any(word in env["name"] for word in ("PASSWORD", "SECRET", "ACCESS_KEY", "USER")):
                    assert "secretKeyRef" in env.get("valueFrom", {}), (name, env["name"])


def test_mlflow_uses_postgres_and_minio_and_minio_hosts_dvc_bucket(rendered):
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _objects(rendered["prod"])}
    mlflow = objects[("Deployment", "safealign-mlflow")]
    args = " ".join(_pod_spec(mlflow)["containers"][0]["args"])
    assert "--backend-store-uri=postgresql+psycopg2://" in args and "safealign-postgres:5432" in args
    assert "--artifacts-destination=s3://" in args and "--serve-artifacts" in args
    config = objects[("ConfigMap", "safealign-config")]["data"]
    assert config["MLFLOW_S3_ENDPOINT_URL"] == "http://safealign-minio.safealign.svc.cluster.local:9000"
    buckets = " ".join(_pod_spec(objects[("Job", "safealign-minio-buckets")])["containers"][0]["args"])
    assert "$MLFLOW_BUCKET" in buckets and "$DVC_BUCKET" in buckets and config["DVC_BUCKET"] == "dvc"
    role = objects[("Role", "safealign-pipeline-runner")]
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"])
    binding = objects[("RoleBinding", "safealign-pipeline-runner")]
    assert binding["subjects"][0]["name"] == "safealign-pipeline-runner"


def test_scheduled_retraining(rendered):
    image = load_settings(ROOT / "params.yaml").pipeline.image
    for overlay in OVERLAYS:
        objects = {(o["kind"], o["metadata"]["name"]): o for o in _objects(rendered[overlay])}
        assert not [k for k in objects if k[0] == "TrainJob"], "applying an overlay must not start a training"
        cron = objects[("CronJob", "safealign-retrain")]
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"  # max concurrency 1
        container = _pod_spec(cron)["containers"][0]
        assert container["command"] == ["safealign", "pipeline", "submit"]
        assert container["image"].endswith(f"/{image}") or container["image"] == image
        assert _pod_spec(cron)["serviceAccountName"] == "safealign-pipeline-runner"
        # Scheduled runs' steps pull the same image as the CronJob itself (resolved at submit time).
        args = container["args"]
        assert args[args.index("--image") + 1] == "$(SAFEALIGN_IMAGE)"
        assert objects[("ConfigMap", "safealign-config")]["data"]["SAFEALIGN_IMAGE"] == container["image"]


def test_trainjob_overlays(rendered):
    image = load_settings(ROOT / "params.yaml").pipeline.image
    for overlay in TRAINJOB_OVERLAYS:
        objects = {(o["kind"], o["metadata"]["name"]): o for o in _objects(rendered[overlay])}
        job = objects[("TrainJob", "safealign-grpo")]
        assert job["spec"]["suspend"] is True  # waits for its inputs (docs/kfp.md)
        trainer = job["spec"]["trainer"]
        assert trainer["image"].endswith(f"{image}-cuda")
        script = " ".join(trainer["args"])
        assert "accelerate launch --multi_gpu" in script and "grpo.engine=trl" in script
        # the job's overrides on params.yaml must be settings the TRL engine accepts
        # (it refuses what it ignores)
        overrides = re.findall(r"--set (\S+)", script)
        check_trl_supported(load_settings(ROOT / "params.yaml", overrides))
        gpus = trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]
        env = {e["name"]: e["value"] for e in trainer["env"]}
        assert env["GPUS_PER_NODE"] == gpus and env["MLFLOW_TRACKING_URI"].startswith("http://")
        # The inputs Job writes exactly where the TrainJob reads.
        inputs = _pod_spec(objects[("Job", "safealign-grpo-inputs")])["containers"][0]
        inputs_paths = set(re.findall(r"paths\.\w+=[^\s\";]+", " ".join(inputs["args"])))
        assert inputs_paths == {o for o in overrides if o.startswith("paths.")}
        assert inputs["image"].endswith(image)
    prod = {(o["kind"], o["metadata"]["name"]): o for o in _objects(rendered["prod/trainjob"])}
    assert prod[("TrainJob", "safealign-grpo")]["spec"]["trainer"]["numNodes"] == 2


def test_serving_deployment_serves_the_champion_policy(rendered):
    settings = load_settings(ROOT / "params.yaml")
    for overlay in OVERLAYS:
        objects = {(o["kind"], o["metadata"]["name"]): o for o in _objects(rendered[overlay])}
        deployment = objects[("Deployment", "safealign-policy-serving")]
        container = _pod_spec(deployment)["containers"][0]
        assert container["command"] == ["mlflow", "models", "serve"]
        args = container["args"]
        assert f"--model-uri=models:/{settings.promote.policy_model_name}@champion" in args
        assert "--env-manager=local" in args  # the image holds the code and the base; no install at start
        port = container["ports"][0]["containerPort"]
        assert f"--port={port}" in args
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/ping", "port": port}
        assert {"configMapRef": {"name": "safealign-config"}} in container["envFrom"]  # MLFLOW_TRACKING_URI
        service = objects[("Service", "safealign-policy-serving")]
        assert service["spec"]["ports"][0]["targetPort"] == port
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def _shell_commands(line: str) -> list[str]:
    """The simple commands of a container's command line (`sh -c` scripts split at && ; || and newlines)."""
    return [re.sub(r"^(ba)?sh -c\s+", "", c.strip()) for c in re.split(r"&&|;|\|\||\n", line)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_password_is_expanded_into_a_command_line(rendered, overlay):
    """Kubernetes expands $(VAR) in command/args before the process starts, so a secret referenced there is
    in the process's argv: readable in `ps` and /proc/PID/cmdline by anyone on the node. Secrets reach a
    process by environment (or a mounted file) only; the MLflow server gets the PostgreSQL password as
    PGPASSWORD (libpq reads it) and a backend URI without a password."""
    sensitive = ("PASSWORD", "SECRET", "TOKEN", "PRIVATE")
    for obj in _objects(rendered[overlay]):
        if obj["kind"] not in POD_KINDS:
            continue
        for container in _pod_spec(obj)["containers"]:
            name = f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}"
            secret_env = {
                env["name"]
                for env in container.get("env", [])
                if "secretKeyRef" in env.get("valueFrom", {}) and any(w in env["name"] for w in sensitive)
            }
            line = " ".join(str(x) for x in container.get("command", []) + container.get("args", []))
            for var in secret_env:
                assert f"$({var})" not in line, (name, var)
                # a shell reference is expanded into the argv of the command that uses it, unless that
                # command is a shell builtin assignment (export) that hands the value on by environment
                for command in _shell_commands(line):
                    if re.search(rf"\$\{{?{var}\b", command):
                        assert command.startswith("export "), (name, var, command)
            for command in _shell_commands(line):
                if not command.startswith("export "):
                    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", command), (
                        name,
                        "credentials inside a URI",
                    )
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _objects(rendered[overlay])}
    mlflow = _pod_spec(objects[("Deployment", "safealign-mlflow")])["containers"][0]
    env = {e["name"]: e for e in mlflow["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "safealign-postgres", "key": "password"}
    assert any(a.startswith("--backend-store-uri=postgresql+psycopg2://$(PG_USER)@") for a in mlflow["args"])
