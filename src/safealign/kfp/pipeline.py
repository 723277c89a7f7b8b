"""The safealign KFP pipeline: validate -> train-reward -> calibrate -> [gate] grpo -> evaluate -> promote.

Every setting is a pipeline parameter whose default is params.yaml: ``params`` (the whole file as JSON,
editable in the KFP UI) and ``overrides`` (dotted ``key=value`` strings, like ``--set`` on the CLI).
Caching is keyed on the data version: every cached step takes ``data_version`` (and the params) as inputs,
so a scheduled run with unchanged data and params is served from the cache and a data change retrains.
The data version is resolved by an uncached step: the value passed in (submit passes the md5 in data.dvc),
or, when empty (scheduled runs), a hash of the data the step finds.

Two builds of the same graph. ``build_pipeline(settings)`` is the one-machine build that kfp.local runs
(tests, ``make e2e``): static images, this machine's defaults. ``build_pipeline(settings, cluster=True)``
is what ``safealign pipeline compile`` writes for a cluster: every step's image is the ``image`` pipeline
parameter (``cuda_image`` for the GPU steps), and ``image``, ``tracking_uri`` and ``dvc_remote_url`` have
no default unless the settings (or ``--image``) give a cluster value. A compiled file therefore never
carries a laptop's image tag, SQLite store or data folder: a run that does not pass them has no value
to fall back on (``kfp run create ... image=... tracking_uri=... dvc_remote_url=...``, docs/kfp.md).
Image parameters need KFP backend >= 2.4 (container image parameterization, kubeflow/pipelines#11404).

With ``pipeline.gpu`` on, GRPO, evaluation and generation run on the CUDA image with a GPU request, node
selector and tolerations (pipelines/align-gpu.yaml).

Compile: ``safealign pipeline compile`` (or ``make compile``) writes pipelines/align.yaml and
pipelines/align-gpu.yaml, which are committed; tests/test_pipeline_compile.py fails when they are stale.
The module is imported like any other (``safealign.kfp.client`` loads it when it compiles or runs the
pipeline); it reads the checkout's params.yaml when imported, so it is built in a checkout, never in a pod.
"""


import inspect
import sys
from collections.abc import Callable

from kfp import dsl, kubernetes

from safealign import TELEMETRY_ENV
from safealign.config import PipelineSettings, Settings, load_settings
from safealign.kfp.components import (
    calibrate_op,
    data_version_op,
    evaluate_op,
    generate_op,
    grpo_op,
    promote_op,
    train_reward_op,
    validate_op,
)
from safealign.kfp.components.image import PARAMS_FILE, REPO_ROOT
from safealign.kfp.deploy import cluster_defaults, images_for, params_json

PIPELINE_NAME = "align"


def _no_telemetry(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """MLflow's usage telemetry off in the step's pod, whatever image it runs (the project image sets it
    too): it tries outbound connections, and once failed a team run's log-batch."""
    return task.set_env_variable(TELEMETRY_ENV, "true")


def _on_gpu(task: dsl.PipelineTask, pipe: PipelineSettings, image: object) -> dsl.PipelineTask:
    """Put a step on a GPU node: the CUDA image, the accelerator request, node selector, tolerations."""
    task.set_container_image(image)
    task.set_accelerator_type(pipe.accelerator).set_accelerator_limit(pipe.accelerator_count)
    for key, value in sorted(pipe.node_selector.items()):
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in pipe.tolerations:
        kubernetes.add_toleration(
            task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect
        )
    return task


# The pipeline's parameters in order: (name, type, default on one machine). A cluster build drops the
# defaults that would point at a laptop (see ``build_pipeline``).
PARAMETERS: list[tuple[str, type]] = [
    ("data_version", str), ("data_dir", str), ("params", str), ("overrides", list), ("tracking_uri", str),
    ("dvc_remote_url", str), ("dvc_endpoint_url", str), ("checkpoint_root", str), ("cache_dir", str),
    ("generate_input", str),
]
IMAGE_PARAMETERS = ("image", "cuda_image")


def _signature(defaults: dict[str, object], required: list[str]) -> inspect.Signature:
    """Required parameters first (Python allows no default after a default), then the rest with defaults.

    KFP reads a pipeline's inputs from its function's signature: a parameter without a default is
    compiled as required (no ``defaultValue``), so a run that does not pass it has nothing to fall back on.
    """
    kinds = dict(PARAMETERS) | dict.fromkeys(IMAGE_PARAMETERS, str)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind, annotation=kinds[n]) for n in required]
    params += [
        inspect.Parameter(n, kind, annotation=kinds[n], default=v)
        for n, v in defaults.items()
        if n not in required
    ]
    return inspect.Signature(params, return_annotation=bool)


