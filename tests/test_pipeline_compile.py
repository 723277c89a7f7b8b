"""The compiled pipeline: fresh, gated, cached on the data version, resources and image from params."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from safealign import stages
from safealign.cli import main
from safealign.config import Settings, load_settings
from safealign.kfp_client import compile_pipeline
from safealign.kfp_deploy import gpu_executors, read_package, set_images

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


def test_pipeline_parameters_default_to_params_yaml():
    spec = _spec()
    assert spec["pipelineInfo"]["name"] == "align"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"data_version", "params", "overrides", "tracking_uri", "data_dir"} <= set(params)
    settings = load_settings(ROOT / "params.yaml")
    defaults = json.loads(params["params"]["defaultValue"])
    assert Settings.model_validate(defaults) == settings
    assert params["tracking_uri"]["defaultValue"] == settings.tracking.tracking_uri


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
# batch inference after promotion generates like evaluation does: on the GPU when there is one
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
    for name, ex in executors.items():
        assert ex["container"]["image"] == "registry.test:5000/team/safealign:1.2.3", name
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
    for name, ex in executors.items():
        container = ex["container"]
        if name in GPU_STAGES:
            assert container["image"] == "reg.test/safealign:7-cuda", name
            assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert container["resources"]["accelerator"]["resourceCount"] == "2"
        else:
            assert container["image"] == "reg.test/safealign:7", name
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
    settings = load_settings(ROOT / "params.yaml")
    docs = read_package(COMMITTED_GPU)
    assert set(gpu_executors(docs)) == GPU_STAGES
    executors = docs[0]["deploymentSpec"]["executors"]
    assert executors["exec-grpo-op"]["container"]["image"] == settings.pipeline.resolved_cuda_image
    assert executors["exec-validate-op"]["container"]["image"] == settings.pipeline.image
    assert gpu_executors(read_package(COMMITTED)) == []


def test_submit_time_images_repoint_a_compiled_file():
    """The images a compiled file names are replaced at submit time: CUDA for steps that ask for a GPU."""
    docs = set_images(read_package(COMMITTED_GPU), "r.test/sa:9", "r.test/sa:9-cuda")
    images = {n: e["container"]["image"] for n, e in docs[0]["deploymentSpec"]["executors"].items()}
    assert images == {n: ("r.test/sa:9-cuda" if n in GPU_STAGES else "r.test/sa:9") for n in ALL_EXECUTORS}


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
    assert "safealign.batch import generate" in " ".join(executor["command"])
