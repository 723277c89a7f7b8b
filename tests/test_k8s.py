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
        # dumb-init is PID 1: it forwards SIGTERM (mlflow as PID 1 ignored it; tests/test_image.py)
        assert container["command"] == ["dumb-init", "--", "mlflow", "models", "serve"]
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


def _all_containers(objects: list[dict]) -> list[tuple[str, dict]]:
    """(name, container) of every pod template and TrainJob trainer in a rendering."""
    found = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in POD_KINDS:
            found += [(name, c) for c in _pod_spec(obj)["containers"]]
        elif obj["kind"] == "TrainJob":
            found.append((name, obj["spec"]["trainer"]))
    return found


@pytest.mark.parametrize("overlay", OVERLAYS + TRAINJOB_OVERLAYS)
def test_project_images_are_registry_references_a_node_can_pull(rendered, overlay):
    """`safealign:0.1.0` with imagePullPolicy Always sends every node to Docker Hub's library/safealign,
    which does not exist: each overlay names a registry (dev: a local one, prod: the team's)."""
    from safealign.kfp.deploy import pullable_image

    objects = _objects(rendered[overlay])
    project = [(n, c) for n, c in _all_containers(objects) if "safealign" in c["image"]]
    assert project
    for name, container in project:
        assert pullable_image(container["image"]), (name, container["image"])
    if overlay in OVERLAYS:
        config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
        assert pullable_image(config["SAFEALIGN_IMAGE"]), config["SAFEALIGN_IMAGE"]


@pytest.mark.parametrize("overlay", OVERLAYS + TRAINJOB_OVERLAYS)
def test_every_project_container_runs_with_mlflow_telemetry_off(rendered, overlay):
    objects = _objects(rendered[overlay])
    config = {}
    for obj in _objects(rendered[overlay.split("/")[0]]):
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "safealign-config":
            config = obj["data"]
    assert config.get("MLFLOW_DISABLE_TELEMETRY") == "true"
    for name, container in _all_containers(objects):
        if "safealign" not in container["image"]:
            continue
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        from_config = {"configMapRef": {"name": "safealign-config"}} in container.get("envFrom", [])
        assert env.get("MLFLOW_DISABLE_TELEMETRY") == "true" or from_config, name


def _admits(policy: dict, namespace: dict[str, str], pod: dict[str, str], own: bool, port: int) -> bool:
    """NetworkPolicy ingress semantics for one peer pod: any rule whose ports include ``port`` and any of
    whose peers matches (a podSelector alone selects in the policy's own namespace; namespaceSelector
    plus podSelector in one peer must both match)."""

    def matches(selector: dict | None, labels: dict[str, str]) -> bool:
        if selector is None:
            return True
        return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())

    for rule in policy["spec"].get("ingress", []):
        if port not in [p["port"] for p in rule.get("ports", [])]:
            continue
        for peer in rule.get("from", []):
            if "namespaceSelector" in peer:
                if matches(peer["namespaceSelector"], namespace) and matches(peer.get("podSelector"), pod):
                    return True
            elif own and matches(peer.get("podSelector"), pod):
                return True
    return False


