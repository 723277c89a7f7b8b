"""The compiled pipeline: fresh, gated, cached on the data version, resources and image from params."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from safealign import stages
from safealign.config import Settings, load_settings
from safealign.kfp_client import compile_pipeline, load_pipeline

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "pipelines" / "align.yaml"
# KFP names a task after its component function, `<stage name>_op`, in kebab-case: the CLI spelling + "-op".
STAGES = [f"{s.cli}-op" for s in stages.STAGES]


def _without_sdk_version(text: str) -> list[str]:
    return [line for line in text.splitlines() if "sdkVersion" not in line]


def test_committed_yaml_is_fresh(tmp_path):
    out = compile_pipeline(tmp_path / "align.yaml")
    assert _without_sdk_version(out.read_text()) == _without_sdk_version(COMMITTED.read_text()), (
        "pipelines/align.yaml is stale: run `make compile` and commit it"
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
    assert {"grpo-op", "evaluate-op", "promote-op"} == set(gated)


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


def test_image_and_resources_come_from_params():
    settings = load_settings(ROOT / "params.yaml")
    image = f"{settings.pipeline.image}:{settings.pipeline.image_tag}"
    executors = _spec()["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {image}
    for name in STAGES:
        resources = executors[f"exec-{name}"]["container"]["resources"]
        assert resources["cpuRequest"] == float(settings.pipeline.cpu_request)
    # No pip install at run time: the project image already carries safealign and kfp.
    for e in executors.values():
        assert "pip install" not in " ".join(e["container"]["command"])


def test_grpo_accelerator_follows_params(tmp_path, monkeypatch):
    """pipeline.grpo_accelerator in params.yaml puts an accelerator request on the grpo step only."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pipeline"]["grpo_accelerator"] = "nvidia.com/gpu"
    params["pipeline"]["grpo_accelerator_count"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "align.py").write_text((ROOT / "pipelines" / "align.py").read_text())
    (tmp_path / "components").symlink_to(ROOT / "components")
    monkeypatch.syspath_prepend(str(tmp_path))
    from kfp import compiler

    out = tmp_path / "gpu.yaml"
    compiler.Compiler().compile(load_pipeline(tmp_path / "pipelines" / "align.py"), str(out))
    executors = yaml.safe_load(out.read_text())["deploymentSpec"]["executors"]
    grpo = executors["exec-grpo-op"]["container"]["resources"]
    assert grpo["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert grpo["accelerator"]["resourceCount"] == "2"
    assert "accelerator" not in executors["exec-evaluate-op"]["container"]["resources"]
