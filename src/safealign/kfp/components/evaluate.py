"""evaluate: base vs aligned policy per aspect, refusal and over-refusal rates."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from safealign.kfp.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(
    data_version: str,
    params: str,
    overrides: list,
    tracking_uri: str,
    cache_dir: str,
    dataset: Input[Dataset],
    reward_model: Input[Model],
    adapter: Input[Model],
    metrics_in: Input[Dataset],
    evaluation: Output[Dataset],
    report: Output[Markdown],
    stage_metrics: Output[Dataset],
    metrics: Output[Metrics],
):
    """Generate from base and aligned policy on held-out and benign prompts; publish the report."""
    from safealign.evaluation.evaluate import evaluate
    from safealign.kfp.stage import StageWorkspace, pipeline_key

    ws = StageWorkspace(
        "evaluate", params, overrides, tracking_uri, data_dir=dataset.path + "/data", cache_dir=cache_dir
    )
    ws.link(dataset.path + "/splits", ws.layout.splits_dir)
    ws.link(reward_model.path, ws.layout.reward_model_dir)
    ws.link(adapter.path, ws.layout.adapter_dir)
    ws.restore_metrics(metrics_in.path)
    ws.parent_run(pipeline_key(data_version, params, overrides))
    evaluate(ws.settings)
    ws.publish(ws.layout.evaluation_dir, evaluation.path)
    md = sorted(ws.layout.evaluation_dir.glob("*.md"))
    if md:
        ws.publish(md[0], report.path)
    ws.log_metrics(metrics, ws.publish_metrics(stage_metrics.path))
