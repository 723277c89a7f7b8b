"""The compiled pipeline: fresh, gated, cached on the data version, resources and image from params."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from safealign import stages
from safealign.cli import main
from safealign.config import Settings, load_settings
from safealign.kfp.client import compile_pipeline
from safealign.kfp.deploy import gpu_executors, read_package, root_parameters

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "pipelines" / "align.yaml"
# KFP names a task after its component function, `<stage name>_op`, in kebab-case: the CLI spelling + "-op".
STAGES = [f"{s.cli}-op" for s in stages.STAGES]
COMMITTED_GPU = ROOT / "pipelines" / "align-gpu.yaml"


def _without_sdk_version(text: str) -> list[str]:
    return [line for line in text.splitlines() if "sdkVersion" not in line]


def test_committed_yaml_is_fresh(tmp_path):
    out = compile_pipeline(tmp_path / "align.yaml")
    assert _without_sdk_version(out.read_text()) == _without_sdk_version(COMMITTED.read_text()), (
        "pipelines/align.yaml is stale: run `make compile` and commit it"
    )
    gpu_settings = load_settings(ROOT / "params.yaml", ["pipeline.gpu=true"])
    gpu = compile_pipeline(tmp_path / "align-gpu.yaml", gpu_settings)
    assert _without_sdk_version(gpu.read_text()) == _without_sdk_version(COMMITTED_GPU.read_text()), (
        "pipelines/align-gpu.yaml is stale: run `make compile` and commit it"
    )


def _spec() -> dict:
    return yaml.safe_load(COMMITTED.read_text())


IMAGE_PARAM = "{{$.inputs.parameters['pipelinechannel--image']}}"
CUDA_PARAM = "{{$.inputs.parameters['pipelinechannel--cuda_image']}}"
# What a laptop's defaults look like; none may reach a compiled file a cluster runs.
LAPTOP = ("sqlite:", "127.0.0.1", "localhost", "file:", "safealign:0.1.0")


def test_pipeline_parameters_default_to_params_yaml():
    spec = _spec()
    assert spec["pipelineInfo"]["name"] == "align"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"data_version", "params", "overrides", "tracking_uri", "data_dir", "image"} <= set(params)
    settings = load_settings(ROOT / "params.yaml")
    defaults = json.loads(params["params"]["defaultValue"])
    assert Settings.model_validate(defaults) == settings


@pytest.mark.parametrize("package", [COMMITTED, COMMITTED_GPU], ids=lambda p: p.name)
def test_compiled_defaults_never_point_at_a_laptop(package):
    """The committed files carry no image tag, tracking store, data folder or DVC remote of this machine:
    those are parameters without a default, which every run must pass (docs/kfp.md)."""
    docs = read_package(package)
    params = root_parameters(docs)
    required = {n for n, d in params.items() if "defaultValue" not in d}
    gpu = package == COMMITTED_GPU
    assert required == {"image", "tracking_uri", "dvc_remote_url"} | ({"cuda_image"} if gpu else set())
    assert params["data_dir"]["defaultValue"] == ""  # the steps pull data/ from the DVC remote
    for name, definition in params.items():
        if name != "params":  # the settings JSON: its tracking/paths are overridden by these parameters
            assert not any(m in str(definition.get("defaultValue", "")) for m in LAPTOP), name
    for name, ex in docs[0]["deploymentSpec"]["executors"].items():
        want = CUDA_PARAM if gpu and name in GPU_STAGES else IMAGE_PARAM
        assert ex["container"]["image"] == want, name


def test_cluster_build_refuses_a_run_without_its_cluster_parameters():
    """The cluster build's signature has no default for them: calling it without one is refused by KFP
    before anything runs."""
    from safealign.kfp import pipeline as module
    from safealign.kfp.client import load_pipeline

    module_pipeline = load_pipeline()  # the kfp.local build keeps one-machine defaults
    assert "image" not in module_pipeline.component_spec.inputs
    cluster = module.build_pipeline(load_settings(ROOT / "params.yaml"), cluster=True)
    inputs = cluster.component_spec.inputs
    assert {n for n, i in inputs.items() if i.default is None and not i.optional} == {
        "image", "tracking_uri", "dvc_remote_url"}
    with pytest.raises(TypeError, match="image"):
        cluster(tracking_uri="http://mlflow.team.svc:5000", dvc_remote_url="s3://dvc")


def test_compile_refuses_an_image_no_cluster_can_pull(tmp_path, capsys):
    out = tmp_path / "x.yaml"
    assert main(["pipeline", "compile", "--output", str(out), "--image", "safealign:0.1.0"]) == 2
    assert "'safealign:0.1.0'" in capsys.readouterr().err and not out.exists()


def test_compile_with_cluster_settings_keeps_them_as_defaults(tmp_path):
    """A team's own file (its registry, MLflow and DVC remote in params) runs with no parameter at all."""
    docs = _compile_cli(
        tmp_path, "--image", "reg.test/team/safealign:1.2.3",
        "--set", "pipeline.tracking_uri=http://safealign-mlflow.team.svc.cluster.local:5000",
        "--set", "pipeline.dvc_remote_url=s3://dvc",
    )
    params = root_parameters(docs)
    assert {n for n, d in params.items() if "defaultValue" not in d} == set()
    assert params["image"]["defaultValue"] == "reg.test/team/safealign:1.2.3"
    assert params["dvc_remote_url"]["defaultValue"] == "s3://dvc"
    # a laptop URI in pipeline.tracking_uri is not a default either: the parameter stays required
    docs = _compile_cli(tmp_path, "--set", "pipeline.tracking_uri=http://127.0.0.1:15000")
    assert "defaultValue" not in root_parameters(docs)["tracking_uri"]