def _as_pipeline(graph: Callable[..., object], signature: inspect.Signature) -> object:
    """Wrap ``graph(**parameters)`` as a KFP pipeline with ``signature`` (KFP passes the inputs by position,
    in the signature's order, so the wrapper names them again)."""
    names = list(signature.parameters)

    def align_pipeline(*args: object) -> object:
        return graph(**dict(zip(names, args, strict=True)))

    align_pipeline.__signature__ = signature  # type: ignore[attr-defined]
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Multi-objective GRPO safety alignment: "
            "validate, reward, calibration gate, GRPO, evaluate, promote."
        ),
    )(align_pipeline)


def build_pipeline(
    settings: Settings, image: str | None = None, cuda_image: str | None = None, cluster: bool = False
):
    """The pipeline for ``settings``; ``image``/``cuda_image`` override ``pipeline.image``/``cuda_image``.

    ``cluster=False``: the kfp.local build (static images, this machine's paths and tracking store as
    defaults). ``cluster=True``: what ``safealign pipeline compile`` writes: images are the ``image`` and
    ``cuda_image`` parameters, and no parameter defaults to a laptop (safealign.kfp.deploy.cluster_defaults).
    """
    pipe = settings.pipeline
    cpu_image, gpu_image = images_for(pipe, image, cuda_image)
    # A JSON string, not a dict parameter: KFP writes a dict default into the compiled file's header in
    # hash order, which would make align.yaml differ from one compile to the next.
    defaults: dict[str, object] = {
        "data_version": "", "data_dir": settings.paths.data_dir, "params": params_json(settings),
        "overrides": [], "tracking_uri": settings.tracking.tracking_uri,
        "dvc_remote_url": pipe.dvc_remote_url, "dvc_endpoint_url": pipe.dvc_endpoint_url,
        "checkpoint_root": "", "cache_dir": "", "generate_input": "",
    }
    required: list[str] = []
    if cluster:
        cluster_values = cluster_defaults(settings, image, cuda_image)
        if not pipe.gpu:
            cluster_values.pop("cuda_image")  # no GPU step: the CPU file takes no CUDA image
        defaults.update({k: v for k, v in cluster_values.items() if v is not None})
        defaults["data_dir"] = ""  # the steps pull data/ from the DVC remote into their own scratch space
        required = [k for k, v in cluster_values.items() if v is None]
    graph = _graph(settings, None if cluster else (cpu_image, gpu_image))
    return _as_pipeline(graph, _signature(defaults, required))


def _stepper(pipe: PipelineSettings, cpu_image: object, gpu_image: object) -> Callable[..., dsl.PipelineTask]:
    """The set-up every cached stage step gets: ``step(task, gpu=False)``."""

    def step(task: dsl.PipelineTask, gpu: bool = False) -> dsl.PipelineTask:
        """CPU and memory requests from params, cached; the image (CUDA for a GPU step in GPU mode)."""
        task.set_cpu_request(pipe.cpu_request).set_memory_request(pipe.memory_request)
        task.set_caching_options(True)
        _no_telemetry(task)
        if gpu and pipe.gpu:
            return _on_gpu(task, pipe, gpu_image)
        return task.set_container_image(cpu_image)

    return step


def _reward_steps(
    step: Callable[..., dsl.PipelineTask], data_dir: str, remote: dict[str, str], common: dict[str, object]
) -> tuple[dsl.PipelineTask, dsl.PipelineTask, dsl.PipelineTask]:
    """validate -> train-reward -> calibrate, ungated: (validate, reward, calibrate) tasks."""
    validate = step(validate_op(data_dir=data_dir, **remote, **common)).set_display_name("validate")
    reward = step(
        train_reward_op(
            dataset=validate.outputs["dataset"], metrics_in=validate.outputs["stage_metrics"], **common
        )
    ).set_display_name("train-reward")
    calib = step(
        calibrate_op(
            dataset=validate.outputs["dataset"],
            reward_model=reward.outputs["reward_model"],
            metrics_in=reward.outputs["stage_metrics"],
            **common,
        )
    ).set_display_name("calibrate")
    return validate, reward, calib


