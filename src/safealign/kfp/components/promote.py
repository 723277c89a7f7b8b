"""promote: register in MLflow and move the champion alias when every gate passes."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Model, Output

from safealign.kfp.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote_op(
    data_version: str,
    params: str,
    overrides: list,
    tracking_uri: str,
    dataset: Input[Dataset],
    reward_model: Input[Model],
    adapter: Input[Model],
    evaluation: Input[Dataset],
    metrics_in: Input[Dataset],
    decision: Output[Markdown],
) -> NamedTuple("PromoteOutputs", [("promoted", bool), ("reason", str)]):
    """Promote (dry_run=False). A refusal (GateFailed) is an outcome, reported as ``promoted=False``;
    'champion' is left untouched by the library in that case."""
    import json
    from collections import namedtuple

    from safealign.errors import GateFailed
    from safealign.kfp.stage import StageWorkspace, pipeline_key
    from safealign.registry.promotion import promote

    ws = StageWorkspace("promote", params, overrides, tracking_uri, data_dir=dataset.path + "/data")
    ws.link(dataset.path + "/splits", ws.layout.splits_dir)
    ws.link(reward_model.path, ws.layout.reward_model_dir)
    ws.link(adapter.path, ws.layout.adapter_dir)
    ws.link(evaluation.path, ws.layout.evaluation_dir)
    ws.restore_metrics(metrics_in.path)
    ws.parent_run(pipeline_key(data_version, params, overrides))
    try:
        result = promote(ws.settings, dry_run=False)
        promoted = bool(result.get("passed", True))
        reason = json.dumps(result.get("gates", result), indent=2, sort_keys=True, default=str)
    except GateFailed as exc:
        promoted, reason = False, str(exc)
    ws.end_parent_run()
    with open(decision.path, "w", encoding="utf-8") as handle:
        handle.write(f"# Promotion: {'promoted' if promoted else 'refused'}\n\n"
                     f"data version: `{data_version}`\n\n```\n{reason}\n```\n")
    outputs = namedtuple("PromoteOutputs", ["promoted", "reason"])
    return outputs(promoted, reason)
