"""In-cluster names in the rendered manifests, checked the way a platform engineer would find them broken.

Pipeline steps run in KFP's namespace, so they reach MLflow only by its fully qualified name
(safealign-mlflow.<namespace>.svc.cluster.local). Two things must agree on it: the URI the CronJob and the
steps are given (safealign-config), and the Host names the MLflow server accepts (--allowed-hosts; any
other Host gets 403). The second is checked against the pinned mlflow itself, started with the flags the
rendered Deployment gives it.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = ROOT / ".venv-ops" / "bin" / "kubectl"
OVERLAYS = ["dev", "prod"]


def _render(overlay: str) -> list[dict]:
    if not KUBECTL.exists():
        pytest.skip(f"{KUBECTL} missing: `make setup` installs requirements-ops.txt into .venv-ops")
    out = subprocess.run([str(KUBECTL), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _find(objs: list[dict], kind: str, name: str) -> dict:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are substituted, undefined ones stay as written."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def _container_env(objs: list[dict], pod_owner: dict, container: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps first, then env in order."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_find(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(item["value"], env)
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = pod_owner["metadata"]["namespace"]
    return env


def allowed_hosts(objs: list[dict]) -> list[str]:
    deploy = _find(objs, "Deployment", "safealign-mlflow")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    env = _container_env(objs, deploy, container)
    (flag,) = [a for a in container["args"] if a.startswith("--allowed-hosts=")]
    return _expand(flag.split("=", 1)[1], env).split(",")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tracking_uri_is_fully_qualified_and_allowed(overlay):
    objs = _render(overlay)
    namespace = _find(objs, "Service", "safealign-mlflow")["metadata"]["namespace"]
    config = _find(objs, "ConfigMap", "safealign-config")["data"]
    uri = urlparse(config["MLFLOW_TRACKING_URI"])
    assert uri.hostname == f"safealign-mlflow.{namespace}.svc.cluster.local"
    s3_host = urlparse(config["SAFEALIGN_DVC_ENDPOINT_URL"]).hostname
    assert s3_host == f"safealign-minio.{namespace}.svc.cluster.local"
    # the CronJob (which submits the runs) gets exactly that URI
    cron = _find(objs, "CronJob", "safealign-retrain")
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = _container_env(objs, cron, container)
    assert env["MLFLOW_TRACKING_URI"] == config["MLFLOW_TRACKING_URI"]
    # and the server admits the Host header that URI produces
    hosts = allowed_hosts(objs)
    assert uri.netloc in hosts and uri.hostname in hosts
    assert not any("$(" in h for h in hosts), hosts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pinned_mlflow_with_the_deployments_flags_answers_the_in_cluster_name(tmp_path):
    """The real server with the rendered --allowed-hosts: 200 for the FQDN Host, 403 for a stranger."""
    objs = _render("dev")
    namespace = _find(objs, "Service", "safealign-mlflow")["metadata"]["namespace"]
    fqdn = f"safealign-mlflow.{namespace}.svc.cluster.local:5000"
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--allowed-hosts", ",".join(allowed_hosts(objs))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )

    def call(host: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                                     data=b'{"max_results": 1}', method="POST",
                                     headers={"Content-Type": "application/json", "Host": host})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                code = call(fqdn)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        assert code == 200
        assert call(f"safealign-mlflow.{namespace}.svc.cluster.local") == 200
        assert call("attacker.example:5000") == 403  # the check is on: only the listed names pass
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
