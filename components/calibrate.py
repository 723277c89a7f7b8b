"""calibrate: the reward model's gate. Outputs ``passed`` instead of failing, so dsl.If can skip."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


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
) -> NamedTuple("CalibrateOutputs", [("passed", bool), ("reason", str)]):
    """Score the held-out split and the probes. GateFailed becomes ``passed=False`` with the reason;
    any other error still fails the step (a broken stage is not a failed gate)."""
    from collections import namedtuple

    from safealign.errors import GateFailed
    from safealign.kfp_stage import StageWorkspace, pipeline_key
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
    html = sorted(ws.layout.calibration_dir.glob("*.html")) if ws.layout.calibration_dir.exists() else []
    if html:
        ws.publish(html[0], report.path)
    else:
        with open(report.path, "w", encoding="utf-8") as handle:
            handle.write(f"<html><body><h1>Calibration gate: {'passed' if passed else 'FAILED'}</h1>"
                         f"<pre>{reason}</pre></body></html>")
    for key, value in ws.publish_metrics(stage_metrics.path).items():
        metrics.log_metric(key, value)
    metrics.log_metric("gate_passed", float(passed))
    outputs = namedtuple("CalibrateOutputs", ["passed", "reason"])
    return outputs(passed, reason)