def test_minio_admits_kfp_step_pods_from_kfp_namespaces(rendered):
    """The data-version step pulls data/ from the DVC remote in MinIO, from KFP's namespace: the policy
    must admit it there (it admitted only safealign's own namespace), and still no one else."""
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _objects(rendered["prod"])}
    policy = objects[("NetworkPolicy", "safealign-minio")]
    step = {"pipelines.kubeflow.org/v2_component": "true", "workflows.argoproj.io/workflow": "align-x"}
    kubeflow = {"kubernetes.io/metadata.name": "kubeflow"}
    profile = {"kubernetes.io/metadata.name": "team-a", "app.kubernetes.io/part-of": "kubeflow-profile"}
    assert _admits(policy, kubeflow, step, own=False, port=9000)
    assert _admits(policy, profile, step, own=False, port=9000)
    assert _admits(policy, {}, {"app.kubernetes.io/name": "safealign-mlflow"}, own=True, port=9000)
    assert not _admits(policy, {"kubernetes.io/metadata.name": "other"}, step, own=False, port=9000)
    assert not _admits(policy, kubeflow, {"app": "something-else"}, own=False, port=9000)
    assert not _admits(policy, kubeflow, step, own=False, port=9001)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_retrain_cronjob_mounts_a_kfp_token_and_names_its_namespace(rendered, overlay):
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _objects(rendered[overlay])}
    cron = objects[("CronJob", "safealign-retrain")]
    spec = _pod_spec(cron)
    assert spec["automountServiceAccountToken"] is False  # no API token; only the KFP-audience one below
    (volume,) = [v for v in spec["volumes"] if "projected" in v]
    (source,) = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    container = spec["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    token = f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"
    assert token == "/var/run/secrets/kubeflow/pipelines/token"  # where Kubeflow documents it
    args = container["args"]
    assert args[args.index("--token-file") + 1] == token
    assert args[args.index("--namespace") + 1] == "$(KFP_NAMESPACE)"
    assert args[args.index("--data-version") + 1] == ""
    config = objects[("ConfigMap", "safealign-config")]["data"]
    assert config["KFP_NAMESPACE"] == cron["metadata"]["namespace"]
    binding = objects[("RoleBinding", "safealign-pipeline-runner-kfp")]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "kubeflow-pipelines-edit"}
    assert binding["subjects"][0]["name"] == spec["serviceAccountName"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_retrain_cronjob_command_submits_a_usable_run(rendered, overlay, kfp_server, tmp_path, monkeypatch,  # noqa: F811 - the imported fixture
                                                      capsys):
    """The CronJob's command line, its $(VARS) expanded from the rendered ConfigMap as the kubelet does,
    run against a multi-user KFP API (the fake of test_kfp_client.py): authenticated by the mounted token,
    in the overlay's namespace, with the overlay's image, an empty data version and cluster services."""
    from safealign.cli import main

    objects = {(o["kind"], o["metadata"]["name"]): o for o in _objects(rendered[overlay])}
    config = objects[("ConfigMap", "safealign-config")]["data"]
    container = _pod_spec(objects[("CronJob", "safealign-retrain")])["containers"][0]
    token = tmp_path / "token"
    token.write_text("projected-sa-token\n")
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp
    kfp_server.tokens = {"projected-sa-token": {config["KFP_NAMESPACE"]}}
    values = {**config, "KFP_HOST": kfp_server.host}
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT)
    args = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in container["args"]]
    args = [str(token) if a == "/var/run/secrets/kubeflow/pipelines/token" else a for a in args]
    args = [str(ROOT / "pipelines" / "align.yaml") if a == "/app/pipelines/align.yaml" else a for a in args]
    assert main([*container["command"][1:], *args]) == 0, capsys.readouterr().err
    (run,) = kfp_server.posts("/apis/v2beta1/runs")
    params = run["runtime_config"]["parameters"]
    assert params["data_version"] == "" and params["image"] == container["image"]
    assert params["tracking_uri"] == config["MLFLOW_TRACKING_URI"] and params["dvc_remote_url"] == "s3://dvc"
    (exp,) = kfp_server.posts("/apis/v2beta1/experiments")
    assert exp["namespace"] == cron_namespace(objects)


def cron_namespace(objects: dict) -> str:
    return objects[("CronJob", "safealign-retrain")]["metadata"]["namespace"]


KSERVE_OVERLAYS = ["dev/kserve", "prod/kserve"]
# InferenceService predictor fields that are KServe's own (the rest of the predictor is a PodSpec).
KSERVE_COMPONENT_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
                           "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations"}


@pytest.mark.parametrize("overlay", KSERVE_OVERLAYS)
def test_kserve_inference_service_serves_the_champion_like_the_deployment(rendered, overlay, tmp_path):
    """The InferenceService beside the Deployment: its predictor (a PodSpec plus KServe's scaling fields)
    validates as a Pod against the Kubernetes schemas, runs the same `mlflow models serve` on the champion
    alias as the Deployment, non-root, bounded, pullable, telemetry off, with the serving limits' timeout."""
    kubectl, validator = _tool("kubectl"), _tool("kubernetes-validate")
    proc = subprocess.run([str(kubectl), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (isvc,) = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_COMPONENT_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec}
    target = tmp_path / "pod.yaml"
    target.write_text(yaml.safe_dump(pod))
    check = subprocess.run([str(validator), "--strict", "--kubernetes-version", "1.33", str(target)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    namespace = "safealign-dev" if overlay.startswith("dev") else "safealign"
    assert isvc["metadata"]["namespace"] == namespace
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container" and pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["automountServiceAccountToken"] is False
    deployment = {(o["kind"], o["metadata"]["name"]): o for o in _objects(rendered[overlay.split("/")[0]])}[
        ("Deployment", "safealign-policy-serving")]
    served = _pod_spec(deployment)["containers"][0]
    assert container["image"] == served["image"] and container["command"] == served["command"]
    assert [a for a in container["args"] if not a.startswith("--timeout")] == served["args"]
    assert "--timeout=60" in container["args"]  # the deadline the policy stops generating at (90% of it)
    assert container["readinessProbe"]["httpGet"] == {"path": "/ping", "port": 8080}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
