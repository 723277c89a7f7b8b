"""calibrate: the reward model's gate. Outputs ``passed`` instead of failing, so dsl.If can skip."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from safealign.kfp.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def calibrate_op(
    data_version: str,
    params: str,
    overrides: list,
    tracking_uri: str,
    dataset: Input[Dataset],
    reward_model: Input[Model],
    metrics_in: Input[Dataset],
    report: Output[HTML],
    stage_metrics: Output[Dataset],
    metrics: Output[Metrics],
) -> bool:
    """Score the held-out split and the probes; return whether the gate passed.

    GateFailed becomes ``False`` (the reason is in the report and the metrics), so dsl.If can skip the
    rest; any other error still fails the step (a broken stage is not a failed gate). A single unnamed
    output on purpose: kfp.local cannot resolve a named output inside a dsl.If condition.
    """
    from safealign.errors import GateFailed
    from safealign.kfp.stage import StageWorkspace, calibration_html, pipeline_key
    from safealign.reward.calibrate import calibrate

    ws = StageWorkspace("calibrate", params, overrides, tracking_uri, data_dir=dataset.path + "/data")
    ws.link(dataset.path + "/splits", ws.layout.splits_dir)
    ws.link(reward_model.path, ws.layout.reward_model_dir)
    ws.restore_metrics(metrics_in.path)
    ws.parent_run(pipeline_key(data_version, params, overrides))
    passed, reason = True, "all aspects and probes above the bar"
    try:
        calibrate(ws.settings)
    except GateFailed as exc:
        passed, reason = False, str(exc)
    with open(report.path, "w", encoding="utf-8") as handle:
        handle.write(calibration_html(ws.layout, passed, reason))
    ws.log_metrics(metrics, {**ws.publish_metrics(stage_metrics.path), "gate_passed": float(passed)})
    if not passed:
        ws.end_parent_run()  # nothing runs after a refusal
    return passed