def test_calibration_gate_guards_grpo_evaluate_promote():
    spec = _spec()
    root_tasks = spec["root"]["dag"]["tasks"]
    assert {"validate-op", "train-reward-op", "calibrate-op", "data-version-op"} <= set(root_tasks)
    assert not {"grpo-op", "evaluate-op", "promote-op"} & set(root_tasks)
    (cond_name,) = [n for n in root_tasks if n.startswith("condition")]
    cond = root_tasks[cond_name]
    assert cond["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--calibrate-op-Output'] == true"
    )
    gated = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
    # plus the optional generate step's own condition (it runs after a passed promotion)
    assert {"grpo-op", "evaluate-op", "promote-op"} == {n for n in gated if not n.startswith("condition")}


def _all_tasks(spec: dict) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def test_caching_is_keyed_on_the_resolved_data_version():
    tasks = _all_tasks(_spec())
    assert tasks["data-version-op"]["cachingOptions"] == {}  # resolved every run, never cached
    for stage in STAGES[:-1]:
        assert tasks[stage]["cachingOptions"] == {"enableCache": True}, stage
        source = tasks[stage]["inputs"]["parameters"]["data_version"]
        # Inside the dsl.If group the same output arrives as the group's input channel.
        producer = source.get("taskOutputParameter", {}).get("producerTask") or source.get(
            "componentInputParameter"
        )
        assert producer in {"data-version-op", "pipelinechannel--data-version-op-Output"}, stage
        # ...and on the settings: a changed params or overrides value is a cache miss
        for name in ("params", "overrides"):
            given = tasks[stage]["inputs"]["parameters"][name].get("componentInputParameter")
            assert given in {name, f"pipelinechannel--{name}"}, (stage, name)
    assert tasks["promote-op"]["cachingOptions"] == {}  # a registry write is never served from cache


ALL_EXECUTORS = {f"exec-{n}" for n in [*STAGES, "data-version-op", "generate-op"]}
# The steps that run the policy: training, evaluation and the optional batch generation after promotion.
GPU_STAGES = {"exec-grpo-op", "exec-evaluate-op", "exec-generate-op"}


