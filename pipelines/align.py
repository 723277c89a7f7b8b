"""The safealign KFP pipeline: validate -> train-reward -> calibrate -> [gate] grpo -> evaluate -> promote.

Every setting is a pipeline parameter whose default is params.yaml: ``params`` (the whole file as JSON,
editable in the KFP UI) and ``overrides`` (dotted ``key=value`` strings, like ``--set`` on the CLI).
Caching is keyed on the data version: every cached step takes ``data_version`` (and the params) as inputs,
so a scheduled run with unchanged data and params is served from the cache and a data change retrains.
The data version is resolved by an uncached step: the value passed in (submit passes the md5 in data.dvc),
or, when empty (scheduled runs), a hash of the data the step finds.

Compile: ``safealign pipeline compile`` (or ``make compile``) writes pipelines/align.yaml, which is committed;
tests/test_pipeline_compile.py fails when it is stale.
"""


import sys
from pathlib import Path

from kfp import dsl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ lives at the repository root, beside pipelines/
    sys.path.insert(0, str(ROOT))

from components import (  # noqa: E402
    calibrate_op,
    data_version_op,
    evaluate_op,
    grpo_op,
    promote_op,
    train_reward_op,
    validate_op,
)
from safealign.config import load_settings  # noqa: E402
from safealign.kfp_client import params_json  # noqa: E402

SETTINGS = load_settings(ROOT / "params.yaml")


# A JSON string, not a dict parameter: KFP writes a dict default into the compiled file's header in hash
# order, which would make align.yaml differ from one compile to the next.
PARAMS = params_json(SETTINGS)
PIPELINE_NAME = "align"


def _resources(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """CPU and memory requests from params (pipeline.cpu_request, pipeline.memory_request); cached."""
    return (
        task.set_cpu_request(SETTINGS.pipeline.cpu_request)
        .set_memory_request(SETTINGS.pipeline.memory_request)
        .set_caching_options(True)
    )


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Multi-objective GRPO safety alignment: validate, reward, calibration gate, GRPO, evaluate, promote.",
)
def align_pipeline(
    data_version: str = "",
    data_dir: str = SETTINGS.paths.data_dir,
    params: str = PARAMS,
    overrides: list = [],  # noqa: B006 - KFP needs a literal default
    tracking_uri: str = SETTINGS.tracking.tracking_uri,
    checkpoint_root: str = "",
    cache_dir: str = "",
) -> bool:
    version = data_version_op(data_version=data_version, data_dir=data_dir, params=params, overrides=overrides)
    version.set_caching_options(False).set_display_name("data-version")
    common = {"data_version": version.output, "params": params, "overrides": overrides, "tracking_uri": tracking_uri}

    validate = _resources(validate_op(data_dir=data_dir, **common)).set_display_name("validate")
    reward = _resources(
        train_reward_op(dataset=validate.outputs["dataset"], metrics_in=validate.outputs["stage_metrics"], **common)
    ).set_display_name("train-reward")
    calib = _resources(
        calibrate_op(
            dataset=validate.outputs["dataset"],
            reward_model=reward.outputs["reward_model"],
            metrics_in=reward.outputs["stage_metrics"],
            **common,
        )
    ).set_display_name("calibrate")

    with dsl.If(calib.outputs["Output"] == True, name="calibration-passed"):  # noqa: E712
        grpo = _resources(
            grpo_op(
                checkpoint_root=checkpoint_root,
                cache_dir=cache_dir,
                dataset=validate.outputs["dataset"],
                reward_model=reward.outputs["reward_model"],
                metrics_in=calib.outputs["stage_metrics"],
                **common,
            )
        ).set_display_name("grpo")
        grpo.set_retry(num_retries=2)  # resumes from its last checkpoint when checkpoint_root is a volume
        if SETTINGS.pipeline.grpo_accelerator:
            grpo.set_accelerator_type(SETTINGS.pipeline.grpo_accelerator).set_accelerator_limit(
                SETTINGS.pipeline.grpo_accelerator_count
            )
        evaluation = _resources(
            evaluate_op(
                cache_dir=cache_dir,
                dataset=validate.outputs["dataset"],
                reward_model=reward.outputs["reward_model"],
                adapter=grpo.outputs["adapter"],
                metrics_in=grpo.outputs["stage_metrics"],
                **common,
            )
        ).set_display_name("evaluate")
        promote = _resources(
            promote_op(
                dataset=validate.outputs["dataset"],
                reward_model=reward.outputs["reward_model"],
                adapter=grpo.outputs["adapter"],
                evaluation=evaluation.outputs["evaluation"],
                metrics_in=evaluation.outputs["stage_metrics"],
                **common,
            )
        ).set_display_name("promote")
        # Registering in MLflow is a side effect: never serve it from the cache.
        promote.set_caching_options(False)
    # The gate's verdict is the pipeline's output (shown on the run; returned by a local run).
    return calib.outputs["Output"]


if __name__ == "__main__":
    from kfp import compiler

    out = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "pipelines" / "align.yaml")
    compiler.Compiler().compile(align_pipeline, out)
    print(out)