def _policy_steps(
    step: Callable[..., dsl.PipelineTask], validate: dsl.PipelineTask, reward: dsl.PipelineTask,
    calib: dsl.PipelineTask, common: dict[str, object], checkpoint_root: str, cache_dir: str,
) -> dsl.PipelineTask:
    """grpo -> evaluate -> promote, inside the calibration gate; returns the promote task."""
    grpo = step(
        grpo_op(
            checkpoint_root=checkpoint_root,
            cache_dir=cache_dir,
            dataset=validate.outputs["dataset"],
            reward_model=reward.outputs["reward_model"],
            metrics_in=calib.outputs["stage_metrics"],
            **common,
        ),
        gpu=True,
    ).set_display_name("grpo")
    grpo.set_retry(num_retries=2)  # resumes from its last checkpoint when checkpoint_root is a volume
    evaluation = step(
        evaluate_op(
            cache_dir=cache_dir,
            dataset=validate.outputs["dataset"],
            reward_model=reward.outputs["reward_model"],
            adapter=grpo.outputs["adapter"],
            metrics_in=grpo.outputs["stage_metrics"],
            **common,
        ),
        gpu=True,
    ).set_display_name("evaluate")
    promote = step(
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
    return promote


def _generate_step(
    step: Callable[..., dsl.PipelineTask], settings: Settings, params: str, overrides: list,
    tracking_uri: str, generate_input: str, cache_dir: str,
) -> None:
    """Optional batch inference with the new champion (inside the ``promoted`` and request conditions)."""
    generate = step(
        generate_op(
            params=params,
            overrides=overrides,
            tracking_uri=tracking_uri,
            model_uri=f"models:/{settings.promote.policy_model_name}@champion",
            input_path=generate_input,
            cache_dir=cache_dir,
        ),
        gpu=True,
    ).set_display_name("generate")
    generate.set_caching_options(False)  # the champion behind the alias changes between runs


def _graph(settings: Settings, static_images: tuple[str, str] | None) -> Callable[..., object]:
    """The DAG: validate -> train-reward -> calibrate -> [gate] grpo -> evaluate -> promote [-> generate].

    ``static_images`` (cpu, cuda) for kfp.local; None: the steps take the ``image``/``cuda_image``
    parameters, resolved by the KFP backend when each pod is created. The steps are created in DAG order
    (KFP names and orders them as they are created), each part by one function above.
    """
    pipe = settings.pipeline

    def graph(
        data_version: str, data_dir: str, params: str, overrides: list, tracking_uri: str,
        dvc_remote_url: str, dvc_endpoint_url: str, checkpoint_root: str, cache_dir: str,
        generate_input: str, image: str | None = None, cuda_image: str | None = None,
    ) -> object:
        cpu_image, gpu_image = static_images or (image, cuda_image)
        step = _stepper(pipe, cpu_image, gpu_image)
        remote = {"dvc_remote_url": dvc_remote_url, "dvc_endpoint_url": dvc_endpoint_url}
        version = data_version_op(
            data_version=data_version, data_dir=data_dir, params=params, overrides=overrides, **remote
        )
        version.set_caching_options(False).set_display_name("data-version").set_container_image(cpu_image)
        _no_telemetry(version)
        common = {
            "data_version": version.output,
            "params": params,
            "overrides": overrides,
            "tracking_uri": tracking_uri,
        }
        validate, reward, calib = _reward_steps(step, data_dir, remote, common)
        with dsl.If(calib.outputs["Output"] == True, name="calibration-passed"):  # noqa: E712
            promote = _policy_steps(step, validate, reward, calib, common, checkpoint_root, cache_dir)
            # Optional batch inference with the new champion: only with a prompts file and a passed promotion.
            with dsl.If(promote.outputs["promoted"] == True, name="promoted"):  # noqa: E712
                with dsl.If(generate_input != "", name="generate-requested"):
                    _generate_step(step, settings, params, overrides, tracking_uri, generate_input, cache_dir)
        # The gate's verdict is the pipeline's output (shown on the run; returned by a local run).
        return calib.outputs["Output"]

    return graph


SETTINGS = load_settings(PARAMS_FILE)
# what pipelines/align.yaml holds (and `kfp dsl compile` of this file gives): the cluster build
align_pipeline = build_pipeline(SETTINGS, cluster=True)
# the one-machine build kfp.local runs (static images, this machine's paths and tracking store)
local_pipeline = build_pipeline(SETTINGS)


if __name__ == "__main__":
    from kfp import compiler

    from safealign.common.atomic import atomic_path

    out = sys.argv[1] if len(sys.argv) > 1 else str(REPO_ROOT / "pipelines" / "align.yaml")
    with atomic_path(out) as tmp:  # never half a pipeline where the previous one was
        compiler.Compiler().compile(align_pipeline, str(tmp))
    print(out)