def _compile_cli(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "compiled.yaml"
    assert main(["pipeline", "compile", "--output", str(out), *args]) == 0
    return read_package(out)


def test_cpu_mode_every_step_on_the_given_image(tmp_path, capsys):
    """`compile --image`: every step on that image, CPU and memory requests from params, no GPU anywhere."""
    settings = load_settings(ROOT / "params.yaml")
    docs = _compile_cli(tmp_path, "--image", "registry.test:5000/team/safealign:1.2.3")
    executors = docs[0]["deploymentSpec"]["executors"]
    assert set(executors) == ALL_EXECUTORS
    assert root_parameters(docs)["image"]["defaultValue"] == "registry.test:5000/team/safealign:1.2.3"
    assert "cuda_image" not in root_parameters(docs)  # no GPU step in the CPU file
    for name, ex in executors.items():
        assert ex["container"]["image"] == IMAGE_PARAM, name
        assert "accelerator" not in ex["container"].get("resources", {}), name
        # No pip install at run time: the project image already carries safealign and kfp.
        assert "pip install" not in " ".join(ex["container"]["command"])
    for name in STAGES:
        resources = executors[f"exec-{name}"]["container"]["resources"]
        assert resources["cpuRequest"] == float(settings.pipeline.cpu_request), name
        assert resources["memoryRequest"] == 8.0, name  # 8G
    assert len(docs) == 1  # no Kubernetes platform section: nothing to select or tolerate


def test_gpu_mode_puts_grpo_and_evaluate_on_the_cuda_image_with_gpu_placement(tmp_path, capsys):
    docs = _compile_cli(
        tmp_path, "--image", "reg.test/safealign:7",
        "--set", "pipeline.gpu=true", "--set", "pipeline.accelerator_count=2",
        "--set", "pipeline.node_selector={cloud.google.com/gke-accelerator: nvidia-h100-80gb}",
        "--set", "pipeline.tolerations=[{key: gpu-pool, operator: Equal, value: 'yes', effect: NoExecute}]",
    )
    executors = docs[0]["deploymentSpec"]["executors"]
    params = root_parameters(docs)
    assert (params["image"]["defaultValue"], params["cuda_image"]["defaultValue"]) == (
        "reg.test/safealign:7", "reg.test/safealign:7-cuda")
    for name, ex in executors.items():
        container = ex["container"]
        if name in GPU_STAGES:
            assert container["image"] == CUDA_PARAM, name
            assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert container["resources"]["accelerator"]["resourceCount"] == "2"
        else:
            assert container["image"] == IMAGE_PARAM, name
            assert "accelerator" not in container.get("resources", {}), name
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(platform) == GPU_STAGES
    for name in GPU_STAGES:
        labels = platform[name]["nodeSelector"]["labels"]
        assert labels == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
        assert platform[name]["tolerations"] == [
            {"key": "gpu-pool", "operator": "Equal", "value": "yes", "effect": "NoExecute"}
        ]


def test_committed_gpu_file_follows_params_defaults():
    docs = read_package(COMMITTED_GPU)
    assert set(gpu_executors(docs)) == GPU_STAGES
    executors = docs[0]["deploymentSpec"]["executors"]
    assert executors["exec-grpo-op"]["container"]["image"] == CUDA_PARAM
    assert executors["exec-validate-op"]["container"]["image"] == IMAGE_PARAM
    assert gpu_executors(read_package(COMMITTED)) == []


def _find_task(dag: dict, name: str, conditions: list[str]) -> list[str] | None:
    """The trigger conditions on the path to task ``name`` (None when absent)."""
    spec = _spec()
    for task_name, task in dag["tasks"].items():
        cond = task.get("triggerPolicy", {}).get("condition")
        here = [*conditions, cond] if cond else conditions
        if task_name == name:
            return here
        comp = task.get("componentRef", {}).get("name", "")
        sub = spec["components"].get(comp, {}).get("dag")
        if sub:
            found = _find_task(sub, name, here)
            if found is not None:
                return found
    return None


def test_generate_runs_only_after_a_passed_promotion_and_when_asked():
    spec = _spec()
    assert spec["root"]["inputDefinitions"]["parameters"]["generate_input"]["defaultValue"] == ""
    conditions = _find_task(spec["root"]["dag"], "generate-op", [])
    assert conditions is not None, "the generate step is missing"
    joined = " ".join(conditions)
    assert "promote-op" in joined and "promoted" in joined  # the promotion's verdict
    assert "generate_input" in joined and "!= ''" in joined  # only when an input file is given
    executor = spec["deploymentSpec"]["executors"]["exec-generate-op"]["container"]
    assert "safealign.registry.batch import generate" in " ".join(executor["command"])


@pytest.mark.parametrize("package", [COMMITTED, COMMITTED_GPU], ids=lambda p: p.name)
def test_every_step_runs_with_mlflow_telemetry_off(package):
    for name, ex in read_package(package)[0]["deploymentSpec"]["executors"].items():
        env = {e["name"]: e["value"] for e in ex["container"].get("env", [])}
        assert env.get("MLFLOW_DISABLE_TELEMETRY") == "true", name
